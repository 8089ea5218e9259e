"""Settings: embedded defaults (config/kakuin.toml), the home's kakuin.toml, then KAKUIN_*.

PINs are never read from a settings file: only from an environment variable or a file.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kakuin.console.config import ConsoleSettings, ConsoleSettingsError, console_settings

REPO_CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
# A wheel carries config/ here (setup.py copies it at build time); a checkout has no copy.
PACKAGED_CONFIG_DIR = Path(__file__).resolve().parent / "_config"


def default_config_dir() -> Path:
    """``$KAKUIN_CONFIG_DIR``, else the wheel's copy of config/, else the checkout's config/."""
    if os.environ.get("KAKUIN_CONFIG_DIR"):
        return Path(os.environ["KAKUIN_CONFIG_DIR"]).resolve()
    if (PACKAGED_CONFIG_DIR / "kakuin.toml").exists():
        return PACKAGED_CONFIG_DIR
    return REPO_CONFIG_DIR


class SettingsError(Exception):
    """A settings file or variable is invalid; the message says which and why."""


@dataclass(frozen=True)
class HsmSettings:
    module: str
    token_label: str
    pin_env: str
    pin_file: Path
    so_pin_file: Path
    sessions: int

    @property
    def is_softhsm(self) -> bool:
        return self.module == "softhsm"

    def read_pin(self) -> str:
        """The user PIN from the environment variable, else the PIN file."""
        pin = os.environ.get(self.pin_env)
        if pin:
            return pin
        try:
            return self.pin_file.read_text().strip()
        except FileNotFoundError:
            raise SettingsError(
                f"no HSM user PIN: set ${self.pin_env} or create {self.pin_file}"
            ) from None


@dataclass(frozen=True)
class CASettings:
    organization: str
    country: str
    root_name: str
    root_common_name: str
    root_algorithm: str
    issuing_name: str
    issuing_common_name: str
    issuing_algorithm: str
    ocsp_algorithm: str
    ocsp_common_name: str
    tsa_algorithm: str
    tsa_common_name: str


@dataclass(frozen=True)
class StatusSettings:
    crl_validity_hours: float
    maintenance_interval_seconds: float
    reconcile_grace_seconds: float = 300.0


@dataclass(frozen=True)
class SigningSettings:
    tsa_policy_oid: str
    tsa_clock_check: str
    external_tsa_url: str
    max_pdf_mb: float


@dataclass(frozen=True)
class TrustSettings:
    region: str


@dataclass(frozen=True)
class LimitSettings:
    """Rate limits (``limits`` notation, e.g. ``"5/second;30/minute"``) per client address,
    per API token on the authenticated API; see kakuin/ratelimit.py."""

    enabled: bool = True
    verify: str = "5/second;30/minute"
    ocsp: str = "100/second"
    tsa: str = "20/second"
    csc_info: str = "10/second"
    transparency: str = "10/second;300/minute"
    api: str = "20/second;600/minute"
    storage_url: str = "memory://"
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True)
class MetricsSettings:
    """GET /metrics: off unless enabled; then only from ``allow_from`` or with the token."""

    enabled: bool = False
    allow_from: tuple[str, ...] = ("127.0.0.1", "::1")
    token_env: str = "KAKUIN_METRICS_TOKEN"  # noqa: S105  (a variable name, not a secret)


@dataclass(frozen=True)
class VerifySettings:
    """Bounds of one verification (public, anonymous input): beyond them a clear verdict or
    4xx, never a killed worker. Status of other regions is cached up to status_cache_seconds."""

    max_signatures: int = 100
    max_revisions: int = 200
    max_objects: int = 100_000
    max_pages: int = 5_000
    max_nesting: int = 100
    time_budget_seconds: float = 20.0
    diff_analysis: str = "chained"  # or "full": see signing.verify._BudgetedDiffPolicy
    status_cache_seconds: float = 300.0
    status_cache_entries: int = 512

    def __post_init__(self) -> None:
        # A typo must not silently pick a review mode: the two differ in cost and strictness.
        if self.diff_analysis not in ("chained", "full"):
            raise ValueError(f"verify.diff_analysis must be 'chained' or 'full', "
                             f"not {self.diff_analysis!r}")


@dataclass(frozen=True)
class FetchSettings:
    """Outbound HTTP (trust lists, external TSA, other regions' OCSP/CRL): see signing.fetch."""

    timeout_seconds: float = 5.0
    max_mb: float = 20.0
    allow_networks: tuple[str, ...] = ()  # CIDRs of non-public targets that may be fetched


def _section(cls: Any, raw: Any) -> Any:
    """A settings dataclass from its TOML table, each value cast to its default's type."""
    values = {}
    for name, default in cls.__dataclass_fields__.items():
        if name in (raw or {}):
            value = raw[name]
            kind = type(default.default)
            if kind is tuple:
                items = value.split(",") if isinstance(value, str) else value
                value = tuple(str(i).strip() for i in items if str(i).strip())
            else:
                value = kind(value)
            values[name] = value
    return cls(**values)


@dataclass(frozen=True)
class Settings:
    home: Path
    config_dir: Path
    host: str
    port: int
    workers: int
    base_url: str
    log_level: str
    database_url: str
    hsm: HsmSettings
    ca: CASettings
    status: StatusSettings
    signing: SigningSettings
    trust: TrustSettings
    worker_class: str = "gevent"
    limits: LimitSettings = field(default_factory=LimitSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)
    verify: VerifySettings = VerifySettings()
    fetch: FetchSettings = FetchSettings()

    @property
    def pki_dir(self) -> Path:
        return self.home / "pki"

    @property
    def profiles_dir(self) -> Path:
        return self.config_dir / "profiles"

    @property
    def softhsm_conf(self) -> Path:
        return self.home / "softhsm" / "softhsm2.conf"


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: {exc}") from exc


_ENV = {
    "KAKUIN_DATABASE_URL": ("database", "url"),
    "KAKUIN_BASE_URL": ("server", "base_url"),
    "KAKUIN_HOST": ("server", "host"),
    "KAKUIN_PORT": ("server", "port"),
    "KAKUIN_WORKERS": ("server", "workers"),
    "KAKUIN_LOG_LEVEL": ("server", "log_level"),
    "KAKUIN_HSM_MODULE": ("hsm", "module"),
    "KAKUIN_HSM_TOKEN_LABEL": ("hsm", "token_label"),
    "KAKUIN_HSM_SESSIONS": ("hsm", "sessions"),
    "KAKUIN_MAINTENANCE_INTERVAL": ("status", "maintenance_interval_seconds"),
    "KAKUIN_RECONCILE_GRACE": ("status", "reconcile_grace_seconds"),
    "KAKUIN_TSA_CLOCK_CHECK": ("signing", "tsa_clock_check"),
    "KAKUIN_REGION": ("trust", "region"),
    "KAKUIN_EXTERNAL_TSA_URL": ("signing", "external_tsa_url"),
    "KAKUIN_WORKER_CLASS": ("server", "worker_class"),
    "KAKUIN_REDIS_URL": ("limits", "storage_url"),
    "KAKUIN_RATE_LIMITS": ("limits", "enabled"),
    "KAKUIN_METRICS": ("metrics", "enabled"),
    "KAKUIN_CONSOLE_SECURE_COOKIES": ("console", "secure_cookies"),
    "KAKUIN_FETCH_ALLOW_NETWORKS": ("fetch", "allow_networks"),
    "KAKUIN_STATUS_CACHE_SECONDS": ("verify", "status_cache_seconds"),
}


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes", "on"):
        return True
    if str(value).lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, not {value!r}")


def _strings(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, str):  # from the environment: comma-separated
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SettingsError(f"{name} must be a list of strings")
    return tuple(value)


def _limit_settings(data: dict[str, Any]) -> LimitSettings:
    d, base = data.get("limits", {}), LimitSettings()
    return LimitSettings(
        enabled=_bool(d.get("enabled", base.enabled), "limits.enabled"),
        verify=str(d.get("verify", base.verify)),
        ocsp=str(d.get("ocsp", base.ocsp)),
        tsa=str(d.get("tsa", base.tsa)),
        csc_info=str(d.get("csc_info", base.csc_info)),
        transparency=str(d.get("transparency", base.transparency)),
        api=str(d.get("api", base.api)),
        storage_url=str(d.get("storage_url") or base.storage_url),
        trusted_proxies=_strings(d.get("trusted_proxies", []), "limits.trusted_proxies"),
    )


def _metrics_settings(data: dict[str, Any]) -> MetricsSettings:
    d, base = data.get("metrics", {}), MetricsSettings()
    return MetricsSettings(
        enabled=_bool(d.get("enabled", base.enabled), "metrics.enabled"),
        allow_from=_strings(d.get("allow_from", list(base.allow_from)), "metrics.allow_from"),
        token_env=str(d.get("token_env", base.token_env)),
    )


def _choice(value: Any, allowed: tuple[str, ...], name: str) -> str:
    if value not in allowed:
        raise SettingsError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return str(value)


def load_settings(home: Path | str | None = None, **overrides: Any) -> Settings:
    """Build settings for ``home`` (default ``$KAKUIN_HOME`` or ``./var``)."""
    home_path = Path(home or os.environ.get("KAKUIN_HOME") or "var").resolve()
    config_dir = default_config_dir()
    defaults = config_dir / "kakuin.toml"
    if not defaults.exists():
        raise SettingsError(f"default settings not found at {defaults} (set KAKUIN_CONFIG_DIR)")
    data = _read_toml(defaults)
    if (home_path / "kakuin.toml").exists():
        data = _merge(data, _read_toml(home_path / "kakuin.toml"))
    for var, (section, key) in _ENV.items():
        if var in os.environ:
            data.setdefault(section, {})[key] = os.environ[var]
    for dotted, value in overrides.items():
        section, key = dotted.split("__", 1)
        data.setdefault(section, {})[key] = value
    for section in ("hsm",):
        for forbidden in ("pin", "user_pin", "so_pin"):
            if forbidden in data.get(section, {}):
                raise SettingsError(
                    f"[{section}] {forbidden} must not be in a settings file: "
                    "use pin_env or pin_file"
                )
    try:
        server, db, hsm, ca = data["server"], data["database"], data["hsm"], data["ca"]
        status = data["status"]
        signing = data["signing"]
        database_url = db.get("url") or f"sqlite:///{home_path / 'kakuin.db'}"
        return Settings(
            home=home_path,
            config_dir=config_dir,
            host=str(server["host"]),
            port=int(server["port"]),
            workers=int(server["workers"]),
            base_url=str(server["base_url"]).rstrip("/"),
            log_level=str(server["log_level"]).upper(),
            database_url=database_url,
            hsm=HsmSettings(
                module=str(hsm["module"]),
                token_label=str(hsm["token_label"]),
                pin_env=str(hsm["pin_env"]),
                pin_file=home_path / str(hsm["pin_file"]),
                so_pin_file=home_path / str(hsm["so_pin_file"]),
                sessions=int(hsm["sessions"]),
            ),
            ca=CASettings(**{k: str(v) for k, v in ca.items()}),
            status=StatusSettings(
                crl_validity_hours=float(status["crl_validity_hours"]),
                maintenance_interval_seconds=float(status["maintenance_interval_seconds"]),
                reconcile_grace_seconds=float(status.get("reconcile_grace_seconds", 300)),
            ),
            signing=SigningSettings(
                tsa_policy_oid=str(signing["tsa_policy_oid"]),
                tsa_clock_check=_choice(signing["tsa_clock_check"], ("certificate", "kernel"),
                                        "signing.tsa_clock_check"),
                external_tsa_url=str(signing["external_tsa_url"]),
                max_pdf_mb=float(signing["max_pdf_mb"]),
            ),
            trust=TrustSettings(region=str(data["trust"]["region"])),
            worker_class=_choice(server.get("worker_class", "gevent"),
                                 ("gevent", "sync", "gthread"), "server.worker_class"),
            limits=_limit_settings(data),
            metrics=_metrics_settings(data),
            console=console_settings(data),
            verify=_section(VerifySettings, data.get("verify")),
            fetch=_section(FetchSettings, data.get("fetch")),
        )
    except ConsoleSettingsError as exc:
        raise SettingsError(str(exc)) from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise SettingsError(f"invalid settings: {exc!r}") from exc
