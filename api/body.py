"""A request's body as its route takes it: framed by Content-Length or by chunked transfer
coding, at most MAX_BODY bytes, strict JSON that matches the route's schema. Nothing is
defaulted: a body is read whole, or the request is refused.

A route with a body schema needs a body (`{}` takes every default): an absent body must not
stand for "the defaults", since a body lost on the way would then turn, say, an approval
into a sweep. A route without one takes no body at all."""

from __future__ import annotations

import logging
from typing import Any

import falcon

from api.errors import ApiError
from api.schema import Invalid, check
from appliance.strictjson import NotJson, loads

__all__ = ["MAX_BODY", "read_body"]

log = logging.getLogger("wire-api")
MAX_BODY = 2 << 20


def read_body(req: falcon.Request, schema: dict[str, Any] | None) -> dict[str, Any]:
    """The body, checked against `schema`; {} for a route without one (which takes none)."""
    raw = _raw(req)
    if schema is None:
        if raw:
            raise Invalid("body: this route takes no request body")
        return {}
    if not raw:
        raise Invalid("body: is required (a JSON object; {} takes every default)")
    media_type = (req.content_type or "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(415, "not-json", "send the request body as application/json")
    try:
        body = loads(raw)
    except NotJson as exc:
        raise Invalid(f"body: {exc}") from None
    check(body, schema)
    return dict(body)


def _raw(req: falcon.Request) -> bytes:
    """The body's bytes. Without Transfer-Encoding or Content-Length a request has none
    (RFC 9112, 6.3); Falcon's `bounded_stream` reads nothing when the length is absent, so
    a chunked body is read from the server's stream, which gunicorn ends at the last chunk
    (`wsgi.input_terminated`). A server that does not say so cannot frame it: 411."""
    if req.get_header("Transfer-Encoding") is not None:  # it overrides any Content-Length
        if not req.env.get("wsgi.input_terminated"):
            raise ApiError(411, "length-required", "send the request body with a Content-Length")
        raw = _read(req.stream, MAX_BODY + 1)
    else:
        length = req.content_length
        if length is None or length == 0:
            return b""
        if length > MAX_BODY:
            raise _too_large()
        raw = _read(req.bounded_stream, length)
        if len(raw) < length:
            raise Invalid(f"body: {len(raw)} of its {length} bytes arrived")
    if len(raw) > MAX_BODY:
        raise _too_large()
    return raw


def _read(stream: Any, size: int) -> bytes:
    try:
        return bytes(stream.read(size))
    except Exception as exc:  # the server's framing errors (gunicorn's) share no base class
        log.info("a request body could not be read: %r", exc)
        raise Invalid(
            "body: could not be read whole (a broken chunked coding, or the connection ended early)"
        ) from None


def _too_large() -> ApiError:
    return ApiError(413, "too-large", f"request bodies are limited to {MAX_BODY} bytes")
