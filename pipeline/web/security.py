"""The console's guards, as one ASGI middleware in front of every route:

* **token**: when ``serve.token_env`` names a set variable, every write (POST / PUT / PATCH /
  DELETE) needs ``Authorization: Bearer <token>`` (compared in constant time), else 401;
* **cross-site writes**: a write must be JSON (``Content-Type: application/json``, which a
  foreign page cannot send without a CORS preflight we never grant) and, when the browser says
  where it comes from (``Origin``), come from this console's own origin; else 403;
* **DNS rebinding**: bound to loopback, only requests addressed to a loopback name are served;
* **sizes and rates**: bodies over ``serve.max_body_kb`` get 413 (without ``Content-Length``:
  411); each client gets ``serve.requests_per_s`` requests a second (bursts of 4x), beyond: 429;
* **headers**: a strict Content-Security-Policy (scripts and styles from this origin only, so
  even an injected tag could not run), ``nosniff``, no referrer, no framing.

Example::

    app.add_middleware(Guard, token="s3cret", loopback=True, max_body=256 * 1024, rate=50)
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
       "form-action 'self'")
SECURITY_HEADERS = [(b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY")]


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class RateLimiter:
    """Token buckets per client address."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, who: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(who, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        ok = tokens >= 1.0
        self._buckets[who] = (tokens - 1.0 if ok else tokens, now)
        if len(self._buckets) > 10000:  # forget idle clients
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}
        return ok


class Guard:
    """The middleware; see the module docstring."""

    def __init__(self, app: ASGIApp, *, token: str | None, loopback: bool, max_body: int,
                 rate: float) -> None:
        self.app = app
        self.token = token
        self.loopback = loopback
        self.max_body = max_body
        self.limiter = RateLimiter(rate, rate * 4)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = self._check(scope)
        if problem is not None:
            await _answer(send, *problem)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, self._bounded(receive), send_with_headers)

    def _check(self, scope: Scope) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        client = (scope.get("client") or ("?", 0))[0]
        if not self.limiter.allow(client):
            return 429, "too many requests: slow down", [(b"retry-after", b"1")]
        host = headers.get("host", "")
        if self.loopback and _host_name(host) not in LOOPBACK_NAMES and not is_loopback(
                _host_name(host)):
            return 421, f"this console serves loopback names only, not {host!r}", []
        method = scope.get("method", "GET")
        if method not in WRITE_METHODS:
            return None
        if self.token is not None:
            auth = headers.get("authorization", "")
            given = auth[7:] if auth.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return 401, "this console needs its token for changes: Authorization: Bearer " \
                            "<token> (the value of serve.token_env)", \
                    [(b"www-authenticate", b"Bearer")]
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return 415, "changes are JSON: send Content-Type: application/json", []
        origin = headers.get("origin")
        if origin is not None and origin != "null" and _origin_host(origin) != host.lower():
            return 403, f"cross-site change refused (origin {origin!r})", []
        if origin == "null":
            return 403, "cross-site change refused (opaque origin)", []
        length = headers.get("content-length")
        if length is None and headers.get("transfer-encoding"):
            return 411, "send a Content-Length", []
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return 413, f"request body over {self.max_body // 1024} KiB", []
        return None

    def _bounded(self, receive: Receive) -> Receive:
        seen = 0
        limit = self.max_body

        async def wrapped() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise ValueError("request body over the limit")
            return msg

        return wrapped


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _origin_host(origin: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(origin).netloc.lower()


async def _answer(send: Send, status: int, detail: str,
                  extra: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *extra,
                            *SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": body})


__all__ = ["CSP", "Guard", "RateLimiter", "is_loopback"]
