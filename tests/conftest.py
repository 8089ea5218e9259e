"""Shared fixtures: one real SoftHSM2 token directory per test session, made by the real
key ceremony (``kakuin init``), plus the database fixtures of tests/dbutil.py.

SoftHSM reads SOFTHSM2_CONF once per process, so every token of the session lives in one
token directory; tests that need their own token add one there under a fresh label.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from werkzeug.serving import make_server

from hsm import softhsm
from hsm.pkcs11 import Pkcs11KeyManager
from kakuin.cli import main
from kakuin.services import Services
from kakuin.settings import Settings, load_settings
from tests.cafixtures import env, sealer  # noqa: F401  (fixtures)
from tests.dbutil import db_url, store  # noqa: F401  (fixtures)


@dataclass(frozen=True)
class Token:
    module: str
    label: str
    pin: str


@dataclass(frozen=True)
class Tokens:
    """Extra tokens beside the CA's. SoftHSM lists tokens when the module is initialised,
    so they are all made before this process first loads it."""

    scratch: Token  # for HSM tests that make their own keys
    untouched: Token  # nobody logs in to it: wrong-PIN tests need a token not logged in


@pytest.fixture(scope="session")
def home_and_tokens(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Tokens]:
    """A home after a real key ceremony (SQLite, SoftHSM token, published PKI)."""
    path = tmp_path_factory.mktemp("kakuin-home")
    os.environ.pop("KAKUIN_HSM_PIN", None)
    conf = softhsm.write_config(path)
    made = []
    for prefix in ("scratch", "untouched"):
        label, pin = f"{prefix}-{secrets.token_hex(4)}", secrets.token_urlsafe(12)
        softhsm.init_token(conf, label, secrets.token_urlsafe(12), pin)
        made.append(Token(softhsm.find_module(), label, pin))
    result = CliRunner().invoke(main, ["--home", str(path), "init"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return path, Tokens(*made)


@pytest.fixture(scope="session")
def home(home_and_tokens: tuple[Path, Tokens]) -> Path:
    return home_and_tokens[0]


@pytest.fixture(scope="session")
def tokens(home_and_tokens: tuple[Path, Tokens]) -> Tokens:
    return home_and_tokens[1]


@pytest.fixture(scope="session")
def settings(home: Path) -> Settings:
    """The home's settings, rate limits off: tests call endpoints far faster than any one
    client would. tests/test_ratelimit.py (and test_metrics.py) set their own limits."""
    import dataclasses

    from kakuin.settings import LimitSettings

    return dataclasses.replace(load_settings(home), limits=LimitSettings(enabled=False))


@pytest.fixture(scope="session")
def services(settings: Settings) -> Iterator[Services]:
    svc = Services.build(settings)
    yield svc
    svc.store.dispose(close=True)


@pytest.fixture(scope="session")
def token(tokens: Tokens) -> Token:
    return tokens.scratch


@pytest.fixture(scope="session")
def keys(token: Token) -> Iterator[Pkcs11KeyManager]:
    manager = Pkcs11KeyManager(token.module, token.label, token.pin)
    yield manager


@dataclass(frozen=True)
class LiveServer:
    url: str
    services: Services


@pytest.fixture(scope="session")
def live_server(settings: Settings, services: Services) -> Iterator[LiveServer]:
    """The real Flask app behind a real HTTP socket on loopback."""
    from kakuin.app import create_app

    app = create_app(settings, services)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield LiveServer(f"http://127.0.0.1:{server.server_port}", services)
    server.shutdown()
