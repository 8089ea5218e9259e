"""Errors the CA raises on purpose.

Each carries an HTTP status, a stable ``type`` slug and a ``detail`` that is safe to show to
the caller; the web layer turns them into RFC 9457 problem+json without knowing the cases.
Programming mistakes stay ``ValueError``/``TypeError`` and surface as 500s.
"""

from __future__ import annotations

from typing import Any


class CAError(Exception):
    """Base of the CA's expected failures."""

    status: int = 400
    type: str = "ca/error"
    title: str = "Certificate authority error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.detail!r})"

    def members(self) -> dict[str, Any]:
        """Extension members of the problem document (RFC 9457 §3.2); none by default."""
        return {}


class NotFound(CAError):
    status = 404
    type = "ca/not-found"
    title = "Not found"


class Conflict(CAError):
    status = 409
    type = "ca/conflict"
    title = "Conflict"


class DuplicateEntry(Conflict):
    """The database refused a row that duplicates a unique one, typically a concurrent
    writer on another node winning a race past the checks in code (``ca.store``)."""

    type = "ca/conflict"


class Forbidden(CAError):
    status = 403
    type = "ca/forbidden"
    title = "Forbidden"


class InvalidRequest(CAError):
    status = 422
    type = "ca/invalid-request"
    title = "Invalid request"


class AuditChainBroken(CAError):
    """The audit log no longer proves its own integrity; operators must investigate."""

    status = 500
    type = "ca/audit-chain-broken"
    title = "Audit chain broken"
