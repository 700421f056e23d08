"""Chunked bodies: what each chunk counts against its cap (chunked.py)."""

from __future__ import annotations

import pytest

from txfanout.chunked import MIN_CHUNK_BYTES, BodyTooLarge, CountedChunkedDecoder


def decoder(limit: int) -> tuple[CountedChunkedDecoder, list[bytes], list[bytes]]:
    data: list[bytes] = []
    rest: list[bytes] = []
    return CountedChunkedDecoder(data.append, rest.append, limit), data, rest


def test_a_chunk_counts_its_bytes_on_the_wire_and_trailers_theirs() -> None:
    body = b"12c;ext=1\r\n" + b"x" * 300 + b"\r\n" + b"0\r\nX-T: v\r\n\r\nNEXT"
    d, data, rest = decoder(10_000)
    d.dataReceived(body)
    assert b"".join(data) == b"x" * 300 and rest == [b"NEXT"]
    # size line + data + CRLF; the last chunk (at least 256); the trailer line
    assert d.counted == (11 + 300 + 2) + MIN_CHUNK_BYTES + len(b"X-T: v\r\n")


def test_a_chunk_counts_at_least_min_chunk_bytes() -> None:
    d, data, _ = decoder(10_000)
    d.dataReceived(b"1\r\nx\r\n" * 10)
    assert len(data) == 10 and d.counted == 10 * MIN_CHUNK_BYTES


def test_a_body_exactly_at_the_cap_passes_and_one_byte_more_does_not() -> None:
    chunk = b"3e8\r\n" + b"x" * 1000 + b"\r\n"  # counts 1007
    d, _, rest = decoder(1007 + MIN_CHUNK_BYTES)
    d.dataReceived(chunk + b"0\r\n\r\n")
    assert rest == [b""]
    d, _, _ = decoder(1007 + MIN_CHUNK_BYTES - 1)
    d.dataReceived(chunk)
    with pytest.raises(BodyTooLarge, match=r"^body over 1262 bytes \(chunk framing counted\)$"):
        d.dataReceived(b"0\r\n\r\n")


def test_a_chunk_over_the_cap_is_refused_before_its_data_is_read() -> None:
    d, data, _ = decoder(1000)
    with pytest.raises(BodyTooLarge):
        d.dataReceived(b"3e8\r\n" + b"x" * 10)
    assert data == []


def test_tiny_chunks_are_refused_after_at_most_cap_over_256_of_them() -> None:
    d, data, _ = decoder(65536)
    with pytest.raises(BodyTooLarge):
        d.dataReceived(b"1\r\nx\r\n" * 65000)
    assert len(data) == 65536 // MIN_CHUNK_BYTES
