"""Errors of the signing side: an HTTP status, a stable ``type`` slug and a safe message."""

from __future__ import annotations


class SigningError(Exception):
    status: int = 400
    type: str = "signing/error"
    title: str = "Sealing error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadDocument(SigningError):
    """Not a PDF / not JSON / encrypted / corrupt: the caller must send something else."""

    status = 422
    type = "signing/bad-document"
    title = "Document cannot be sealed"


class TooLarge(SigningError):
    status = 413
    type = "signing/too-large"
    title = "Document too large"


class NotAllowed(SigningError):
    status = 403
    type = "signing/forbidden"
    title = "Not allowed to use this seal"


class Unavailable(SigningError):
    status = 503
    type = "signing/unavailable"
    title = "Sealing temporarily unavailable"
