"""Request ids: what one may look like (the ids clients send are kept when they match; they end
up in headers, log lines and the prediction log, and labels name requests by them), and which
request the running code serves.

The current request lives in a context variable that the servers' edge (`common.tracing`) sets
for each request's task. This module needs the standard library only, so code that runs without
the servers (the predictor's batcher under the GPU smoke test) can read it.
"""

from __future__ import annotations

import contextvars
import re
import uuid
from dataclasses import dataclass

VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
MAX_REQUEST_ID_LENGTH = 128


@dataclass
class RequestContext:
    """The id of the request being served, and whether the client chose it."""

    request_id: str
    from_client: bool


CURRENT_REQUEST: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "request_context", default=None
)


def new_request_id() -> str:
    """A fresh request id (32 hex digits)."""
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    """The id of the request this code runs for, None outside a request."""
    context = CURRENT_REQUEST.get()
    return context.request_id if context is not None else None


def adopt_v2_id(v2_id: str | None) -> str:
    """The request's id once the V2 body is read: the header's, else the body's `id`, else the
    one generated at the edge (or a new one outside any request)."""
    context = CURRENT_REQUEST.get()
    if context is None:
        return v2_id if v2_id and VALID_REQUEST_ID.fullmatch(v2_id) else new_request_id()
    if not context.from_client and v2_id and VALID_REQUEST_ID.fullmatch(v2_id):
        context.request_id, context.from_client = v2_id, True
    return context.request_id
