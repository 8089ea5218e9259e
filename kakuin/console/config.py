"""Console settings ([console] of kakuin.toml): OpenID Connect providers and role rules.

Kept apart from kakuin/settings.py so that file only gains one field. Client secrets are
never in a settings file: only the name of the environment variable holding one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("board-officer", "ca-operator", "auditor")
KINDS = ("board", "school_corporation", "operator")


class ConsoleSettingsError(ValueError):
    pass


@dataclass(frozen=True)
class ProviderSettings:
    """One OpenID Connect provider. ``profile = "gbizid"`` reads gBizID's userinfo claims:
    ``corporate_number`` (the organization) and ``account_type`` (1 Entry, 2 Prime, 3 Member)."""

    name: str
    title: str
    issuer: str
    client_id: str
    client_secret_env: str
    scopes: str = "openid profile"
    profile: str = "gbizid"
    organization_claim: str = "corporate_number"
    account_type_claim: str = "account_type"
    name_claim: str = "name"
    leeway_seconds: int = 60

    @property
    def enabled(self) -> bool:
        return bool(self.issuer and self.client_id)


# Default rules: account_type -> role, per kind of organization the person belongs to.
# A gBizID Prime (2) is the organization's representative; Members (3) and Entry (1) read.
DEFAULT_RULES: dict[str, dict[str, str]] = {
    "board": {"1": "auditor", "2": "board-officer", "3": "auditor"},
    "school_corporation": {"1": "auditor", "2": "board-officer", "3": "auditor"},
    "operator": {"1": "auditor", "2": "ca-operator", "3": "auditor"},
}


@dataclass(frozen=True)
class ConsoleSettings:
    enabled: bool = True
    # Secure cookies (and the __Host- prefix); turn off only for http://127.0.0.1 development.
    secure_cookies: bool = True
    idle_minutes: float = 30
    absolute_hours: float = 12
    # Server-side sessions: one 0600 file per session under <home>/<session_dir>.
    session_dir: str = "sessions"
    # The console's public origin (e.g. "https://kakuin.example") behind a TLS proxy: the
    # OIDC redirect URI and the Origin check use it. Empty: the request's own host.
    public_url: str = ""
    providers: tuple[ProviderSettings, ...] = ()
    rules: dict[str, dict[str, str]] = field(default_factory=lambda: DEFAULT_RULES)
    # Per-person grants beyond the rules: "<issuer> <sub>" -> role.
    grants: dict[str, str] = field(default_factory=dict)


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes", "on"):
        return True
    if str(value).lower() in ("0", "false", "no", "off"):
        return False
    raise ConsoleSettingsError(f"{name} must be true or false, not {value!r}")


def console_settings(data: dict[str, Any]) -> ConsoleSettings:
    d = data.get("console", {})
    base = ConsoleSettings()
    providers = []
    for name, p in (d.get("providers") or {}).items():
        if not isinstance(p, dict):
            raise ConsoleSettingsError(f"console.providers.{name} must be a table")
        known = {f for f in ProviderSettings.__dataclass_fields__ if f != "name"}
        unknown = set(p) - known
        if unknown:
            raise ConsoleSettingsError(
                f"console.providers.{name}: unknown keys {', '.join(sorted(unknown))}")
        if "client_secret" in p:
            raise ConsoleSettingsError("a client secret must not be in a settings file")
        providers.append(ProviderSettings(
            name=name, title=str(p.get("title", name)),
            issuer=str(p.get("issuer", "")).rstrip("/"),
            client_id=str(p.get("client_id", "")),
            client_secret_env=str(p.get("client_secret_env",
                                        f"KAKUIN_OIDC_{name.upper()}_SECRET")),
            **{k: str(v) for k, v in p.items() if k not in (
                "title", "issuer", "client_id", "client_secret_env", "leeway_seconds")},
            leeway_seconds=int(p.get("leeway_seconds", 60))))
    rules = {k: dict(v) for k, v in DEFAULT_RULES.items()}
    for kind, table in (d.get("rules") or {}).items():
        if kind not in KINDS or not isinstance(table, dict):
            raise ConsoleSettingsError(f"console.rules.{kind}: kind must be one of {KINDS}")
        rules[kind] = {str(k): str(v) for k, v in table.items()}
    grants = {str(k): str(v) for k, v in (d.get("grants") or {}).items()}
    for role in [r for t in rules.values() for r in t.values()] + list(grants.values()):
        if role not in (*ROLES, "none"):
            raise ConsoleSettingsError(f"console role {role!r} must be one of {ROLES} or none")
    return ConsoleSettings(
        enabled=_bool(d.get("enabled", base.enabled), "console.enabled"),
        secure_cookies=_bool(d.get("secure_cookies", base.secure_cookies),
                             "console.secure_cookies"),
        idle_minutes=float(d.get("idle_minutes", base.idle_minutes)),
        absolute_hours=float(d.get("absolute_hours", base.absolute_hours)),
        session_dir=str(d.get("session_dir", base.session_dir)),
        public_url=str(d.get("public_url", base.public_url)).rstrip("/"),
        providers=tuple(providers), rules=rules, grants=grants)
