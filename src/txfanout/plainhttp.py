"""What treq adds to every call that a partner could abuse, switched off.

treq wraps each request in a cookie agent (one jar for all calls) and a gzip
decoder, whatever the client asks. A partner could then grow the jar without
bound with ``Set-Cookie``, have its cookies sent to another partner on the
same host (cookies ignore ports), or answer a small gzip body that inflates
to gigabytes in one read, before the ``max_response_bytes`` cap sees it.
Here partners are asked for no content coding, bodies are read as sent (the
cap counts the bytes on the wire), and no cookie is kept or sent.
"""

from __future__ import annotations

from http.cookiejar import CookieJar
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.iweb import IAgent, IResponse
from zope.interface import implementer


class NoCookies(CookieJar):
    """A cookie jar that stays empty."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass

    def add_cookie_header(self, request: Any) -> None:
        pass


def _as_sent(response: IResponse) -> IResponse:
    response.headers.removeHeader(b"content-encoding")  # treq would inflate it
    return response


@implementer(IAgent)
class PlainAgent:
    """Wraps the pool's agent, under treq's own wrappers."""

    def __init__(self, agent: IAgent) -> None:
        self._agent = agent

    def request(self, method: bytes, uri: bytes, headers: Any = None,
                bodyProducer: Any = None) -> Deferred[IResponse]:
        if headers is not None:
            headers.removeHeader(b"accept-encoding")  # a copy made by treq's decoder
        return self._agent.request(method, uri, headers, bodyProducer).addCallback(_as_sent)
