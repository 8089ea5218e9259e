"""The ``kakuin`` command: key ceremony, serving, HSM self-test, and the packages' groups."""

from __future__ import annotations

import json
import os
import secrets
import sys
import warnings
from functools import cached_property
from typing import Any

import click
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from ca import ceremony
from ca.cli import audit_group, cert_group, db_group, org_group, registry_group, token_group
from ca.errors import CAError
from ca.profiles import load_profiles
from ca.service import CAService
from ca.store import Store, upgrade
from hsm.api import HashAlg, KeyAlgorithm, SignScheme
from hsm.errors import HsmError, HsmKeyNotFound
from kakuin.conformance_cli import conformance_group
from kakuin.homedir import PRIVATE_UMASK, metrics_dir, secure_home
from kakuin.services import (
    HEALTHCHECK_KEY_LABEL,
    Services,
    ceremony_plan,
    make_key_manager,
    prepare_softhsm_token,
)
from kakuin.settings import Settings, SettingsError, load_settings
from kakuin.transparency import transparency_group
from signing.cli import lta_group, seal_group, trust_group, verify_command
from signing.errors import SigningError
from signing.service import SigningService


class Context:
    """Lazily built services, so ``kakuin --help`` needs no HSM or database."""

    def __init__(self, home: str | None) -> None:
        self.home = home

    @cached_property
    def settings(self) -> Settings:
        settings = load_settings(self.home)
        secure_home(settings)
        return settings

    @property
    def database_url(self) -> str:
        return self.settings.database_url

    @cached_property
    def store(self) -> Store:
        return self.services.store

    @cached_property
    def services(self) -> Services:
        return Services.build(self.settings)

    @property
    def ca(self) -> CAService:
        return self.services.ca

    @property
    def signing(self) -> SigningService:
        return self.services.signing


class KakuinGroup(click.Group):
    """Turns the expected failures into one clear line and exit code 1, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (CAError, HsmError, SettingsError, SigningError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=KakuinGroup)
@click.option(
    "--home",
    envvar="KAKUIN_HOME",
    default="var",
    show_default=True,
    help="Home directory: settings, SQLite database, SoftHSM token, published PKI.",
)
@click.pass_context
def main(ctx: click.Context, home: str) -> None:
    """kakuin: e-seal certificate authority and sealing service."""
    os.umask(PRIVATE_UMASK)  # database, WAL, token, secrets: readable by this user only
    ctx.obj = Context(home)


main.add_command(db_group)
main.add_command(audit_group)
main.add_command(org_group)
main.add_command(registry_group)
main.add_command(token_group)
main.add_command(cert_group)
main.add_command(seal_group)
main.add_command(lta_group)
main.add_command(trust_group)
main.add_command(verify_command)
main.add_command(transparency_group)
main.add_command(conformance_group)


@main.command()
@click.pass_obj
def init(obj: Context) -> None:
    """Key ceremony: token, CA keys and certificates, published under HOME/pki."""
    settings = obj.settings
    settings.home.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.home, 0o700)
    if settings.hsm.is_softhsm and prepare_softhsm_token(settings):
        click.echo(
            f"created SoftHSM token {settings.hsm.token_label!r} under {settings.home / 'softhsm'}"
        )
    upgrade(settings.database_url)
    keys = obj.services.keys
    plan = ceremony_plan(settings)
    result = ceremony.run(obj.store, keys, plan, load_profiles(settings.profiles_dir))
    try:
        keys.find(label=HEALTHCHECK_KEY_LABEL)
    except HsmKeyNotFound:
        keys.generate(KeyAlgorithm.ECDSA_P256, HEALTHCHECK_KEY_LABEL)
    for label, cert in (
        ("root CA", result.root),
        ("issuing CA", result.issuing),
        ("OCSP responder", result.ocsp),
        ("TSA", result.tsa),
    ):
        click.echo(f"{label:15} {cert.subject.rfc4514_string()}  serial {cert.serial_number:x}")
    click.echo(f"published {len(result.files)} files under {plan.pki_dir}")
    first = obj.ca.maintain()
    click.echo(f"published CRLs {', '.join(first['crls_published'])}; "
               f"{first['ocsp_refreshed']} OCSP responses pre-signed")


@main.command()
@click.option("--host", default=None, help="Listen address (default from settings).")
@click.option("--port", default=None, type=int, help="Listen port (default from settings).")
@click.option("--workers", default=None, type=int, help="gunicorn worker processes.")
@click.option("--worker-class", default=None, type=click.Choice(["gevent", "sync", "gthread"]),
              help="gunicorn worker class (default from settings: gevent).")
@click.pass_obj
def serve(obj: Context, host: str | None, port: int | None, workers: int | None,
          worker_class: str | None) -> None:
    """Serve the HTTP API under gunicorn. Each worker builds the app after fork (and after
    gevent's monkey-patching): its own PKCS#11 session, DB pool and scheduler."""
    from gunicorn.app.base import BaseApplication

    settings = obj.settings
    # Before prometheus_client is imported anywhere (it picks its value class on import).
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir(settings.home))
    from kakuin import metrics, ratelimit

    ratelimit.RateLimits(settings.limits, settings.base_url)  # bad [limits]: one line, here
    # gevent warns that ssl was imported before its patch (by aiohttp, through pyHanko). aiohttp
    # runs TLS inside asyncio over memory BIOs, never on a blocking socket, which is what the
    # warning is about; urllib/http.client look the ssl module up when called (patched).
    warnings.filterwarnings("ignore", message="Monkey-patching ssl after ssl")
    options = {
        "bind": f"{host or settings.host}:{port or settings.port}",
        "workers": workers or settings.workers,
        "worker_class": worker_class or settings.worker_class,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": settings.log_level.lower(),
        "timeout": 60,
        # gevent: also the deadline for a request line + headers; a trickling client is cut.
        "keepalive": 2,
        "post_worker_init": _worker_started,
        "child_exit": metrics.child_exit,
    }

    class Server(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            """In the worker: services opened here are never shared across a fork."""
            from kakuin.app import create_app

            return create_app(settings, Services.build(settings))

    Server().run()


def _worker_started(worker: Any) -> None:
    """gunicorn post_worker_init (after gevent patched the worker): asyncio made safe for
    greenlets, and the scheduler as a thread of this worker (a greenlet under gevent)."""
    from kakuin.app import start_maintenance
    from kakuin.greenlets import in_gevent_worker, serialise_asyncio_run

    if in_gevent_worker():
        serialise_asyncio_run()

    start_maintenance(worker.wsgi.extensions["kakuin"])


@main.group("hsm")
def hsm_group() -> None:
    """HSM inspection."""


@hsm_group.command("selftest")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def hsm_selftest(obj: Context, as_json: bool) -> None:
    """Module, token, mechanisms and keys, then a test signature verified in software."""
    keys = make_key_manager(obj.settings)
    info = keys.info()
    refs = keys.keys()
    report: dict[str, Any] = {
        "module": info.module,
        "manufacturer": info.manufacturer,
        "library": info.library_description,
        "slot": info.slot_description,
        "token": {
            "label": info.token_label,
            "model": info.token_model,
            "serial": info.token_serial,
        },
        "mechanisms": list(info.mechanisms),
        "keys": [
            {"label": r.label, "id": r.key_id_hex, "algorithm": r.algorithm.value} for r in refs
        ],
    }
    ref = next((r for r in refs if r.label == HEALTHCHECK_KEY_LABEL), None) or (
        refs[0] if refs else None
    )
    if ref is None:
        report["signature"] = {"ok": False, "error": "no keys on the token; run kakuin init"}
    else:
        hash_alg = ref.algorithm.default_hash
        digest = hash_alg.digest(secrets.token_bytes(32))
        scheme = SignScheme.RSA_PSS if ref.algorithm.is_rsa else SignScheme.ECDSA
        sig = keys.sign_digest(ref, digest, hash_alg, scheme)
        _verify(ref.public_key_der, sig, digest, hash_alg, scheme)
        report["signature"] = {
            "ok": True,
            "key": ref.label,
            "scheme": scheme.value,
            "hash": hash_alg.value,
        }
    if as_json:
        click.echo(json.dumps(report, ensure_ascii=False, indent=2))
        return
    click.echo(f"module      {report['module']} ({report['manufacturer']}, {report['library']})")
    click.echo(f"slot        {report['slot']}")
    click.echo(
        f"token       {info.token_label} (model {info.token_model}, serial {info.token_serial})"
    )
    click.echo(f"mechanisms  {len(info.mechanisms)}: {', '.join(info.mechanisms[:12])} ...")
    click.echo(f"keys        {len(refs)}")
    for r in refs:
        click.echo(f"  {r.label:32} {r.algorithm.value:11} id {r.key_id_hex}")
    sig_report = report["signature"]
    if sig_report["ok"]:
        click.echo(
            f"signature   OK ({sig_report['scheme']}/{sig_report['hash']} with "
            f"{sig_report['key']}, verified in software)"
        )
    else:
        click.echo(f"signature   FAILED: {sig_report['error']}")
        sys.exit(1)


def _verify(spki: bytes, sig: bytes, digest: bytes, hash_alg: HashAlg, scheme: SignScheme) -> None:
    public = serialization.load_der_public_key(spki)
    chosen = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}[
        hash_alg.value
    ]
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(sig, digest, ec.ECDSA(Prehashed(chosen)))
    elif isinstance(public, rsa.RSAPublicKey):
        pad: padding.AsymmetricPadding = (
            padding.PSS(padding.MGF1(chosen), padding.PSS.DIGEST_LENGTH)
            if scheme is SignScheme.RSA_PSS
            else padding.PKCS1v15()
        )
        public.verify(sig, digest, pad, Prehashed(chosen))


@main.command("paths", hidden=True)
@click.pass_obj
def paths(obj: Context) -> None:
    """Print the resolved home, database URL and PKI directory (for scripts)."""
    s = obj.settings
    click.echo(
        json.dumps({"home": str(s.home), "database_url": s.database_url, "pki_dir": str(s.pki_dir)})
    )


@main.group("crl")
def crl_group() -> None:
    """Certificate revocation lists."""


@crl_group.command("publish")
@click.pass_obj
def crl_publish(obj: Context) -> None:
    """Publish a new CRL for the issuing CA and the root now (also written under HOME/pki)."""
    for name in (obj.settings.ca.issuing_name, obj.settings.ca.root_name):
        row = obj.ca.publish_crl(name, actor="cli:operator")
        click.echo(f"{name}: CRL #{row.number}, next update {row.next_update.isoformat()}")
