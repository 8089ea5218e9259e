"""Issue 15: actor on every seal, who sealed this, and the RFC 9162 transparency log.

Proofs are checked by ``rfc_*`` below, written straight from RFC 9162 section 2.1 and not
importing ``ca.merkle``: a bug shared by generator and verifier cannot hide.
"""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import delete, select

from ca import audit, clients
from ca.models import (
    AuditEntry,
    Certificate,
    Organization,
    SealEvent,
    TransparencyHead,
    TransparencyLeaf,
)
from kakuin import transparency
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


# -- an independent RFC 9162 section 2.1 implementation (does not import ca.merkle) -----------

def rfc_leaf(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def rfc_node(a: bytes, b: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + a + b).digest()


def rfc_k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def rfc_mth(d: list[bytes]) -> bytes:
    """MTH over entries (2.1.1)."""
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return rfc_leaf(d[0])
    k = rfc_k(len(d))
    return rfc_node(rfc_mth(d[:k]), rfc_mth(d[k:]))


def rfc_path(m: int, d: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) (2.1.3.1)."""
    if len(d) == 1:
        return []
    k = rfc_k(len(d))
    if m < k:
        return [*rfc_path(m, d[:k]), rfc_mth(d[k:])]
    return [*rfc_path(m - k, d[k:]), rfc_mth(d[:k])]


def rfc_proof(m: int, d: list[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) = SUBPROOF(m, D[n], true) (2.1.4.1)."""
    def sub(m: int, d: list[bytes], b: bool) -> list[bytes]:
        if m == len(d):
            return [] if b else [rfc_mth(d)]
        k = rfc_k(len(d))
        if m <= k:
            return [*sub(m, d[:k], b), rfc_mth(d[k:])]
        return [*sub(m - k, d[k:], False), rfc_mth(d[:k])]
    return sub(m, d, True)


def rfc_verify_inclusion(leaf_index: int, tree_size: int, leaf_hash: bytes,
                         inclusion_path: list[bytes], root_hash: bytes) -> bool:
    """2.1.3.2, step by step."""
    if leaf_index >= tree_size:
        return False
    fn, sn, r = leaf_index, tree_size - 1, leaf_hash
    for p in inclusion_path:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            r = rfc_node(p, r)
            while not (fn % 2 == 1 or fn == 0):
                fn, sn = fn >> 1, sn >> 1
        else:
            r = rfc_node(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root_hash


def rfc_verify_consistency(first: int, second: int, first_hash: bytes, second_hash: bytes,
                           consistency_path: list[bytes]) -> bool:
    """2.1.4.2, step by step."""
    if not consistency_path:
        return False
    path = list(consistency_path)
    if first & (first - 1) == 0:  # exact power of 2
        path = [first_hash, *path]
    fn, sn = first - 1, second - 1
    while fn % 2 == 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            fr, sr = rfc_node(c, fr), rfc_node(c, sr)
            while not (fn % 2 == 1 or fn == 0):
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = rfc_node(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr == first_hash and sr == second_hash and sn == 0


# RFC 6962 reference vectors (transparency-dev/merkle testonly, as data).
VECTOR_LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f")]
VECTOR_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
VECTOR_INCLUSION = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]
VECTOR_CONSISTENCY = [
    (2, 8, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]


def test_production_merkle_matches_rfc_vectors_and_the_independent_implementation() -> None:
    from ca import merkle

    hashes = [merkle.leaf_hash(e) for e in VECTOR_LEAVES]
    assert merkle.root([]).hex() == rfc_mth([]).hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    for n in range(1, 9):
        assert merkle.root(hashes[:n]).hex() == rfc_mth(VECTOR_LEAVES[:n]).hex() \
            == VECTOR_ROOTS[n - 1]
    for index, size, path in VECTOR_INCLUSION:
        got = [p.hex() for p in merkle.inclusion_proof(index, hashes[:size])]
        assert got == path == [p.hex() for p in rfc_path(index, VECTOR_LEAVES[:size])]
    for first, second, path in VECTOR_CONSISTENCY:
        got = [p.hex() for p in merkle.consistency_proof(first, hashes[:second])]
        assert got == path == [p.hex() for p in rfc_proof(first, VECTOR_LEAVES[:second])]
    # Every shape up to 20 leaves: production proofs pass the RFC verifier, and vice versa;
    # a wrong index or a tampered path fails both.
    entries = [bytes([i, i * 7 % 256]) for i in range(20)]
    hs = [merkle.leaf_hash(e) for e in entries]
    for n in range(1, 21):
        r = rfc_mth(entries[:n])
        for i in range(n):
            path = merkle.inclusion_proof(i, hs[:n])
            assert rfc_verify_inclusion(i, n, hs[i], path, r)
            assert merkle.verify_inclusion(i, n, hs[i], rfc_path(i, entries[:n]), r)
            if n > 1:
                assert not rfc_verify_inclusion((i + 1) % n, n, hs[i], path, r)
                bad = [bytes(32), *path[1:]]
                assert not merkle.verify_inclusion(i, n, hs[i], bad, r)
        for m in range(1, n):
            proof = merkle.consistency_proof(m, hs[:n])
            assert rfc_verify_consistency(m, n, rfc_mth(entries[:m]), r, proof)
            assert merkle.verify_consistency(m, n, rfc_mth(entries[:m]), r,
                                             rfc_proof(m, entries[:n]))
            assert not rfc_verify_consistency(m, n, rfc_mth(entries[:m]), bytes(32), proof)


# -- the log over HTTP -------------------------------------------------------------------------

def _get(env: Env, path: str) -> tuple[int, Any, bytes]:
    req = urllib.request.Request(env.url + path)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw), raw
    except urllib.error.HTTPError as err:
        raw = err.read()
        return err.code, json.loads(raw), raw


def _check_head_signature(head: dict[str, Any]) -> None:
    """Independently: ECDSA P-256 over the canonical JSON of the head's fields."""
    der = base64.b64decode(head["public_key"])
    assert hashlib.sha256(der).hexdigest() == head["log_id"]
    body = {k: head[k] for k in ("log_id", "tree_size", "root_hash", "timestamp", "audit_head")}
    key = serialization.load_der_public_key(der)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(base64.b64decode(head["signature"]),
               json.dumps(body, sort_keys=True, separators=(",", ":")).encode(),
               ec.ECDSA(hashes.SHA256()))


def test_transparency_log_end_to_end(sealer: Env, settings: Any, tmp_path: Path) -> None:
    assert sealer.services is not None
    document = guidance_record(pages=1) + f"%{uuid.uuid4().hex}\n".encode()
    digest = hashlib.sha256(document).hexdigest()
    body, ctype = _multipart({"level": "B-B"}, document)
    code, headers, _ = _post(f"{sealer.url}/api/v1/seal/pdf", body, ctype, sealer.school)
    assert code == 200
    salt, commit = headers["X-Kakuin-Seal-Salt"], headers["X-Kakuin-Seal-Commitment"]
    first = transparency.publish(sealer.services)
    assert first is not None

    served: list[bytes] = []
    code, head1, raw = _get(sealer, "/transparency/sth")
    assert code == 200 and head1["tree_size"] >= 1
    served.append(raw)
    _check_head_signature(head1)
    assert head1["timestamp_token"]  # TSA-stamped
    with sealer.store.session() as s:  # the audit head in the tree head is the real one
        entry = s.get(AuditEntry, head1["audit_head"]["seq"])
        assert entry is not None and audit.entry_hash(entry) == head1["audit_head"]["hash"]
        leaves = s.scalars(select(TransparencyLeaf).where(TransparencyLeaf.seq.is_not(None))
                           .order_by(TransparencyLeaf.seq)).all()
        kinds = {leaf.kind for leaf in leaves}
        issued = s.scalars(select(Certificate.der).where(Certificate.kind == "eseal",
                                                         Certificate.der.is_not(None))).all()
    entries = [leaf.body.encode() for leaf in leaves][:head1["tree_size"]]
    assert rfc_mth(entries).hex() == head1["root_hash"]  # recomputed from the leaves alone
    assert {"seal", "precertificate", "certificate", "audit-head"} <= kinds
    logged = {json.loads(leaf.body)["sha256"] for leaf in leaves if leaf.kind == "certificate"}
    assert {hashlib.sha256(der).hexdigest() for der in issued} <= logged

    code, proof, raw = _get(sealer, f"/transparency/proof/inclusion?commitment={commit}")
    assert code == 200, proof
    served.append(raw)
    leaf = proof["leaf"].encode()
    assert rfc_verify_inclusion(proof["leaf_index"], head1["tree_size"], rfc_leaf(leaf),
                                [bytes.fromhex(p) for p in proof["audit_path"]],
                                bytes.fromhex(head1["root_hash"]))
    assert json.loads(leaf)["commitment"] == hashlib.sha256(
        bytes.fromhex(salt) + bytes.fromhex(digest)).hexdigest()

    # The log grows; the new head is consistent with the old one.
    record = json.dumps({"n": uuid.uuid4().hex}).encode()
    code, _, _ = _post(f"{sealer.url}/api/v1/seal/json?level=B-B", record, "application/json",
                       sealer.school)
    assert code == 200
    transparency.publish(sealer.services)
    code, head2, raw = _get(sealer, "/transparency/sth")
    served.append(raw)
    _check_head_signature(head2)
    m, n = head1["tree_size"], head2["tree_size"]
    assert n > m
    code, cons, raw = _get(sealer, f"/transparency/proof/consistency?first={m}&second={n}")
    assert code == 200, cons
    served.append(raw)
    assert rfc_verify_consistency(m, n, bytes.fromhex(head1["root_hash"]),
                                  bytes.fromhex(head2["root_hash"]),
                                  [bytes.fromhex(p) for p in cons["consistency"]])
    code, old, raw = _get(sealer, f"/transparency/sth?tree_size={m}")
    assert code == 200 and old["root_hash"] == head1["root_hash"]
    for bad in ("/transparency/proof/consistency?first=0&second=1",
                f"/transparency/proof/consistency?first={n + 5}&second={n + 9}",
                "/transparency/proof/inclusion?commitment=zz",
                "/transparency/proof/inclusion?leaf_hash=" + "0" * 64):
        code, problem, _ = _get(sealer, bad)
        assert code in (404, 422), (bad, problem)

    # No plain document digest in anything the public endpoints served.
    for raw in served:
        assert digest.encode() not in raw and digest.upper().encode() not in raw

    # `kakuin transparency verify`: the document's seal event in the signed tree.
    files = {}
    for name, value in (("sth", head2), ("old", head1), ("cons", cons)):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(value))
    code, proof2, _ = _get(sealer, f"/transparency/proof/inclusion?commitment={commit}"
                                   f"&tree_size={n}")
    files["inc"] = tmp_path / "inc.json"
    files["inc"].write_text(json.dumps(proof2))
    files["doc"] = tmp_path / "doc.pdf"
    files["doc"].write_bytes(document)
    args = ["transparency", "verify", "--sth", str(files["sth"]), "--inclusion",
            str(files["inc"]), "--old-sth", str(files["old"]), "--consistency",
            str(files["cons"]), "--file", str(files["doc"]), "--salt", salt]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0 and "OK" in result.output, result.output
    wrong_salt = [*args[:-1], "00" * 32]
    result = CliRunner().invoke(main, wrong_salt)
    assert result.exit_code == 1 and "not this document" in result.output

    # A rewritten past event: a witness holding head2 catches it at the next head.
    with sealer.store.session() as s:
        victim = s.scalars(select(TransparencyLeaf).where(
            TransparencyLeaf.kind == "certificate", TransparencyLeaf.seq < m)).first()
        assert victim is not None
        saved = (victim.body, victim.leaf_hash)
        forged = victim.body.replace('"serial":"', '"serial":"f')
        victim.body, victim.leaf_hash = forged, rfc_leaf(forged.encode()).hex()
    try:
        code, _, _ = _post(f"{sealer.url}/api/v1/seal/json?level=B-B", record,
                           "application/json", sealer.school)
        forged_head = transparency.publish(sealer.services)
        assert forged_head is not None and forged_head["tree_size"] > n
        code, cons, _ = _get(sealer, f"/transparency/proof/consistency?first={n}"
                                     f"&second={forged_head['tree_size']}")
        assert code == 200
        assert not rfc_verify_consistency(n, forged_head["tree_size"],
                                          bytes.fromhex(head2["root_hash"]),
                                          bytes.fromhex(forged_head["root_hash"]),
                                          [bytes.fromhex(p) for p in cons["consistency"]])
        files["forged"] = tmp_path / "forged.json"
        files["forged"].write_text(json.dumps(forged_head))
        files["cons"].write_text(json.dumps(cons))
        result = CliRunner().invoke(main, ["transparency", "verify", "--sth",
                                           str(files["forged"]), "--old-sth", str(files["sth"]),
                                           "--consistency", str(files["cons"])])
        assert result.exit_code == 1 and "rewrote its history" in result.output
    finally:
        with sealer.store.session() as s:
            row = s.scalars(select(TransparencyLeaf).where(
                TransparencyLeaf.leaf_hash == rfc_leaf(forged.encode()).hex())).one()
            row.body, row.leaf_hash = saved
            s.execute(delete(TransparencyHead).where(TransparencyHead.tree_size > n))


def test_monitor_lists_every_certificate_naming_the_organization(sealer: Env,
                                                                 settings: Any) -> None:
    db = {"KAKUIN_DATABASE_URL": sealer.store.engine.url.render_as_string(hide_password=False)}
    result = CliRunner().invoke(main, ["--home", str(settings.home), "transparency", "monitor",
                                       "--org", str(sealer.school_id)], env=db)
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.output.splitlines()]
    with sealer.store.session() as s:
        serials = set(s.scalars(select(Certificate.serial).where(
            Certificate.organization_id == sealer.school_id, Certificate.der.is_not(None))))
    assert serials and serials <= {e["serial"] for e in events if e["type"] == "certificate"}
    assert {e["organization_id"] for e in events} == {sealer.school_id}
    assert all("der" not in e for e in events)


def test_a_witness_region_catches_a_rewritten_history(sealer: Env, tmp_path: Path) -> None:
    """Another region keeps our heads (kakuin.witness): a rewritten past certificate event
    is an alarm there, and the earlier head stays as evidence."""
    from prometheus_client import REGISTRY

    from kakuin import witness
    assert sealer.services is not None
    peer = f"peer-{uuid.uuid4().hex[:8]}"

    def get_json(url: str) -> Any:
        with urllib.request.urlopen(url, timeout=60) as resp:
            return json.loads(resp.read())

    def seal_and_publish() -> dict[str, Any]:
        record = json.dumps({"n": uuid.uuid4().hex}).encode()
        code, _, _ = _post(f"{sealer.url}/api/v1/seal/json?level=B-B", record,
                           "application/json", sealer.school)
        assert code == 200
        head = transparency.publish(sealer.services)  # type: ignore[arg-type]
        assert head is not None
        return head

    seal_and_publish()
    assert witness.refresh(tmp_path, [(peer, sealer.url)], get_json) == {peer: "pinned"}
    seal_and_publish()
    assert witness.refresh(tmp_path, [(peer, sealer.url)], get_json) == {peer: "ok"}
    seen = witness.load(tmp_path)[peer]
    with sealer.store.session() as s:
        victim = s.scalars(select(TransparencyLeaf).where(
            TransparencyLeaf.kind == "certificate")).first()
        assert victim is not None
        saved = (victim.body, victim.leaf_hash)
        forged = victim.body.replace('"serial":"', '"serial":"e')
        victim.body, victim.leaf_hash = forged, rfc_leaf(forged.encode()).hex()
    try:
        seal_and_publish()
        status = witness.refresh(tmp_path, [(peer, sealer.url)], get_json)[peer]
        assert status.startswith("inconsistent"), status
        assert witness.load(tmp_path)[peer] == seen  # the evidence is kept
        assert REGISTRY.get_sample_value("kakuin_transparency_inconsistencies_total",
                                         {"peer": peer}) == 1
    finally:
        with sealer.store.session() as s:
            row = s.scalars(select(TransparencyLeaf).where(
                TransparencyLeaf.leaf_hash == rfc_leaf(forged.encode()).hex())).one()
            row.body, row.leaf_hash = saved
            s.execute(delete(TransparencyHead).where(
                TransparencyHead.tree_size > seen["tree_size"]))
