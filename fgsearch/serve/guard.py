"""The HTTP guard of ``fgsearch serve``: bearer auth on ``/api/`` routes (401), the request body cap
(413) and the security headers of every response, as pure ASGI middleware in front of the
application (:mod:`fgsearch.serve.app`); and the JSON error every refusal is."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fgsearch.serve import tokens_match

# the page loads nothing from elsewhere and runs no inline script: an injected string cannot run
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None, field: str | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"status": status, "error": message}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status, headers=headers)


class _BodyTooLarge(Exception):
    pass


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    """``send`` adding the headers in ``extra`` that the response does not set itself."""

    async def wrapped(msg: Message) -> None:
        if msg["type"] == "http.response.start":
            have = {k.lower() for k, _ in msg.get("headers", [])}
            msg = {**msg, "headers": [*msg.get("headers", []), *((k, v) for k, v in extra if k not in have)]}
        await send(msg)

    return wrapped


class Guard:
    """Pure ASGI middleware: bearer auth on ``/api/`` routes (401), the body cap (413), and the
    security headers of every response (the page's Content-Security-Policy on ``/`` and ``/static``)."""

    def __init__(self, app: ASGIApp, *, token: str | None, max_body: int) -> None:
        self.app, self.token, self.max_body = app, token, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path: str = scope["path"]
        extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
        if path == "/" or path.startswith("/static/"):
            extra.append((b"content-security-policy", PAGE_CSP.encode()))
        send = _with_headers(send, extra)
        if self.token and path.startswith("/api") and scope["method"] != "OPTIONS" and not self._authorised(headers):
            resp = error_response(
                401,
                "this server needs a token: send the header 'Authorization: Bearer TOKEN' (the page asks for it)",
                {"WWW-Authenticate": "Bearer"},
            )
            await resp(scope, receive, send)
            return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await error_response(413, f"request body is over the {self.max_body} byte limit")(scope, receive, send)
            return
        seen = 0
        started = False

        async def capped_receive() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_body:
                    raise _BodyTooLarge
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, capped_receive, tracking_send)
        except _BodyTooLarge:
            if started:
                raise
            await error_response(413, f"request body is over the {self.max_body} byte limit")(scope, receive, send)

    def _authorised(self, headers: dict[str, str]) -> bool:
        assert self.token is not None
        scheme, _, value = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and tokens_match(value.strip(), self.token)
