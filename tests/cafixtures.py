"""Fixtures for CA flows over real HTTP: a fresh database (SQLite and PostgreSQL) holding the
session CA's certificate rows, the app on a real socket, registry entries and API tokens.
"""

from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import x509 as asn1_x509
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed448
from cryptography.x509.oid import NameOID
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.validation import validate_pdf_signature
from pyhanko_certvalidator import ValidationContext
from sqlalchemy import select
from werkzeug.serving import make_server

from ca import clients, registry, status
from ca.models import Certificate
from ca.store import Store, upgrade
from kakuin.app import create_app
from kakuin.cli import main
from kakuin.services import Services
from tests.dbutil import database


@dataclass
class Env:
    url: str
    store: Store
    home: Path
    operator: str
    officer_a: str
    officer_b: str
    school: str
    school_id: int
    board_a: int
    services: Services | None = None


def _corporate(code6: str) -> str:
    base = "000020" + code6
    return f"{registry.corporate_number_check_digit(base)}{base}"


def _copy_ca_rows(source: Store, target: Store) -> None:
    """The same CA (keys in the same HSM) on a fresh database."""
    with source.session() as s:
        rows = s.scalars(
            select(Certificate).where(
                Certificate.kind.in_(("root", "issuing", "ocsp", "tsa", "tsl"))
            )
        ).all()
        copies = [
            {c.name: getattr(r, c.name) for c in Certificate.__table__.columns if c.name != "id"}
            for r in rows
        ]
    with target.session() as s:
        for data in copies:
            s.add(Certificate(**data))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def env(
    request: pytest.FixtureRequest, settings, services, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    with database(request.param, tmp_path_factory.mktemp("db")) as url:
        upgrade(url)
        store = Store(url)
        _copy_ca_rows(services.store, store)
        svc = Services(settings, store, services.keys, services.profiles)
        svc.ca.maintain()  # first CRLs and OCSP responses of this database, as `kakuin init`
        app = create_app(settings, svc)
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            with store.session() as s:
                op = registry.add_operator(s, name_ja="kakuin 運用者", actor="test")
                board_a = registry.add_board(
                    s,
                    name_ja="新宿区教育委員会",
                    local_gov_code="131041",
                    corporate_number=_corporate("131041"),
                    actor="test",
                )
                board_b = registry.add_board(
                    s, name_ja="札幌市教育委員会", local_gov_code="011002", actor="test"
                )
                _, operator = clients.create_client(
                    s, organization_id=op.id, role="ca-operator", name="ops", actor="test"
                )
                _, officer_b = clients.create_client(
                    s, organization_id=board_b.id, role="board-officer", name="b", actor="test"
                )
                board_a_id = board_a.id
            # Tokens for board A's officer go through the real CLI, as operators bootstrap.
            out = CliRunner().invoke(
                main,
                [
                    "--home",
                    str(settings.home),
                    "token",
                    "create",
                    "--org",
                    str(board_a_id),
                    "--role",
                    "board-officer",
                    "--name",
                    "shinjuku-officer",
                ],
                env={"KAKUIN_DATABASE_URL": url},
                catch_exceptions=False,
            )
            assert out.exit_code == 0, out.output
            officer_a = json.loads(out.output)["token"]
            base = f"http://127.0.0.1:{server.server_port}"
            status, school = _call(
                base,
                "POST",
                "/api/v1/organizations",
                officer_a,
                {
                    "kind": "school",
                    "name_ja": "新宿区立第一中学校",
                    "name_en": "Shinjuku No.1 JHS",
                    "school_code": "C113210000010",
                },
            )
            assert status == 201, school
            assert school["status"] == "pending"  # a board's registration waits for the operator
            status, school = _call(
                base, "POST", f"/api/v1/organizations/{school['id']}/confirm", operator
            )
            assert status == 200 and school["status"] == "active", school
            with store.session() as s:
                _, school_token = clients.create_client(
                    s,
                    organization_id=school["id"],
                    role="school-system",
                    name="校務支援システム",
                    actor="test",
                )
            yield Env(
                base,
                store,
                settings.home,
                operator,
                officer_a,
                officer_b,
                school_token,
                school["id"],
                board_a_id,
                svc,
            )
        finally:
            server.shutdown()
            store.dispose(close=True)


def _call(
    base: str,
    method: str,
    path: str,
    token: str | None,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    hdrs = {"Content-Type": "application/json"} if data is not None else {}
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    hdrs.update(headers or {})
    req = urllib.request.Request(base + path, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            raw, ctype, status = resp.read(), resp.headers["Content-Type"], resp.status
    except urllib.error.HTTPError as err:
        raw, ctype, status = err.read(), err.headers["Content-Type"], err.code
        assert ctype == "application/problem+json", (status, raw)
    if ctype.startswith("application/") and "json" in ctype:
        return status, json.loads(raw)
    return status, raw


def _csr(key: Any, cn: str = "anything", org: str | None = None) -> str:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    algorithm = None if isinstance(key, ed448.Ed448PrivateKey) else hashes.SHA256()
    csr = (
        x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs)).sign(key, algorithm)
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def sealer(env: Env) -> Env:
    """The school of ``env`` with an approved hosted e-seal."""
    _, req = _call(
        env.url,
        "POST",
        "/api/v1/seal-requests",
        env.school,
        {"key": {"hosted": True, "algorithm": "ECDSA-P256"}},
    )
    status_code, req = _call(
        env.url, "POST", f"/api/v1/seal-requests/{req['id']}/approve", env.officer_a
    )
    assert status_code == 200, req
    return env


def _validate(pdf: bytes, env: Env) -> Any:
    roots = [
        asn1_x509.Certificate.load(d)
        for d in status.ca_chain(env.store)
        if asn1_x509.Certificate.load(d).self_signed != "no"
    ]
    reader = PdfFileReader(io.BytesIO(pdf))
    return validate_pdf_signature(
        reader.embedded_regular_signatures[-1],
        ValidationContext(trust_roots=roots, allow_fetching=False),
    )


def loopback_fetch(url: str, body: bytes | None = None, content_type: str | None = None) -> bytes:
    """signing.fetch with loopback allowed: the test servers listen on 127.0.0.1, which the
    default policy refuses (as ``[fetch] allow_networks`` allows it for tests and the demo)."""
    from signing import fetch as outbound

    policy = outbound.FetchPolicy(allow_networks=outbound.parse_networks("127.0.0.0/8,::1"))
    return outbound.fetch(url, body, content_type, policy=policy).data


def routed_fetch(public_base: str, live_base: str) -> Any:
    """A verification fetcher that sends the URLs in our certificates (``public_base``, the
    configured base URL, not served in tests) to the live test server instead, over HTTP."""

    def fetch(url: str, body: bytes | None = None, content_type: str | None = None) -> bytes:
        if url.startswith(public_base):
            url = live_base + url[len(public_base) :]
        return loopback_fetch(url, body, content_type)

    return fetch
