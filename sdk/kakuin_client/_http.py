"""HTTP over urllib with timeouts and retries (standard library only).

Retries: connection failures, 429 and 503, with exponential backoff and full jitter, honouring
``Retry-After`` (seconds) when the server sends it, capped by ``max_backoff``. Only idempotent
or replay-safe requests are retried after a connection failure; a 429/503 means the server did
not act, so any request may be sent again.
"""

from __future__ import annotations

import json
import random
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kakuin_client.errors import ApiError, TransportError, error_for

RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Transport:
    """One base URL, one token, the retry policy; ``sleep`` is replaceable for tests."""

    base_url: str
    token: str | None = None
    timeout: float = 60.0
    retries: int = 4
    backoff: float = 0.5
    max_backoff: float = 30.0
    user_agent: str = "kakuin-client/0.1"
    sleep: Callable[[float], None] = time.sleep
    sent: list[bytes] | None = field(default=None, repr=False)  # request bodies, if recording

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("https://", "http://")):
            raise ValueError("base_url must be an http(s) URL")

    def url(self, path: str) -> str:
        return path if "://" in path else self.base_url.rstrip("/") + path

    def request(self, method: str, path: str, *, body: bytes | None = None,
                content_type: str | None = None, auth: bool = True,
                retry_on_disconnect: bool = True) -> Response:
        """Send; return the 2xx response or raise the problem's exception."""
        headers = {"User-Agent": self.user_agent, "Accept": "application/json, */*"}
        if content_type:
            headers["Content-Type"] = content_type
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        attempt = 0
        while True:
            if self.sent is not None and body is not None:
                self.sent.append(body)
            url = self.url(path)
            if not url.startswith(("https://", "http://")):
                raise ValueError(f"not an http(s) URL: {url}")
            req = urllib.request.Request(url, data=body, method=method,  # noqa: S310 (checked)
                                         headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                    return Response(resp.status, dict(resp.headers), resp.read())
            except urllib.error.HTTPError as exc:
                data = exc.read()
                retry_after = _retry_after(exc.headers.get("Retry-After"))
                if exc.code in RETRY_STATUSES and attempt < self.retries:
                    self.sleep(self._delay(attempt, retry_after))
                    attempt += 1
                    continue
                raise _problem(exc.code, data, retry_after) from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                if retry_on_disconnect and attempt < self.retries:
                    self.sleep(self._delay(attempt, None))
                    attempt += 1
                    continue
                raise TransportError(f"{method} {self.url(path)}: {exc}") from exc

    def json(self, method: str, path: str, payload: Any = None, **kw: Any) -> Any:
        body = None if payload is None else json.dumps(payload, ensure_ascii=False).encode()
        return self.request(method, path, body=body,
                            content_type="application/json" if body is not None else None,
                            **kw).json()

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff)
        return random.uniform(0, min(self.max_backoff, self.backoff * 2 ** attempt))  # noqa: S311


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _problem(status: int, data: bytes, retry_after: float | None) -> ApiError:
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        parsed = {"title": data[:300].decode("utf-8", "replace") or f"HTTP {status}"}
    return error_for(status, parsed, retry_after)


def multipart(fields: Mapping[str, str],
              files: Mapping[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    """multipart/form-data body and its content type."""
    boundary = "kakuin-client-" + secrets.token_hex(12)
    out = bytearray()
    for name, value in fields.items():
        out += (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                f"{value}\r\n").encode()
    for name, (filename, data, ctype) in files.items():
        out += (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                f'filename="{filename}"\r\nContent-Type: {ctype}\r\n\r\n').encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"
