"""The CA as one object the web layer and CLI can hold: store, HSM, profiles, names."""

from __future__ import annotations

from dataclasses import dataclass, field

from ca.authorities import issuing_authority
from ca.issuer import IssuingAuthority
from ca.profiles import Profile
from ca.store import Store
from hsm.api import KeyManager


@dataclass
class CAService:
    store: Store
    keys: KeyManager
    profiles: dict[str, Profile]
    issuing_name: str
    base_url: str
    # Pre-issuance linting (pkilint) is on in every deployment; bench/issue.py turns it off
    # only to measure what it costs.
    lint_before_signing: bool = True
    _authority: IssuingAuthority | None = field(default=None, repr=False)

    def authority(self) -> IssuingAuthority:
        """The issuing CA, loaded once (certificate from the store, key handle from the HSM)."""
        if self._authority is None:
            self._authority = issuing_authority(
                self.store, self.keys, self.issuing_name, self.base_url
            )
        return self._authority
