"""A kakuin seal as the readers people use see it: poppler's pdfsig (NSS, what Evince and
Okular show) says valid and trusted once the region's root is in an NSS database, and
pyHanko's default validation agrees.

NSS checks a PDF signer as an S/MIME signer (certificateUsageEmailSigner): an EKU without
emailProtection fails ("Unknown issue with Certificate"), so the e-seal profile carries none
(config/profiles/eseal.toml explains the choice). pdfsig also says "Unknown issue" when the
seal's OCSP responder cannot be reached (poppler reads NSS's last error after a soft
failure), so this region's certificates name the test server itself as ``base_url``, as a
production instance names its public URL.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from werkzeug.serving import make_server

from ca import clients, registry
from ca.store import Store, upgrade
from kakuin.app import create_app
from kakuin.services import Services
from tests.cafixtures import Env, _call, _copy_ca_rows, _corporate, _validate
from tests.dbutil import sqlite_url
from tests.fixtures_pdf import guidance_record
from tests.test_seal_api import _multipart, _post

pytestmark = pytest.mark.skipif(
    not (shutil.which("pdfsig") and shutil.which("certutil")),
    reason="needs pdfsig (poppler-utils) and certutil (libnss3-tools): make test installs them",
)


@pytest.fixture(scope="module")
def region(settings, services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """A school with a hosted seal on a server whose URL is the certificates' base URL."""
    with socket.socket() as probe:  # a free port, known before the first certificate
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    url = sqlite_url(tmp_path_factory.mktemp("pdfsig-db"))
    upgrade(url)
    store = Store(url)
    _copy_ca_rows(services.store, store)
    svc = Services(
        dataclasses.replace(settings, base_url=base), store, services.keys, services.profiles
    )
    svc.ca.maintain()
    server = make_server("127.0.0.1", port, create_app(svc.settings, svc), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with store.session() as s:
            board = registry.add_board(
                s,
                name_ja="新宿区教育委員会",
                local_gov_code="131041",
                corporate_number=_corporate("131041"),
                actor="test",
            )
            school = registry.add_school(
                s, name_ja="新宿区立第一中学校", school_code="C113210000010",
                board_id=board.id, actor="test",
            )  # fmt: skip
            _, officer = clients.create_client(
                s, organization_id=board.id, role="board-officer", name="o", actor="test"
            )
            _, system = clients.create_client(
                s, organization_id=school.id, role="school-system", name="s", actor="test"
            )
            ids = board.id, school.id
        _, req = _call(
            base, "POST", "/api/v1/seal-requests", system,
            {"key": {"hosted": True, "algorithm": "ECDSA-P256"}},
        )  # fmt: skip
        code, req = _call(base, "POST", f"/api/v1/seal-requests/{req['id']}/approve", officer)
        assert code == 200, req
        yield Env(base, store, settings.home, "", officer, "", system, ids[1], ids[0], svc)
    finally:
        server.shutdown()
        store.dispose(close=True)


def _nss_db(directory: Path, root_pem: Path) -> str:
    """A fresh NSS database trusting only ``root_pem``, as the README tells a reader to do."""
    directory.mkdir()
    db = f"sql:{directory}"
    subprocess.run(["certutil", "-N", "--empty-password", "-d", db], check=True)
    subprocess.run(
        ["certutil", "-A", "-n", "kakuin-root", "-t", "C,C,C", "-i", root_pem, "-d", db],
        check=True,
    )
    return db


def _pdfsig(db: str | None, pdf: Path) -> str:
    args = ["pdfsig", *(["-nssdir", db] if db else []), str(pdf)]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False).stdout


def test_pdfsig_says_valid_and_trusted(region: Env, tmp_path: Path) -> None:
    body, ctype = _multipart({"level": "B-T"}, guidance_record())
    code, _, sealed = _post(f"{region.url}/api/v1/seal/pdf", body, ctype, region.school)
    assert code == 200, sealed[:500]
    pdf = tmp_path / "sealed.pdf"
    pdf.write_bytes(sealed)

    # With the region's root in the reader's database, pdfsig trusts the seal ...
    db = _nss_db(tmp_path / "nss", region.home / "pki" / "kakuin-root-ca.pem")
    out = _pdfsig(db, pdf)
    assert "Signature Validation: Signature is Valid." in out, out
    assert "Certificate Validation: Certificate is Trusted." in out, out

    # ... pyHanko's default validation (keyUsage nonRepudiation, any EKU) agrees, and the
    # certificate carries no EKU, the one choice every reader accepts.
    seal = _validate(sealed, region)
    assert seal.bottom_line, seal.pretty_print_details()
    leaf = x509.load_der_x509_certificate(seal.signing_cert.dump())
    with pytest.raises(x509.ExtensionNotFound):
        leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage)

    # Without the root, the same reader does not trust it: trust comes from the import.
    empty = tmp_path / "empty"
    empty.mkdir()
    subprocess.run(["certutil", "-N", "--empty-password", "-d", f"sql:{empty}"], check=True)
    untrusted = _pdfsig(f"sql:{empty}", pdf)
    assert "Signature Validation: Signature is Valid." in untrusted, untrusted
    assert "Certificate is Trusted" not in untrusted, untrusted
