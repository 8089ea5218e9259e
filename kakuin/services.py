"""Builds the long-lived services once per process: settings -> store, HSM, profiles."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from ca.ceremony import CeremonyPlan
from ca.profiles import Profile, load_profiles
from ca.service import CAService
from ca.status import OwnStatus
from ca.store import Store
from hsm import softhsm
from hsm.api import KeyAlgorithm
from hsm.pkcs11 import Pkcs11KeyManager
from kakuin.settings import Settings
from signing import fetch as outbound
from signing.service import SigningService
from signing.tsa import (
    LocalTimeStamper,
    TimeStampAuthority,
    external_timestamper,
    kernel_clock_check,
)
from signing.verify import Limits

HEALTHCHECK_KEY_LABEL = "kakuin-healthcheck"


def module_path(settings: Settings) -> str:
    if settings.hsm.is_softhsm:
        softhsm.activate(settings.softhsm_conf)
        return softhsm.find_module()
    return settings.hsm.module


def make_key_manager(settings: Settings) -> Pkcs11KeyManager:
    from kakuin.metrics import MeteredKeyManager  # late: see kakuin/metrics.py (multiprocess)

    return MeteredKeyManager(
        module_path(settings),
        settings.hsm.token_label,
        settings.hsm.read_pin,
        sessions=settings.hsm.sessions,
    )


def ceremony_plan(settings: Settings) -> CeremonyPlan:
    ca = settings.ca
    return CeremonyPlan(
        organization=ca.organization,
        country=ca.country,
        base_url=settings.base_url,
        pki_dir=settings.pki_dir,
        root_name=ca.root_name,
        root_common_name=ca.root_common_name,
        root_algorithm=KeyAlgorithm(ca.root_algorithm),
        issuing_name=ca.issuing_name,
        issuing_common_name=ca.issuing_common_name,
        issuing_algorithm=KeyAlgorithm(ca.issuing_algorithm),
        ocsp_common_name=ca.ocsp_common_name,
        ocsp_algorithm=KeyAlgorithm(ca.ocsp_algorithm),
        tsa_common_name=ca.tsa_common_name,
        tsa_algorithm=KeyAlgorithm(ca.tsa_algorithm),
    )


@dataclass
class Services:
    settings: Settings
    store: Store
    keys: Pkcs11KeyManager
    profiles: dict[str, Profile]
    ca: CAService = field(init=False)
    signing: SigningService = field(init=False)

    def __post_init__(self) -> None:
        self.ca = CAService(
            self.store,
            self.keys,
            self.profiles,
            self.settings.ca.issuing_name,
            self.settings.base_url,
            root_name=self.settings.ca.root_name,
            pki_dir=self.settings.pki_dir,
            crl_validity=timedelta(hours=self.settings.status.crl_validity_hours),
        )
        self.signing = make_signing_service(self.settings, self.store, self.keys)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        return cls(
            settings=settings,
            store=Store(settings.database_url),
            keys=make_key_manager(settings),
            profiles=load_profiles(settings.profiles_dir),
        )

    def after_fork(self) -> None:
        """In a forked worker: new DB connections; the HSM manager re-inits by itself."""
        self.store.dispose()

    def close(self) -> None:
        self.keys.close()
        self.store.dispose(close=True)


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")


def prepare_softhsm_token(settings: Settings) -> bool:
    """Create the SoftHSM config and token under the home if missing; True if created.

    The user PIN comes from ``$pin_env`` when set, else a random one is written to pin_file
    (mode 0600). The SO PIN is always random and written to so_pin_file.
    """
    template_path = settings.config_dir / "softhsm2.conf.template"
    template = template_path.read_text() if template_path.exists() else None
    conf = softhsm.write_config(settings.home, template)
    softhsm.activate(conf)
    if softhsm.token_exists(conf, settings.hsm.token_label):
        return False
    user_pin = os.environ.get(settings.hsm.pin_env) or _secret(settings.hsm.pin_file)
    so_pin = _secret(settings.hsm.so_pin_file)
    softhsm.init_token(conf, settings.hsm.token_label, so_pin, user_pin)
    return True


def _secret(path: Path) -> str:
    """The PIN in ``path``, or a new random one written there (a retried init reuses it)."""
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(18)
    _write_secret(path, value)
    return value


def make_signing_service(
    settings: Settings, store: Store, keys: Pkcs11KeyManager
) -> SigningService:
    sig = settings.signing
    policy = fetch_policy(settings)
    tsa = TimeStampAuthority(
        store,
        keys,
        policy_oid=sig.tsa_policy_oid,
        clock_check=kernel_clock_check() if sig.tsa_clock_check == "kernel" else None,
    )
    timestamper = (
        external_timestamper(sig.external_tsa_url, policy=policy)
        if sig.external_tsa_url
        else LocalTimeStamper(tsa)
    )
    from kakuin.metrics import MeteredSigningService  # late: see kakuin/metrics.py

    return MeteredSigningService(
        store,
        keys,
        tsa,
        timestamper,
        verify_url=f"{settings.base_url}/verify",
        crl_issuers=(settings.ca.root_name,),
        max_pdf_bytes=int(sig.max_pdf_mb * 1024 * 1024),
        home=settings.home,
        instance_name=settings.ca.organization,
        region=settings.trust.region,
        base_url=settings.base_url,
        root_name=settings.ca.root_name,
        issuing_name=settings.ca.issuing_name,
        fetch=outbound.StatusFetcher(
            own=OwnStatus(store, keys, settings.base_url, settings.ca.issuing_name),
            policy=policy,
            cache=outbound.StatusCache(max_entries=settings.verify.status_cache_entries,
                                       max_seconds=settings.verify.status_cache_seconds)),
        fetch_policy=policy,
        verify_limits=verify_limits(settings),
    )


def fetch_policy(settings: Settings) -> outbound.FetchPolicy:
    f = settings.fetch
    return outbound.FetchPolicy(timeout=f.timeout_seconds, max_bytes=int(f.max_mb * 1024 * 1024),
                                allow_networks=outbound.parse_networks(f.allow_networks))


def verify_limits(settings: Settings) -> Limits:
    v = settings.verify
    return Limits(max_signatures=v.max_signatures, max_revisions=v.max_revisions,
                  max_objects=v.max_objects, max_pages=v.max_pages, max_nesting=v.max_nesting,
                  time_budget=v.time_budget_seconds,
                  diff_analysis=v.diff_analysis)
