// go-nethttp: the seed's program, written the way its answers said to.
//
// A net/http server; each POST starts one goroutine per partner, each POSTs
// the body through ONE shared http.Client whose Transport keeps connections
// alive and is sized like the Python references' pools (256 x fan-out idle
// and open connections to the partner host). Each call runs under its own
// context with timeout min(timeout, deadline), derived from the request's
// context, so a call past its time and every call of a client that went away
// is cancelled (the transport closes its connection), never abandoned. The
// answer has the same JSON shape as txfanout's and the X-Fanout-Complete
// header. GET /healthz answers 200; GET /stats answers JSON counters of the
// 200 answers and of the complete ones (every partner ok) since start.
//
//	go build -o ref-go . && ./ref-go --port 8083 --fanout 2 \
//	    --partner-url 'http://127.0.0.1:8000/bid{i}' --timeout-ms 300 --deadline-ms 500
//
// Standard library only (no gorilla/mux: one route, as in the benchmark).
package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const maxBody = 1 << 20 // inbound and partner bodies are read up to 1 MiB

type result struct {
	Partner   string  `json:"partner"`
	Outcome   string  `json:"outcome"`
	Status    *int    `json:"status"`
	LatencyMs float64 `json:"latency_ms"`
	Body      *string `json:"body"`
}

type answer struct {
	RequestID string   `json:"request_id"`
	Route     string   `json:"route"`
	Complete  bool     `json:"complete"`
	ElapsedMs float64  `json:"elapsed_ms"`
	Results   []result `json:"results"`
}

type gateway struct {
	client   *http.Client
	urls     []string
	timeout  time.Duration // per call: min(partner timeout, deadline)
	prefix   string
	counter  uint64
	answers  uint64 // 200 answers written to a client still there
	complete uint64 // of which every partner was ok
	started  time.Time
}

func ms(d time.Duration) float64 {
	return float64(d.Microseconds()/100) / 10.0
}

func (g *gateway) call(parent context.Context, index int, url string, body []byte) result {
	started := time.Now()
	r := result{Partner: "p" + strconv.Itoa(index+1)}
	ctx, cancel := context.WithTimeout(parent, g.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		r.Outcome = "error"
		return r
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := g.client.Do(req)
	if err == nil {
		var data []byte
		data, err = io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
		resp.Body.Close()
		if err == nil {
			r.LatencyMs = ms(time.Since(started))
			code := resp.StatusCode
			r.Status = &code
			if len(data) > maxBody {
				r.Outcome = "too_large"
				return r
			}
			s := string(data)
			r.Body = &s
			if code >= 200 && code < 300 {
				r.Outcome = "ok"
			} else {
				r.Outcome = "http_error"
			}
			return r
		}
	}
	r.LatencyMs = ms(time.Since(started))
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		r.Outcome = "timeout"
	case parent.Err() != nil:
		r.Outcome = "cancelled"
	default:
		r.Outcome = "error"
	}
	return r
}

func (g *gateway) fanout(w http.ResponseWriter, req *http.Request) {
	started := time.Now()
	body, err := io.ReadAll(io.LimitReader(req.Body, maxBody))
	if err != nil {
		http.Error(w, "cannot read the body", http.StatusBadRequest)
		return
	}
	results := make([]result, len(g.urls))
	var wg sync.WaitGroup
	for i, url := range g.urls {
		wg.Add(1)
		go func(i int, url string) {
			defer wg.Done()
			results[i] = g.call(req.Context(), i, url, body)
		}(i, url)
	}
	wg.Wait() // every call ends by its own timeout at the latest
	if req.Context().Err() != nil {
		return // the client went away: its calls were cancelled; nobody to answer
	}
	complete := true
	for _, r := range results {
		if r.Outcome != "ok" {
			complete = false
		}
	}
	n := atomic.AddUint64(&g.counter, 1)
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	route := strings.TrimPrefix(req.URL.Path, "/")
	_ = enc.Encode(answer{RequestID: fmt.Sprintf("%s-%x", g.prefix, n), Route: route,
		Complete: complete, ElapsedMs: ms(time.Since(started)), Results: results})
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	if complete {
		h.Set("X-Fanout-Complete", "true")
	} else {
		h.Set("X-Fanout-Complete", "false")
	}
	if _, err := w.Write(buf.Bytes()); err != nil {
		return
	}
	atomic.AddUint64(&g.answers, 1)
	if complete {
		atomic.AddUint64(&g.complete, 1)
	}
}

func (g *gateway) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	switch {
	case req.Method == http.MethodPost:
		g.fanout(w, req)
	case req.Method == http.MethodGet && req.URL.Path == "/healthz":
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"status":"ok"}`)
	case req.Method == http.MethodGet && req.URL.Path == "/stats":
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]interface{}{
			"answers":  atomic.LoadUint64(&g.answers),
			"complete": atomic.LoadUint64(&g.complete),
			"uptime_s": time.Since(g.started).Seconds(),
		})
	default:
		w.Header().Set("Allow", "POST")
		http.Error(w, "POST a JSON body", http.StatusMethodNotAllowed)
	}
}

func main() {
	log.SetFlags(0)
	port := flag.Int("port", 0, "port on 127.0.0.1 (required)")
	fanout := flag.Int("fanout", 0, "partners per request (required)")
	partnerURL := flag.String("partner-url", "", "partner URL; '{i}' is replaced by 1..fanout")
	timeoutMs := flag.Int("timeout-ms", 300, "per-call timeout")
	deadlineMs := flag.Int("deadline-ms", 500, "request deadline")
	poolSize := flag.Int("pool-size", 0, "idle and open connections to the partner host (default 256 x fanout)")
	flag.Parse()
	if *port <= 0 || *fanout <= 0 || *partnerURL == "" {
		flag.Usage()
		os.Exit(2)
	}
	pool := *poolSize
	if pool <= 0 {
		pool = 256 * *fanout
	}
	timeout := *timeoutMs
	if *deadlineMs < timeout {
		timeout = *deadlineMs
	}
	urls := make([]string, *fanout)
	for i := range urls {
		urls[i] = strings.ReplaceAll(*partnerURL, "{i}", strconv.Itoa(i+1))
	}
	transport := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        pool,
		MaxIdleConnsPerHost: pool, // the default, 2, is what made the seed open a connection per call
		MaxConnsPerHost:     pool, // a bound on open connections: calls past it wait (under their timeout)
		IdleConnTimeout:     60 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
	id := make([]byte, 4)
	rand.Seed(time.Now().UnixNano())
	rand.Read(id)
	g := &gateway{
		client:  &http.Client{Transport: transport}, // no Client.Timeout: each call has its context
		urls:    urls,
		timeout: time.Duration(timeout) * time.Millisecond,
		prefix:  hex.EncodeToString(id),
		started: time.Now(),
	}
	addr := fmt.Sprintf("127.0.0.1:%d", *port)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatalf("go-nethttp: %v", err)
	}
	srv := &http.Server{Handler: g}
	fmt.Printf("go-nethttp listening on %s, fan-out %d, pool %d\n", addr, *fanout, pool)
	log.Fatal(srv.Serve(ln))
}
