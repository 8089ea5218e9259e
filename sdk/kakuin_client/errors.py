"""One exception class per RFC 9457 problem ``type`` kakuin answers with.

Why: a vendor's code should branch on ``except RateLimited`` or ``except Forbidden``, not on
status codes or strings. Unknown types still raise :class:`ApiError` with the problem kept.
"""

from __future__ import annotations

from typing import Any

PROBLEM_BASE = "urn:kakuin:problem:"


class KakuinError(Exception):
    """Base of every error this SDK raises."""


class TransportError(KakuinError):
    """The server could not be reached or timed out (after the retries)."""


class ApiError(KakuinError):
    """The server answered with a problem (or another non-2xx answer)."""

    type: str = ""

    def __init__(self, status: int, problem: dict[str, Any], retry_after: float | None = None):
        self.status = status
        self.problem = problem
        self.retry_after = retry_after
        self.detail = str(problem.get("detail") or problem.get("title") or "")
        super().__init__(f"HTTP {status} {problem.get('type', '')}: {self.detail}".strip())


class BadRequest(ApiError):
    type = PROBLEM_BASE + "ca/invalid-request"


class BadJson(ApiError):
    type = PROBLEM_BASE + "api/bad-json"


class Unauthenticated(ApiError):
    type = PROBLEM_BASE + "auth/unauthenticated"


class Forbidden(ApiError):
    type = PROBLEM_BASE + "ca/forbidden"


class SigningForbidden(ApiError):
    type = PROBLEM_BASE + "signing/forbidden"


class NotFound(ApiError):
    type = PROBLEM_BASE + "ca/not-found"


class Conflict(ApiError):
    type = PROBLEM_BASE + "ca/conflict"


class SigningRefused(ApiError):
    """A sealing parameter was refused (e.g. an unknown level)."""

    type = PROBLEM_BASE + "signing/error"


class BadDocument(ApiError):
    type = PROBLEM_BASE + "signing/bad-document"


class TooLarge(ApiError):
    type = PROBLEM_BASE + "signing/too-large"


class Unavailable(ApiError):
    type = PROBLEM_BASE + "signing/unavailable"


class RateLimited(ApiError):
    type = PROBLEM_BASE + "rate-limited"


class LintFailed(ApiError):
    type = PROBLEM_BASE + "ca/lint-failed"


class CscError(ApiError):
    """The CSC API refused (its errors are ``{"error", "error_description"}``)."""

    type = "csc"


class RequestRejected(KakuinError):
    """The seal request was rejected or failed instead of being issued."""

    def __init__(self, request: dict[str, Any]):
        self.request = request
        super().__init__(f"seal request {request.get('id')} is {request.get('status')}: "
                         f"{request.get('reason') or ''}".strip())


class ApprovalTimeout(KakuinError):
    """No decision on the seal request within the wait."""


class TrustListError(KakuinError):
    """The trust list is malformed, badly signed, stale, or not by the pinned signer."""


_BY_TYPE: dict[str, type[ApiError]] = {
    cls.type: cls
    for cls in (BadRequest, BadJson, SigningRefused, Unauthenticated, Forbidden,
                SigningForbidden, NotFound, Conflict, BadDocument, TooLarge, Unavailable,
                RateLimited, LintFailed)
}


def error_for(status: int, problem: dict[str, Any], retry_after: float | None = None) -> ApiError:
    """The exception for ``problem``: by its ``type``, else by CSC shape, else plain."""
    cls = _BY_TYPE.get(str(problem.get("type", "")))
    if cls is None and "error" in problem and "type" not in problem:
        cls = CscError
        problem = {**problem, "detail": problem.get("error_description") or problem["error"]}
    return (cls or ApiError)(status, problem, retry_after)
