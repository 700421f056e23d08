"""sole_request: which bytes an overloaded gateway may refuse unparsed."""

from __future__ import annotations

import pytest

from txfanout.wire import SHED_ANSWERS, SHED_HEADS, SoleRequest, sole_request

HEAD = b"POST /bid HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize("data, expected", [
    (HEAD + b"Content-Length: 2\r\n\r\n{}", SoleRequest(b"/bid", True)),
    (HEAD + b"content-LENGTH:  2 \r\n\r\n{}", SoleRequest(b"/bid", True)),
    (HEAD + b"\r\n", SoleRequest(b"/bid", True)),  # no body
    (b"GET /x HTTP/1.1\r\n\r\n", SoleRequest(b"/x", True)),  # no headers at all
    (HEAD + b"Connection: keep-alive\r\nContent-Length: 2\r\n\r\n{}", SoleRequest(b"/bid", False)),
    (b"POST /bid HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}", SoleRequest(b"/bid", False)),
    (b"HEAD /bid HTTP/1.1\r\nHost: x\r\n\r\n", SoleRequest(b"/bid", True, head=True)),
], ids=["whole", "header-case-and-spaces", "no-body", "no-headers", "connection-header",
        "http-1.0", "head"])
def test_a_whole_plain_request_is_recognised(data: bytes, expected: SoleRequest) -> None:
    assert sole_request(data) == expected


@pytest.mark.parametrize("data", [
    HEAD,  # head not complete
    HEAD + b"Content-Length: 5\r\n\r\n{}",  # body still coming
    HEAD + b"Content-Length: 2\r\n\r\n{}" + HEAD + b"\r\n",  # pipelined
    HEAD + b"Content-Length: 2\r\n\r\n{}x",  # a byte too many
    HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    HEAD + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
    HEAD + b"Content-Length: 2, 2\r\n\r\n{}",
    HEAD + b"Content-Length: -2\r\n\r\n{}",
    b"POST /bid\r\n\r\n",  # no version
    b"POST  /bid HTTP/1.1\r\n\r\n",  # two spaces
    b"POST /bid HTTP/2.0\r\n\r\n",
], ids=["partial-head", "partial-body", "pipelined", "trailing-byte", "chunked",
        "two-lengths", "list-length", "negative-length", "no-version", "two-spaces",
        "http-2"])
def test_anything_else_is_parsed_the_long_way(data: bytes) -> None:
    assert sole_request(data) is None


def test_prepared_refusals_close_only_when_they_say_so() -> None:
    for (reason, keep), answer in SHED_ANSWERS.items():
        head = answer.split(b"\r\n\r\n")[0]
        assert head.startswith(b"HTTP/1.1 503 ") and b"\r\nRetry-After: 1" in head
        assert (b"\r\nConnection: close" in head) is not keep, (reason, keep)


def test_prepared_refusals_to_head_are_the_same_heads_without_a_body() -> None:
    for key, answer in SHED_ANSWERS.items():
        head, body = answer.split(b"\r\n\r\n")
        assert SHED_HEADS[key] == head + b"\r\n\r\n"
        assert b"\r\nContent-Length: %d\r\n" % len(body) in SHED_HEADS[key]
