"""Key custody over PKCS#11. Imports nothing of kakuin's own packages."""

from hsm.api import HashAlg, KeyAlgorithm, KeyManager, KeyRef, SignScheme
from hsm.errors import (
    HsmAuthError,
    HsmError,
    HsmKeyExists,
    HsmKeyNotFound,
    HsmRefused,
    HsmUnavailable,
    HsmUnsupported,
)

__all__ = [
    "HashAlg",
    "HsmAuthError",
    "HsmError",
    "HsmKeyExists",
    "HsmKeyNotFound",
    "HsmRefused",
    "HsmUnavailable",
    "HsmUnsupported",
    "KeyAlgorithm",
    "KeyManager",
    "KeyRef",
    "SignScheme",
]
