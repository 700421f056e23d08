"""TLS to partners and on the listener, against real loopback TLS servers
with certificates from a throw-away CA (tests/certs.py)."""

from __future__ import annotations

import http.client
import signal
import ssl as stdlib_ssl
import subprocess
import sys
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
import pytest_twisted
import treq
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

from txfanout.__main__ import main
from txfanout.config import ConfigError, parse
from txfanout.site import GatewaySite
from txfanout.snapshot import compile_snapshot

from .certs import TestPKI
from .configs import route_config
from .daemon import Daemon, free_port
from .loopback import within


class LogCapture:
    """Formatted log events while it is installed."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.lines.append(formatEvent(event))

    def matching(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]


@pytest.fixture
def log_lines() -> Any:
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    yield capture
    globalLogPublisher.removeObserver(capture)


def by_name(answer: Any) -> dict[str, dict[str, Any]]:
    return {r["partner"]: r for r in answer.json["results"]}


@pytest_twisted.ensureDeferred
async def test_ca_file_makes_the_test_ca_trusted(pki, tls_partner, make_gateway):
    server = tls_partner(pki.server)
    gw = make_gateway(route_config({
        "by-ip": {"url": server.url("/ok"), "ca_file": str(pki.ca)},
        "by-name": {"url": server.url("/ok", host="localhost"), "ca_file": str(pki.ca)},
        "system-roots": {"url": server.url("/ok")},
    }))
    results = by_name(await gw.post())
    assert results["by-ip"]["outcome"] == "ok" and results["by-ip"]["body"] == '{"bid": 1}'
    assert results["by-name"]["outcome"] == "ok"
    assert results["system-roots"]["outcome"] == "error"
    assert results["system-roots"]["error"] == "TLS: certificate not trusted"
    # SNI carries a DNS name, never an IP literal.
    assert sorted(server.server_names, key=str) == [None, None, b"localhost"]


@pytest_twisted.ensureDeferred
async def test_wrong_host_name_expired_and_self_signed_are_refused(pki, tls_partner,
                                                                   make_gateway):
    other = tls_partner(pki.other_name)
    expired = tls_partner(pki.expired)
    self_signed = tls_partner(pki.self_signed)
    ca = str(pki.ca)
    gw = make_gateway(route_config({
        "wrong-ip": {"url": other.url("/ok"), "ca_file": ca},
        "wrong-name": {"url": other.url("/ok", host="localhost"), "ca_file": ca},
        "expired": {"url": expired.url("/ok"), "ca_file": ca},
        "self-signed": {"url": self_signed.url("/ok"), "ca_file": ca},
    }))
    answer = await gw.post()
    assert {name: (r["outcome"], r["error"]) for name, r in by_name(answer).items()} == {
        "wrong-ip": ("error", "TLS: host name mismatch"),
        "wrong-name": ("error", "TLS: host name mismatch"),
        "expired": ("error", "TLS: certificate expired"),
        "self-signed": ("error", "TLS: certificate not trusted"),
    }
    assert other.seen == 0 and expired.seen == 0 and self_signed.seen == 0


@pytest_twisted.ensureDeferred
async def test_mutual_tls(pki, tls_partner, make_gateway):
    server = tls_partner(pki.server, client_ca=pki.ca)
    ca = str(pki.ca)
    gw = make_gateway(route_config({
        "with-cert": {"url": server.url("/echo"), "ca_file": ca,
                      "client_cert": str(pki.client.cert), "client_key": str(pki.client.key)},
        "without-cert": {"url": server.url("/echo"), "ca_file": ca},
        "foreign-cert": {"url": server.url("/echo"), "ca_file": ca,
                         "client_cert": str(pki.self_signed.cert),
                         "client_key": str(pki.self_signed.key)},
    }))
    results = by_name(await gw.post(body=b'{"m": 1}'))
    assert results["with-cert"]["outcome"] == "ok"
    assert '"body": "{\\"m\\": 1}"' in results["with-cert"]["body"]
    assert results["without-cert"]["outcome"] == "error"
    assert results["without-cert"]["error"] == "TLS: partner requires a client certificate"
    assert results["foreign-cert"]["outcome"] == "error"
    assert results["foreign-cert"]["error"] == "TLS: partner refused the client certificate"
    assert server.seen == 1


@pytest_twisted.ensureDeferred
async def test_tls_verify_false_calls_and_warns_at_every_start(pki, tls_partner, make_gateway,
                                                               log_lines):
    logs = log_lines
    server = tls_partner(pki.self_signed)
    gw = make_gateway(route_config({
        "insecure": {"url": server.url("/ok"), "tls_verify": False},
        "verified": {"url": server.url("/ok", host="localhost"), "ca_file": str(pki.ca)},
    }))
    warnings = logs.matching("partners.insecure: tls_verify = false")
    assert len(warnings) == 1 and "127.0.0.1" in warnings[0]
    assert logs.matching("partners.verified") == []
    assert gw.config.partners["insecure"].tls_verify is False
    assert gw.config.partners["verified"].tls_verify is True
    results = by_name(await gw.post())
    assert results["insecure"]["outcome"] == "ok"
    assert results["verified"]["error"] == "TLS: certificate not trusted"
    compile_snapshot(gw.config, reactor)  # what a reload does with a new config
    assert len(logs.matching("partners.insecure: tls_verify = false")) == 2


@pytest_twisted.ensureDeferred
async def test_partners_with_other_tls_settings_never_share_a_connection(pki, tls_partner,
                                                                        make_gateway):
    # Same host and port: an unverified connection in the pool must not
    # serve the partner that requires verification.
    server = tls_partner(pki.self_signed)
    url = server.url("/ok")
    gw = make_gateway({
        "partners": {"insecure": {"url": url, "tls_verify": False},
                     "strict": {"url": url, "ca_file": str(pki.ca)}},
        "routes": {"insecure": {"partners": ["insecure"]}, "strict": {"partners": ["strict"]}}})
    assert (await gw.post("/insecure")).outcomes() == {"insecure": "ok"}
    strict = by_name(await gw.post("/strict"))["strict"]
    assert (strict["outcome"], strict["error"]) == ("error", "TLS: certificate not trusted")
    assert (await gw.post("/insecure")).outcomes() == {"insecure": "ok"}
    assert server.connections == 2


@pytest_twisted.ensureDeferred
async def test_sequential_calls_reuse_one_tls_connection(pki, tls_partner, make_gateway):
    server = tls_partner(pki.server)
    gw = make_gateway(route_config({"p": {"url": server.url("/ok"), "ca_file": str(pki.ca)}}))
    for _ in range(50):
        assert (await gw.post()).outcomes() == {"p": "ok"}
    assert server.seen == 50
    assert server.connections == 1  # one handshake for 50 calls


@pytest_twisted.ensureDeferred
async def test_a_tls_call_that_times_out_aborts_its_connection(pki, tls_partner, make_gateway):
    server = tls_partner(pki.server)
    gw = make_gateway(route_config(
        {"p": {"url": server.url("/hang"), "ca_file": str(pki.ca), "timeout_ms": 100}}))
    lost = server.wait_hang_lost()
    result = by_name(await gw.post())["p"]
    assert (result["outcome"], result["error"]) == ("timeout", "no answer in 100 ms")
    await within(lost, 2.0)  # aborted, not left to a TLS close the peer may never finish
    assert server.open_connections == 0


@pytest_twisted.ensureDeferred
async def test_min_version_is_enforced(pki, tls_partner, make_gateway):
    old = tls_partner(pki.server)
    # Not lowerMaximumSecurityTo=TLSv1_2: before Twisted 26 (PyPy's pin) that excludes 1.2 too.
    old.options.getContext().set_max_proto_version(SSL.TLS1_2_VERSION)
    ca = str(pki.ca)
    gw = make_gateway(route_config({
        "needs-1.3": {"url": old.url("/ok"), "ca_file": ca, "tls_min_version": "1.3"},
        "accepts-1.2": {"url": old.url("/ok"), "ca_file": ca, "tls_min_version": "1.2"},
    }))
    results = by_name(await gw.post())
    assert results["accepts-1.2"]["outcome"] == "ok", results
    assert results["needs-1.3"]["outcome"] == "error"
    assert results["needs-1.3"]["error"] == "TLS: no protocol version in common"


class PlainHTTP(Protocol):
    """Answers whatever comes with a plain HTTP 400, as a web server would."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
        self.transport.loseConnection()


class Hangup(Protocol):
    """Closes every connection at once."""

    def connectionMade(self) -> None:
        self.transport.loseConnection()


@pytest.mark.parametrize("server, error", [
    (PlainHTTP, "TLS: partner does not speak TLS"),
    (Hangup, "TLS: connection closed during the handshake"),
])
@pytest_twisted.ensureDeferred
async def test_a_server_that_does_not_finish_the_handshake(server, error, make_gateway):
    port = reactor.listenTCP(0, Factory.forProtocol(server), interface="127.0.0.1")
    try:
        gw = make_gateway(route_config(
            {"p": {"url": f"https://127.0.0.1:{port.getHost().port}/ok"}}))
        result = by_name(await gw.post())["p"]
        assert (result["outcome"], result["error"]) == ("error", error)
    finally:
        await port.stopListening()


class Silent(Protocol):
    """Accepts a connection and never says a word."""

    lost: Deferred[None]

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(None)


@pytest_twisted.ensureDeferred
async def test_handshake_counts_against_the_call_timeout(pki, make_gateway):
    lost: Deferred[None] = Deferred()

    def build() -> Silent:
        proto = Silent()
        proto.lost = lost
        return proto

    port = reactor.listenTCP(0, Factory.forProtocol(build), interface="127.0.0.1")
    try:
        gw = make_gateway(route_config({"p": {
            "url": f"https://127.0.0.1:{port.getHost().port}/ok", "ca_file": str(pki.ca),
            "timeout_ms": 100}}))
        result = by_name(await gw.post())["p"]
        assert result["outcome"] == "timeout"
        assert result["error"] == "TLS handshake not finished in 100 ms"
        assert 100 <= result["latency_ms"] < 1000
        await within(lost)  # the half-open handshake was aborted
    finally:
        await port.stopListening()


def trusting(pki: TestPKI) -> BrowserLikePolicyForHTTPS:
    return BrowserLikePolicyForHTTPS(ssl.Certificate.loadPEM(pki.ca.read_text()))


@pytest_twisted.ensureDeferred
async def test_gateway_listener_serves_tls(pki, partner, make_gateway):
    gw = make_gateway(route_config({"p": {"url": partner.url("/ok")}}))
    endpoint = serverFromString(
        reactor, f"ssl:0:interface=127.0.0.1:privateKey={pki.server.key}:certKey={pki.server.cert}")
    port = await endpoint.listen(GatewaySite(gw.gateway))
    try:
        client = treq.client.HTTPClient(Agent(reactor, trusting(pki)))
        response = await within(client.post(
            f"https://localhost:{port.getHost().port}/bid", data=b"{}"))
        body = await within(response.json())
        assert response.code == 200 and body["results"][0]["outcome"] == "ok"
    finally:
        await port.stopListening()


@pytest.mark.slow
def test_daemon_with_ssl_listener_and_unverified_partner(pki, tmp_path):
    config = tmp_path / "tls.toml"
    config.write_text("""
[partners.insecure]
url = "https://127.0.0.1:1/bid"
tls_verify = false

[routes.bid]
partners = ["insecure"]
""")
    port = free_port()
    daemon = Daemon("--config", str(config), "--listen",
                    f"ssl:{port}:interface=127.0.0.1:privateKey={pki.server.key}"
                    f":certKey={pki.server.cert}")
    try:
        daemon.wait_ready()
        assert "partners.insecure: tls_verify = false" in daemon.wait_for("tls_verify")
        context = stdlib_ssl.create_default_context(cafile=str(pki.ca))
        connection = http.client.HTTPSConnection("127.0.0.1", port, context=context,
                                                 timeout=10)
        connection.request("POST", "/bid", body=b"{}")
        response = connection.getresponse()
        assert response.status == 200
        assert b'"error": "connection refused"' in response.read()
        connection.close()
    finally:
        code = daemon.stop()
    assert code in (0, -signal.SIGTERM), "".join(daemon.log)
    assert "Traceback" not in "".join(daemon.log)


# -- configuration --


def tls_errors(tmp_path: Any, **partner: Any) -> list[str]:
    raw = {"partners": {"p": partner}, "routes": {"r": {"partners": ["p"]}}}
    with pytest.raises(ConfigError) as caught:
        parse(raw)
    return caught.value.errors


def test_tls_config_errors_name_the_key_and_the_reason(pki, tmp_path):
    https = "https://127.0.0.1:8443/bid"
    missing = str(tmp_path / "missing.pem")
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    assert tls_errors(tmp_path, url=https, ca_file=missing) == [
        f"partners.p.ca_file: cannot read {missing} (No such file or directory)"]
    assert tls_errors(tmp_path, url=https, ca_file=str(not_pem)) == [
        f"partners.p.ca_file: {not_pem} is not a PEM certificate file"]
    assert tls_errors(tmp_path, url=https, client_cert=str(pki.client.cert)) == [
        "partners.p.client_key: is required with client_cert"]
    assert tls_errors(tmp_path, url=https, client_key=str(pki.client.key)) == [
        "partners.p.client_cert: is required with client_key"]
    assert tls_errors(tmp_path, url=https, client_cert=str(pki.client.cert),
                      client_key=str(pki.server.key)) == [
        f"partners.p.client_key: {pki.server.key} does not match client_cert"]
    assert tls_errors(tmp_path, url=https, client_cert=str(pki.client.cert),
                      client_key=str(pki.client.cert)) == [
        f"partners.p.client_key: {pki.client.cert} is not a PEM private key"]
    assert tls_errors(tmp_path, url="http://127.0.0.1/bid", ca_file=str(pki.ca),
                      tls_verify=False) == [
        "partners.p.ca_file: only applies to https:// URLs",
        "partners.p.tls_verify: only applies to https:// URLs"]
    assert tls_errors(tmp_path, url=https, ca_file="ca.pem", tls_min_version="1.1",
                      tls_verify="no") == [
        "partners.p.ca_file: must be an absolute file path",
        'partners.p.tls_min_version: must be one of "1.2", "1.3"',
        "partners.p.tls_verify: must be true or false"]
    assert tls_errors(tmp_path, url=https, ca_file=str(pki.ca), tls_verify=False) == [
        "partners.p.ca_file: has no use with tls_verify = false"]
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(serialization.load_pem_private_key(pki.client.key.read_bytes(), None)
                          .private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"pw")))
    assert tls_errors(tmp_path, url=https, client_cert=str(pki.client.cert),
                      client_key=str(encrypted)) == [
        f"partners.p.client_key: {encrypted} is encrypted; give an unencrypted key"]
    # Other errors of the partner do not hide its TLS errors.
    assert tls_errors(tmp_path, url=https, timeout_ms=0, ca_file=missing) == [
        "partners.p.timeout_ms: must be an integer from 1 to 60000",
        f"partners.p.ca_file: cannot read {missing} (No such file or directory)"]


def test_ssl_listener_files_are_checked_with_the_config(pki, tmp_path):
    def listen_errors(listen: str) -> list[str]:
        with pytest.raises(ConfigError) as caught:
            parse({"server": {"listen": listen}, "partners": {"p": {"url": "http://h/"}},
                   "routes": {"r": {"partners": ["p"]}}})
        return caught.value.errors

    missing = tmp_path / "missing.key"
    assert listen_errors(f"ssl:8443:privateKey={missing}:certKey={pki.server.cert}") == [
        f"server.listen: cannot read {missing} (No such file or directory)"]
    assert listen_errors(f"ssl:8443:privateKey={pki.ca}")[0].startswith(
        "server.listen: is not a usable TLS endpoint")
    good = f"ssl:8443:interface=127.0.0.1:privateKey={pki.server.key}:certKey={pki.server.cert}"
    assert parse({"server": {"listen": good}, "partners": {"p": {"url": "http://h/"}},
                  "routes": {"r": {"partners": ["p"]}}}).server.listen == good


def test_good_tls_config_loads_once(pki):
    config = parse({"partners": {
        "a": {"url": "https://localhost:8443/bid", "ca_file": str(pki.ca),
              "client_cert": str(pki.client.cert), "client_key": str(pki.client.key),
              "tls_min_version": "1.3"},
        "b": {"url": "https://localhost:8443/bid", "ca_file": str(pki.ca),
              "client_cert": str(pki.client.cert), "client_key": str(pki.client.key),
              "tls_min_version": "1.3"},
        "c": {"url": "https://localhost:8443/bid", "ca_file": str(pki.ca)},
        "plain": {"url": "http://localhost:8080/bid"}},
        "routes": {"r": {"partners": ["a", "b", "c", "plain"]}}})
    a, b, c = (config.partners[n] for n in "abc")
    assert (a.ca_file, a.tls_min_version, a.tls_verify) == (str(pki.ca), "1.3", True)
    assert a.tls is not None and a.tls.key == b.tls.key != c.tls.key  # type: ignore[union-attr]
    assert config.partners["plain"].tls is None


def test_check_config_reports_tls_files_in_process(pki, tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text(f"""
[partners.p]
url = "https://127.0.0.1:8443/bid"
client_cert = "{pki.client.cert}"
client_key = "{tmp_path / 'nothing.key'}"

[routes.r]
partners = ["p"]
""")
    assert main(["check-config", str(path)]) == 1
    assert capsys.readouterr().err.startswith("partners.p.client_key: cannot read ")


@pytest.mark.slow
@pytest.mark.runtime_neutral
def test_check_config_reports_tls_files(pki, tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(f"""
[partners.p]
url = "https://127.0.0.1:8443/bid"
client_cert = "{pki.client.cert}"
client_key = "{tmp_path / 'nothing.key'}"

[routes.r]
partners = ["p"]
""")
    result = subprocess.run([sys.executable, "-m", "txfanout", "check-config", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("partners.p.client_key: cannot read ")
    assert "Traceback" not in result.stderr
