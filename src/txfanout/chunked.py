"""Chunked bodies, their framing counted against the body's cap.

Twisted's chunked decoder spends a few microseconds of Python on every
chunk and counts only the data: a client's 64 KiB body sent as 65,000
1-byte chunks cost 160 ms of CPU (1 ms with a Content-Length), and a
partner's 2 MB of framing around 333 KB of data 770 ms per call. Here each
chunk counts as its bytes on the wire (size line with any extensions, data,
CRLF), and as at least ``MIN_CHUNK_BYTES``; trailer lines count as theirs.
A body under a cap of N bytes has at most N / 256 chunks, so its CPU per
counted byte stays within a small factor of a plain body's.

Both faces use it: client bodies against ``server.max_body_bytes`` (site.py,
413), partner answers against ``max_response_bytes`` (pool.py, ``too_large``).
"""

from __future__ import annotations

from typing import Callable

from . import _twisted
from ._twisted import ChunkedTransferDecoder

MIN_CHUNK_BYTES = 256


class BodyTooLarge(Exception):
    """A body passed its cap; the text says so, for clients and partners'
    call results."""


class CountedChunkedDecoder(ChunkedTransferDecoder):
    """Twisted's chunked decoder, raising :class:`BodyTooLarge` as soon as
    the bytes counted (see the module) pass ``limit``: a chunk is counted
    when its size line is read, before any of its data is delivered."""

    def __init__(self, data_callback: Callable[[bytes], None],
                 finish_callback: Callable[[bytes], None], limit: int) -> None:
        super().__init__(data_callback, finish_callback)
        self.limit = limit
        self.counted = 0

    @classmethod
    def replacing(cls, decoder: ChunkedTransferDecoder, limit: int) -> "CountedChunkedDecoder":
        """A counting decoder in place of ``decoder``, which has not been fed."""
        return cls(decoder.dataCallback, decoder.finishCallback, limit)

    def _count(self, size: int) -> None:
        self.counted += size
        if self.counted > self.limit:
            raise BodyTooLarge(f"body over {self.limit} bytes (chunk framing counted)")

    def _dataReceived_CHUNK_LENGTH(self) -> bool:
        before = _twisted.buffered(self)
        if not super()._dataReceived_CHUNK_LENGTH():
            return False
        line = before - _twisted.buffered(self)  # the size line and its CRLF
        # Its data and the CRLF after it (after the last chunk: the CRLF
        # that ends the trailers).
        self._count(max(line + self.length + 2, MIN_CHUNK_BYTES))
        return True

    def _dataReceived_TRAILER(self) -> bool:
        before = _twisted.buffered(self)
        more = super()._dataReceived_TRAILER()
        if more:  # a trailer line was read
            self._count(before - _twisted.buffered(self))
        return more
