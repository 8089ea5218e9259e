"""kakuin-client: seal and verify against a kakuin (角印) instance without HSM, Flask or DB."""

from kakuin_client.client import KakuinClient, Verification
from kakuin_client.errors import (
    ApiError,
    ApprovalTimeout,
    BadDocument,
    BadJson,
    BadRequest,
    Conflict,
    CscError,
    Forbidden,
    KakuinError,
    LintFailed,
    NotFound,
    RateLimited,
    RequestRejected,
    SigningForbidden,
    SigningRefused,
    TooLarge,
    TransportError,
    TrustListError,
    Unauthenticated,
    Unavailable,
)
from kakuin_client.trust import TrustList, parse_trust_list

__all__ = [
    "ApiError", "ApprovalTimeout", "BadDocument", "BadJson", "BadRequest", "Conflict",
    "CscError", "Forbidden", "KakuinClient", "KakuinError", "LintFailed", "NotFound",
    "RateLimited", "RequestRejected", "SigningForbidden", "SigningRefused",
    "TooLarge", "TransportError",
    "TrustList", "TrustListError", "Unauthenticated", "Unavailable", "Verification",
    "parse_trust_list",
]
__version__ = "0.1.0"
