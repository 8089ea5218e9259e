"""Server-side console sessions: the cookie carries only a random id.

Each session is one JSON file (mode 0600) under the home, named by the SHA-256 of its id so
a directory listing reveals no usable id. Files work across gunicorn workers of one node
without a database table or migration; several nodes need a shared directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any


class SessionStore:
    def __init__(self, directory: Path, idle_seconds: float, absolute_seconds: float) -> None:
        self.dir = directory
        self.idle = idle_seconds
        self.absolute = absolute_seconds
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)

    def _path(self, sid: str) -> Path:
        return self.dir / (hashlib.sha256(sid.encode()).hexdigest() + ".json")

    def create(self, data: dict[str, Any]) -> str:
        """A new session (a fresh id: never reuse an id across a login)."""
        sid = secrets.token_urlsafe(32)
        now = time.time()
        self.save(sid, {**data, "created": now, "seen": now,
                        "csrf": secrets.token_urlsafe(32)})
        if secrets.randbelow(50) == 0:
            self.purge()
        return sid

    def load(self, sid: str | None) -> dict[str, Any] | None:
        """The session, or None when unknown, idle too long or past its absolute lifetime."""
        if not sid or len(sid) > 100:
            return None
        try:
            data: dict[str, Any] = json.loads(self._path(sid).read_text())
        except (OSError, ValueError):
            return None
        now = time.time()
        if now - data.get("seen", 0) > self.idle or now - data.get("created", 0) > self.absolute:
            self.delete(sid)
            return None
        return data

    def save(self, sid: str, data: dict[str, Any]) -> None:
        data["seen"] = time.time()
        path = self._path(sid)
        tmp = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)

    def delete(self, sid: str) -> None:
        self._path(sid).unlink(missing_ok=True)

    def purge(self) -> int:
        """Remove expired sessions; returns how many."""
        now, gone = time.time(), 0
        for path in self.dir.glob("*.json"):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if (now - data.get("seen", 0) > self.idle
                    or now - data.get("created", 0) > self.absolute):
                path.unlink(missing_ok=True)
                gone += 1
        return gone
