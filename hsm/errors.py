"""HSM errors. Messages are safe to show: they never carry a PIN or key material."""


class HsmError(Exception):
    """Base of every error raised by :mod:`hsm`; ``status`` hints the HTTP mapping."""

    status = 503
    type = "hsm/error"
    title = "HSM error"


class HsmUnavailable(HsmError):
    """The PKCS#11 module cannot be loaded, or the token is missing or unreachable."""

    type = "hsm/unavailable"
    title = "HSM unavailable"


class HsmAuthError(HsmError):
    """The token refused the PIN (wrong, locked or expired)."""

    type = "hsm/authentication-failed"
    title = "HSM login failed"


class HsmKeyNotFound(HsmError):
    status = 404
    type = "hsm/key-not-found"
    title = "Key not found in HSM"


class HsmKeyExists(HsmError):
    status = 409
    type = "hsm/key-exists"
    title = "Key already exists in HSM"


class HsmUnsupported(HsmError):
    """An algorithm, hash or mechanism this token (or kakuin) does not support."""

    status = 422
    type = "hsm/unsupported"
    title = "Unsupported HSM operation"


class HsmRefused(HsmError):
    """The token refused an operation by policy, e.g. reading a sensitive key value."""

    status = 403
    type = "hsm/refused"
    title = "Refused by the HSM"
