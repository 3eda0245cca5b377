"""The one place secrets are taken out of text that leaves the process: logs, status reasons,
errors printed to the console, anything published.

Two kinds of secret are removed:

* credentials inside URLs (``rtsp://admin:s3cret@cam/1`` -> ``rtsp://admin:***@cam/1``) and the
  values of secret-looking query parameters (``?token=...``, ``password``, ``key``, ``sig``...);
* values registered with :func:`register_secret` (a Redis password read from the environment,
  a webhook URL whose path is its secret, an API token), replaced wherever they appear.

``engines.log`` passes every rendered line through :func:`redact`, so a secret that slips into a
log field is still never written. Registration is per process: the run registers what its config
holds (``pipeline.config.secret_values``) in every process it starts.

Example::

    register_secret("hunter2")
    redact("connect redis://:hunter2@db:6379 failed")   # 'connect redis://:***@db:6379 failed'
    redact_url("https://hooks.example/T0/B0/XyZ")        # unchanged unless registered
"""

from __future__ import annotations

import re
import threading

MASK = "***"

# scheme://user:password@  (the user part may be empty: redis://:password@host)
_URL_CREDENTIALS = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^/@:\s]*):[^/@\s]*@")
_SECRET_PARAMS = re.compile(
    r"([?&](?:access_token|token|apikey|api_key|key|password|passwd|pwd|secret|sig|signature|"
    r"auth|authorization)=)[^&#\s\"']+", re.IGNORECASE)
_MIN_SECRET_LEN = 4  # shorter values would mask ordinary words

_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Never show ``value`` in anything :func:`redact` sees (no-op for empty/short values)."""
    if value and len(value) >= _MIN_SECRET_LEN:
        with _lock:
            _secrets.add(value)


def registered_secrets() -> frozenset[str]:
    with _lock:
        return frozenset(_secrets)


def redact_url(url: str) -> str:
    """A URL with its password and secret query values masked (and registered secrets).

    Example::

        redact_url("rtsp://admin:s3cret@10.0.0.5/1") == "rtsp://admin:***@10.0.0.5/1"
    """
    return redact(url)


def redact(text: str) -> str:
    """``text`` with URL credentials, secret query values and registered secrets masked."""
    if not text:
        return text
    out = _URL_CREDENTIALS.sub(rf"\1:{MASK}@", text)
    out = _SECRET_PARAMS.sub(rf"\1{MASK}", out)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)  # longest first: no partial leftovers
    for s in secrets:
        if s in out:
            out = out.replace(s, MASK)
    return out


def url_secrets(url: str) -> list[str]:
    """The secret parts of a URL worth registering: its password, and for http(s) URLs whose
    path carries the secret (webhooks: ``/services/T0/B0/XyZ``) the path and query."""
    found = []
    m = re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/@:\s]*:([^/@\s]+)@", url)
    if m:
        found.append(m.group(1))
    m = re.match(r"https?://[^/]+(/[^#]*)", url)
    if m and len(m.group(1).strip("/")) >= 8:
        found.append(m.group(1))
    return found
