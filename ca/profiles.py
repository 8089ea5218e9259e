"""Certificate profiles are data (config/profiles/*.toml), not code branches."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ca.errors import CAError

KEY_USAGES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
)


class ProfileError(CAError):
    status = 500
    type = "ca/profile-invalid"
    title = "Certificate profile invalid"


@dataclass(frozen=True)
class Profile:
    name: str
    kind: str
    validity_days: int
    ca: bool
    path_length: int | None
    basic_constraints_critical: bool
    key_usages: tuple[str, ...]
    key_usage_critical: bool
    extended_key_usages: tuple[str, ...] = ()
    extended_key_usage_critical: bool = False
    ocsp_no_check: bool = False
    subject_key_identifier: bool = True
    authority_key_identifier: bool = True
    authority_information_access: bool = True
    crl_distribution_points: bool = True
    certificate_policies: tuple[str, ...] = ()
    # Dual control: how many distinct approvers (never the requester) a seal request needs.
    approvals_required: int = 1
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def _profile(data: dict[str, Any], source: str) -> Profile:
    try:
        bc = data["basic_constraints"]
        ku = data["key_usage"]
        eku = data.get("extended_key_usage", {})
        unknown = set(ku["usages"]) - set(KEY_USAGES)
        if unknown:
            raise ProfileError(f"{source}: unknown key usages {sorted(unknown)}")
        known = {
            "name",
            "kind",
            "validity_days",
            "basic_constraints",
            "key_usage",
            "extended_key_usage",
            "ocsp_no_check",
            "subject_key_identifier",
            "authority_key_identifier",
            "authority_information_access",
            "crl_distribution_points",
            "certificate_policies",
            "approvals_required",
        }
        approvals = data.get("approvals_required", 1)
        if not isinstance(approvals, int) or isinstance(approvals, bool) or not 1 <= approvals <= 9:
            raise ProfileError(f"{source}: approvals_required must be an integer 1-9")
        return Profile(
            name=str(data["name"]),
            kind=str(data["kind"]),
            validity_days=int(data["validity_days"]),
            ca=bool(bc["ca"]),
            path_length=bc.get("path_length"),
            basic_constraints_critical=bool(bc.get("critical", True)),
            key_usages=tuple(ku["usages"]),
            key_usage_critical=bool(ku.get("critical", True)),
            extended_key_usages=tuple(eku.get("usages", ())),
            extended_key_usage_critical=bool(eku.get("critical", False)),
            ocsp_no_check=bool(data.get("ocsp_no_check", False)),
            subject_key_identifier=bool(data.get("subject_key_identifier", True)),
            authority_key_identifier=bool(data.get("authority_key_identifier", True)),
            authority_information_access=bool(data.get("authority_information_access", True)),
            crl_distribution_points=bool(data.get("crl_distribution_points", True)),
            certificate_policies=tuple(data.get("certificate_policies", ())),
            approvals_required=approvals,
            extra={k: v for k, v in data.items() if k not in known},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProfileError(f"{source}: {exc!r}") from exc


def load_profiles(directory: Path) -> dict[str, Profile]:
    profiles: dict[str, Profile] = {}
    for path in sorted(directory.glob("*.toml")):
        with path.open("rb") as fh:
            try:
                data = tomllib.load(fh)
            except tomllib.TOMLDecodeError as exc:
                raise ProfileError(f"{path}: {exc}") from exc
        profile = _profile(data, str(path))
        if profile.name in profiles:
            raise ProfileError(f"{path}: duplicate profile name {profile.name!r}")
        profiles[profile.name] = profile
    if not profiles:
        raise ProfileError(f"no certificate profiles in {directory}")
    return profiles
