"""The public route's resource: a request straight to the gateway's Klein endpoint.

Klein's own resource (``KleinResource.render``) matches every request's
path with werkzeug's router, then runs the endpoint through closures made
for that request. Both leave the request in reference cycles (a closure
that names itself, in each): some 42 objects a request that only CPython's
cyclic collector frees, and that set off its collections. With the
router's own work, that took about a quarter of CPython's CPU per request
(PyPy's JIT makes it cheap): docs/decisions.rst.

The site has matched the route already (site.py: only a configured route
reaches a resource), so :class:`KleinEndpoint` calls the one endpoint the
gateway's Klein app declares, through the app (``execute_endpoint``), and
writes what it returns as Klein would: bytes are the body, the request is
finished, a failure is the request's ``processingFailed`` (a 500, or a log
line once the request is over). A client that leaves cancels what the
endpoint returned (its fan-out). Nothing it makes
refers back to itself: the request is freed by reference counting when it
ends.
"""

from __future__ import annotations

from typing import Any

from klein import Klein
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from .site import GatewayRequest


class KleinEndpoint(Resource):
    """Serve every request with ``endpoint`` of ``app``."""

    isLeaf = True

    def __init__(self, app: Klein, endpoint: str) -> None:
        super().__init__()
        self._app = app
        self._endpoint = endpoint

    def render(self, request: GatewayRequest) -> Any:
        answer: Deferred[Any] = maybeDeferred(self._app.execute_endpoint, self._endpoint, request)
        request.notifyFinish().addErrback(_cancel, answer)
        answer.addCallback(_write, request).addErrback(request.processingFailed)
        return NOT_DONE_YET


def _cancel(reason: Failure, answer: Deferred[Any]) -> None:
    answer.cancel()  # the client left before its answer: stop its fan-out


def _write(body: bytes | None, request: GatewayRequest) -> None:
    if request.over():
        return
    if body:
        request.write(body)
    request.finish()
