"""The RA trust model (issue 9) over real HTTP, real SoftHSM, SQLite and PostgreSQL.

- an authorization matrix: every /api/v1 endpoint of the app's url_map × every kind of
  caller, with the expected status (an endpoint without a row fails the test);
- the insider scenario: a board that registers a school, brings a key it holds and approves
  itself is refused at each step;
- dual control (self-approval refused for boards and operators, a second operator approves,
  ``approvals_required`` > 1), jurisdiction (prefecture, founder, pending until confirmed or
  listed), checks at submission, lint failure at approval as 422, auditors' jurisdiction.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select
from werkzeug.serving import make_server

from ca import audit, clients, enrollment, registry
from ca.errors import Forbidden, InvalidRequest
from ca.models import Organization, SealRequest
from kakuin.app import create_app
from kakuin.cli import main
from kakuin.services import Services
from tests.cafixtures import Env, _call, _csr
from tests.fixtures_pdf import guidance_record

CALLERS = ("none", "bad", "own_school", "own_officer", "own_auditor", "other_school",
           "other_officer", "other_auditor", "operator", "op_auditor")
_codes = itertools.count(1)


def _school_code(prefecture: str = "13", founder: str = "2", school_type: str = "C1") -> str:
    """A fresh, well-formed school code (unique within the test session)."""
    return f"{school_type}{prefecture}{founder}{5000000 + next(_codes):07d}0"


@dataclass
class World:
    """``env`` (board A, its school S1, board B) plus every caller of the matrix."""

    env: Env
    tokens: dict[str, str | None]
    officer_a2: str
    operator2: str
    board_b: int
    school2: int

    @property
    def url(self) -> str:
        return self.env.url

    def call(self, method: str, path: str, who: str, body: Any = None) -> tuple[int, Any]:
        return _call(self.url, method, path, self.tokens[who], body)

    def csr_request(self, who: str = "own_school", org_id: int | None = None) -> dict[str, Any]:
        status, req = self.call("POST", "/api/v1/seal-requests", who,
                                {"organization_id": org_id or self.env.school_id,
                                 "csr": _csr(ec.generate_private_key(ec.SECP256R1()))})
        assert status == 201, req
        return dict(req)

    def certificate(self) -> str:
        req = self.csr_request()
        status, done = self.call("POST", f"/api/v1/seal-requests/{req['id']}/approve",
                                 "own_officer")
        assert status == 200, done
        return str(done["certificate"]["serial"])

    def pending_school(self) -> int:
        status, org = self.call("POST", "/api/v1/organizations", "own_officer",
                                {"kind": "school", "name_ja": f"新宿区立学校{next(_codes)}",
                                 "school_code": _school_code()})
        assert status == 201 and org["status"] == "pending", org
        return int(org["id"])


@pytest.fixture(scope="module")
def world(env: Env) -> World:
    with env.store.session() as s:
        op = s.scalars(select(Organization).where(Organization.kind == "operator")).one()
        board_b = s.scalars(select(Organization).where(
            Organization.local_gov_code == "011002")).one()
        school2 = registry.add_school(s, name_ja="新宿区立第二小学校",
                                      school_code=_school_code(), board_id=env.board_a,
                                      actor="test")

        def token(org: int, role: str, name: str) -> str:
            return clients.create_client(s, organization_id=org, role=role, name=name,
                                         actor="test")[1]

        tokens: dict[str, str | None] = {
            "none": None,
            "bad": "kkn_" + "x" * 43,
            "own_school": env.school,
            "own_officer": env.officer_a,
            "own_auditor": token(env.board_a, "auditor", "監査A"),
            "other_school": token(school2.id, "school-system", "other school"),
            "other_officer": env.officer_b,
            "other_auditor": token(board_b.id, "auditor", "監査B"),
            "operator": env.operator,
            "op_auditor": token(op.id, "auditor", "監査 運用者"),
        }
        officer_a2 = token(env.board_a, "board-officer", "shinjuku-officer-2")
        operator2 = token(op.id, "ca-operator", "ops-2")
        board_b_id, school2_id = board_b.id, school2.id
    w = World(env, tokens, officer_a2, operator2, board_b_id, school2_id)
    # S1's hosted seal, for the sealing rows: requested by the school, approved by its board.
    status, req = w.call("POST", "/api/v1/seal-requests", "own_school",
                         {"key": {"hosted": True, "algorithm": "ECDSA-P256"}})
    assert status == 201, req
    status, req = w.call("POST", f"/api/v1/seal-requests/{req['id']}/approve", "own_officer")
    assert status == 200, req
    return w


# -- the authorization matrix ----------------------------------------------------------------

def _row(statuses: str) -> dict[str, int | str]:
    values = statuses.split()
    assert len(values) == len(CALLERS)
    return {c: (v if v == "public" else int(v)) for c, v in zip(CALLERS, values, strict=True)}


# Callers:          none bad own_school own_officer own_auditor other_school other_officer
#                   other_auditor operator op_auditor
READ_S1 = "401 401 200 200 200 403 403 403 200 200"
SEAL_S1 = "401 401 200 403 403 403 403 403 403 403"


@dataclass(frozen=True)
class Case:
    method: str
    rule: str
    variant: str
    expected: str
    # (world, caller) -> (path, body, content type or None for JSON)
    make: Callable[[World, str], tuple[str, Any, str | None]]


def _multipart(fields: dict[str, str], file: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                 f'filename="r.pdf"\r\nContent-Type: application/pdf\r\n\r\n'.encode()
                 + file + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _new_school_body(w: World, who: str) -> tuple[str, Any, None]:
    return ("/api/v1/organizations",
            {"kind": "school", "name_ja": f"新宿区立学校{next(_codes)}",
             "school_code": _school_code(), "board_id": w.env.board_a}, None)


_sealed: dict[int, str] = {}


def _sealed_by_s1(w: World, who: str) -> tuple[str, Any, None]:
    """A PDF S1 sealed (once per world): who may trace it back to S1?"""
    if id(w) not in _sealed:
        document = guidance_record(pages=1) + f"%{uuid.uuid4().hex}\n".encode()
        body, ctype = _multipart({"level": "B-B", "actor": "staff-1"}, document)
        assert _request(w, "POST", "/api/v1/seal/pdf", "own_school", body, ctype) == 200
        _sealed[id(w)] = hashlib.sha256(document).hexdigest()
    return f"/api/v1/audit/seals?sha256={_sealed[id(w)]}", None, None


def _held(w: World, who: str) -> tuple[str, Any, None]:
    serial = w.certificate()
    status, body = w.call("POST", f"/api/v1/certificates/{serial}/revoke", "operator",
                          {"reason": "certificateHold"})
    assert status == 200, body
    return f"/api/v1/certificates/{serial}/unsuspend", None, None


CASES = [
    Case("POST", "/api/v1/organizations", "a school of board A",
         "401 401 403 201 403 403 403 403 201 403", _new_school_body),
    Case("GET", "/api/v1/organizations/<int:org_id>", "S1", READ_S1,
         lambda w, who: (f"/api/v1/organizations/{w.env.school_id}", None, None)),
    Case("POST", "/api/v1/organizations/<int:org_id>/confirm", "a pending school of board A",
         "401 401 403 403 403 403 403 403 200 403",
         lambda w, who: (f"/api/v1/organizations/{w.pending_school()}/confirm", None, None)),
    Case("GET", "/api/v1/organizations/<int:org_id>/certificates", "S1", READ_S1,
         lambda w, who: (f"/api/v1/organizations/{w.env.school_id}/certificates", None, None)),
    Case("POST", "/api/v1/seal-requests", "hosted key for S1",
         "401 401 201 201 403 403 403 403 201 403",
         lambda w, who: ("/api/v1/seal-requests",
                         {"organization_id": w.env.school_id, "key": {"hosted": True}}, None)),
    Case("POST", "/api/v1/seal-requests", "CSR for S1 (only S1 holds S1's key)",
         "401 401 201 403 403 403 403 403 403 403",
         lambda w, who: ("/api/v1/seal-requests",
                         {"organization_id": w.env.school_id,
                          "csr": _csr(ec.generate_private_key(ec.SECP256R1()))}, None)),
    Case("GET", "/api/v1/seal-requests/<request_uuid>", "S1's request", READ_S1,
         lambda w, who: (f"/api/v1/seal-requests/{w.csr_request()['id']}", None, None)),
    Case("POST", "/api/v1/seal-requests/<request_uuid>/approve", "S1's request, by S1",
         "401 401 403 200 403 403 403 403 200 403",
         lambda w, who: (f"/api/v1/seal-requests/{w.csr_request()['id']}/approve", None, None)),
    Case("POST", "/api/v1/seal-requests/<request_uuid>/reject", "S1's request, by S1",
         "401 401 200 200 403 403 403 403 200 403",
         lambda w, who: (f"/api/v1/seal-requests/{w.csr_request()['id']}/reject",
                         {"reason": "matrix"}, None)),
    Case("GET", "/api/v1/certificates/<serial>", "S1's certificate (public)",
         "200 200 200 200 200 200 200 200 200 200",
         lambda w, who: (f"/api/v1/certificates/{w.certificate()}", None, None)),
    Case("POST", "/api/v1/certificates/<serial>/revoke", "S1's certificate, keyCompromise",
         "401 401 200 200 403 403 403 403 200 403",
         lambda w, who: (f"/api/v1/certificates/{w.certificate()}/revoke",
                         {"reason": "keyCompromise"}, None)),
    Case("POST", "/api/v1/certificates/<serial>/unsuspend", "S1's certificate on hold",
         "401 401 403 200 403 403 403 403 200 403", _held),
    Case("GET", "/api/v1/openapi.json", "public", "200 200 200 200 200 200 200 200 200 200",
         lambda w, who: ("/api/v1/openapi.json", None, None)),
    # Sealing: S1's hosted key is S1's alone: not its board's, not the operator's.
    Case("POST", "/api/v1/seal/json", "with S1's hosted key", SEAL_S1,
         lambda w, who: (f"/api/v1/seal/json?organization_id={w.env.school_id}&level=B-B",
                         {"種別": "出席簿"}, None)),
    Case("POST", "/api/v1/seal/json/batch", "with S1's hosted key", SEAL_S1,
         lambda w, who: (f"/api/v1/seal/json/batch?organization_id={w.env.school_id}&level=B-B",
                         {"records": [{"a": 1}]}, None)),
    Case("POST", "/api/v1/seal/pdf", "with S1's hosted key", SEAL_S1,
         lambda w, who: ("/api/v1/seal/pdf",
                         *_multipart({"level": "B-B", "organization_id": str(w.env.school_id)},
                                     guidance_record(pages=1)))),
    # Who sealed this: the board's officers and auditors, the operator's auditor; elsewhere
    # the same 404 as for a document never sealed.
    Case("GET", "/api/v1/audit/seals", "a PDF S1 sealed",
         "401 401 403 200 200 403 404 404 403 200", _sealed_by_s1),
    # Public: anyone may verify; a token (even a bad one) changes nothing.
    Case("POST", "/api/v1/verify", "not a sealed document",
         "public public public public public public public public public public",
         lambda w, who: ("/api/v1/verify", {"not": "sealed"}, None)),
    Case("POST", "/api/v1/conformance/producer", "not a sealed document",
         "public public public public public public public public public public",
         lambda w, who: ("/api/v1/conformance/producer", {"not": "sealed"}, None)),
]


def _request(w: World, method: str, path: str, who: str, body: Any,
             content_type: str | None) -> int:
    if content_type is None:
        return _call(w.url, method, path, w.tokens[who], body)[0]
    headers = {"Content-Type": content_type}
    if w.tokens[who]:
        headers["Authorization"] = f"Bearer {w.tokens[who]}"
    req = urllib.request.Request(w.url + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        assert err.headers["Content-Type"] == "application/problem+json"
        return int(err.code)


def test_every_api_endpoint_has_a_row(world: World, settings: Any) -> None:
    """A new /api/v1 endpoint must be added to CASES (with who may call it) or this fails."""
    assert world.env.services is not None
    app = create_app(settings, world.env.services)
    # Converter arguments (e.g. int(max=...)) do not change who may call an endpoint.
    routes = {(m, re.sub(r"<(\w+)\([^)]*\):", r"<\1:", r.rule))
              for r in app.url_map.iter_rules() if r.rule.startswith("/api/v1/")
              for m in (r.methods or set()) - {"HEAD", "OPTIONS"}}
    covered = {(c.method, c.rule) for c in CASES}
    assert routes - covered == set(), "endpoints without a row in the authorization matrix"
    assert covered - routes == set(), "rows for endpoints that no longer exist"


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.method} {c.rule} [{c.variant}]")
def test_authorization_matrix(world: World, case: Case) -> None:
    expected = _row(case.expected)
    raw: dict[str, int] = {}
    for who in CALLERS:
        path, body, ctype = case.make(world, who)
        raw[who] = _request(world, case.method, path, who, body, ctype)
    got = {who: "public" if expected[who] == "public" and raw[who] not in (401, 403)
           else raw[who] for who in CALLERS}
    assert got == expected, raw
    if "public" in expected.values():
        assert len(set(raw.values())) == 1, raw  # the same answer with or without a token


# -- the insider scenario ----------------------------------------------------------------------

def _denials(env: Env) -> int:
    with env.store.session() as s:
        return sum(1 for e in audit.entries(s, limit=100000) if e.action == "access.denied")


def test_insider_board_is_refused_at_each_step(world: World) -> None:
    """Board A's officer: registers an unregistered school code, brings a CSR for a key the
    board holds, approves itself, then tries to seal in the school's name."""
    env = world.env
    # 1. Registering succeeds only as *pending*: no seal until the operator confirms.
    status, school = world.call("POST", "/api/v1/organizations", "own_officer",
                                {"kind": "school", "name_ja": "新宿区立架空中学校",
                                 "school_code": _school_code()})
    assert status == 201 and school["status"] == "pending", school
    # 2. A CSR whose key the board holds: refused (403, audited), pending or not.
    board_key = ec.generate_private_key(ec.SECP256R1())
    for org_id in (school["id"], env.school_id):
        before = _denials(env)
        status, problem = world.call("POST", "/api/v1/seal-requests", "own_officer",
                                     {"organization_id": org_id, "csr": _csr(board_key)})
        assert status == 403 and "own systems" in problem["detail"], problem
        assert _denials(env) == before + 1
    # A hosted key for the pending school: refused too (422, no key generated).
    status, problem = world.call("POST", "/api/v1/seal-requests", "own_officer",
                                 {"organization_id": school["id"], "key": {"hosted": True}})
    assert status == 422 and "pending" in problem["detail"], problem
    # 3. A hosted-key request on the school's behalf: allowed, but never self-approved.
    status, req = world.call("POST", "/api/v1/seal-requests", "own_officer",
                             {"organization_id": env.school_id, "key": {"hosted": True}})
    assert status == 201, req
    before = _denials(env)
    status, problem = world.call("POST", f"/api/v1/seal-requests/{req['id']}/approve",
                                 "own_officer")
    assert status == 403 and "dual control" in problem["detail"], problem
    assert _denials(env) == before + 1
    # 4. Approved by a second officer, the key still seals only for the school itself.
    status, done = _call(env.url, "POST", f"/api/v1/seal-requests/{req['id']}/approve",
                         world.officer_a2)
    assert status == 200 and done["status"] == "issued", done
    for who, expected in (("own_officer", 403), ("operator", 403), ("own_school", 200)):
        status, _ = world.call("POST",
                               f"/api/v1/seal/json?organization_id={env.school_id}&level=B-B",
                               who, {"record": who})
        assert status == expected, who
    # The public verifier would have said "sealed by <school>": nothing got that far.
    with env.store.session() as s:
        assert s.get(Organization, school["id"]).status == "pending"  # type: ignore[union-attr]
        assert audit.verify(s).ok


# -- dual control --------------------------------------------------------------------------------

def test_operator_cannot_approve_its_own_request_a_second_operator_can(world: World) -> None:
    env = world.env
    status, req = world.call("POST", "/api/v1/seal-requests", "operator",
                             {"organization_id": env.school_id, "key": {"hosted": True}})
    assert status == 201, req
    status, problem = world.call("POST", f"/api/v1/seal-requests/{req['id']}/approve",
                                 "operator")
    assert status == 403 and "dual control" in problem["detail"]
    status, done = _call(env.url, "POST", f"/api/v1/seal-requests/{req['id']}/approve",
                         world.operator2)
    assert status == 200 and done["status"] == "issued", done
    assert done["requested_by"]["client_id"] == req["requested_by"]["client_id"]
    assert len(done["approvals"]) == 1 and done["approved_by"] != [
        req["requested_by"]["client_id"]]
    with env.store.session() as s:
        approved = [e for e in audit.entries(s, limit=100000)
                    if e.action == "seal-request.approved" and e.object_id == req["id"]]
    details = json.loads(approved[0].details or "{}")
    assert details["requested_by"] == req["requested_by"]["client_id"]
    assert details["approved_by"] == done["approved_by"]
    assert "ops-2" in approved[0].actor


def test_board_own_seal_is_approved_by_the_operator_only(world: World) -> None:
    env = world.env
    status, req = world.call("POST", "/api/v1/seal-requests", "own_officer",
                             {"organization_id": env.board_a,
                              "csr": _csr(ec.generate_private_key(ec.SECP256R1()))})
    assert status == 201, req
    for token in (env.officer_a, world.officer_a2):  # the board cannot approve itself
        status, problem = _call(env.url, "POST", f"/api/v1/seal-requests/{req['id']}/approve",
                                token)
        assert status == 403, problem
    status, done = world.call("POST", f"/api/v1/seal-requests/{req['id']}/approve", "operator")
    assert status == 200 and done["status"] == "issued", done
    assert done["certificate"]["subject"].find("NTRJP-") >= 0


def test_board_without_corporate_number_is_refused_at_submission(world: World) -> None:
    """Board B has no corporate number, so no organizationIdentifier: 422 now, not a 500 at
    approval."""
    status, problem = world.call("POST", "/api/v1/seal-requests", "other_officer",
                                 {"csr": _csr(ec.generate_private_key(ec.SECP256R1()))})
    assert status == 422, problem
    assert "corporate number" in problem["detail"]
    assert "organizationIdentifier" in problem["detail"]


def test_lint_failure_at_approval_is_422_with_findings_and_the_request_fails(
        world: World) -> None:
    """The registry changed between submission and approval (corporate number removed):
    pre-issuance lint refuses, the caller gets the findings, the request ends failed."""
    env = world.env
    status, req = world.call("POST", "/api/v1/seal-requests", "own_officer",
                             {"organization_id": env.board_a,
                              "csr": _csr(ec.generate_private_key(ec.SECP256R1()))})
    assert status == 201, req
    with env.store.session() as s:
        board = s.get(Organization, env.board_a)
        assert board is not None
        number, board.corporate_number = board.corporate_number, None
    try:
        status, problem = world.call("POST", f"/api/v1/seal-requests/{req['id']}/approve",
                                     "operator")
    finally:
        with env.store.session() as s:
            board = s.get(Organization, env.board_a)
            assert board is not None
            board.corporate_number = number
    assert status == 422, problem
    assert problem["type"] == "urn:kakuin:problem:ca/lint-failed"
    codes = [f["code"] for f in problem["findings"]]
    assert any("organization_identifier" in c for c in codes), codes
    status, req = world.call("GET", f"/api/v1/seal-requests/{req['id']}", "operator")
    assert req["status"] == "failed" and req["certificate"] is None


@pytest.fixture(scope="module")
def two_approvers(world: World, settings: Any) -> Iterator[str]:
    """The same CA and database served with a profile needing two distinct approvers."""
    assert world.env.services is not None
    svc = world.env.services
    profiles = dict(svc.profiles)
    profiles["eseal"] = dataclasses.replace(profiles["eseal"], approvals_required=2)
    app = create_app(settings, Services(settings, world.env.store, svc.keys, profiles))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_two_approvals_required(world: World, two_approvers: str) -> None:
    env = world.env
    status, req = _call(two_approvers, "POST", "/api/v1/seal-requests", env.school,
                        {"csr": _csr(ec.generate_private_key(ec.SECP256R1()))})
    assert status == 201 and req["approvals_required"] == 2, req
    path = f"/api/v1/seal-requests/{req['id']}/approve"
    status, first = _call(two_approvers, "POST", path, env.officer_a)
    assert status == 202 and first["status"] == "pending" and first["certificate"] is None
    assert len(first["approvals"]) == 1
    status, problem = _call(two_approvers, "POST", path, env.officer_a)  # counts once
    assert status == 403 and "already approved" in problem["detail"]
    status, problem = _call(two_approvers, "POST", path, env.school)  # never the requester
    assert status == 403
    status, done = _call(two_approvers, "POST", path, world.officer_a2)
    assert status == 200 and done["status"] == "issued", done
    assert len(set(done["approved_by"])) == 2
    assert done["requested_by"]["client_id"] not in done["approved_by"]


# -- jurisdiction --------------------------------------------------------------------------------

@pytest.mark.parametrize(("code", "why"), [
    (_school_code(founder="3"), "private"),
    (_school_code(founder="1"), "national"),
    (_school_code(prefecture="01"), "prefecture 01"),
])
def test_board_registers_only_public_schools_of_its_prefecture(world: World, code: str,
                                                              why: str) -> None:
    status, problem = world.call("POST", "/api/v1/organizations", "own_officer",
                                 {"kind": "school", "name_ja": "他の学校", "school_code": code})
    assert status == 422 and why in problem["detail"], problem


def test_pending_school_until_confirmed(world: World) -> None:
    env = world.env
    school_id = world.pending_school()
    with env.store.session() as s, pytest.raises(InvalidRequest, match="pending"):
        clients.create_client(s, organization_id=school_id, role="school-system", name="x",
                              actor="test")
    status, _ = world.call("POST", f"/api/v1/organizations/{school_id}/confirm", "own_officer")
    assert status == 403  # a board cannot confirm its own registration
    status, org = world.call("POST", f"/api/v1/organizations/{school_id}/confirm", "operator")
    assert status == 200 and org["status"] == "active"
    status, _ = world.call("POST", f"/api/v1/organizations/{school_id}/confirm", "operator")
    assert status == 409
    status, req = world.call("POST", "/api/v1/seal-requests", "own_officer",
                             {"organization_id": school_id, "key": {"hosted": True}})
    assert status == 201, req
    # A closed school gets no seal either.
    with env.store.session() as s:
        closed = registry.add_school(s, name_ja="閉校", school_code=_school_code(),
                                     board_id=env.board_a, actor="test")
        registry.close_organization(s, closed.id, actor="test")
        closed_id = closed.id
    status, problem = world.call("POST", "/api/v1/seal-requests", "own_officer",
                                 {"organization_id": closed_id, "key": {"hosted": True}})
    assert status == 422 and "closed" in problem["detail"]


def test_operator_registers_national_schools_active(world: World) -> None:
    with world.env.store.session() as s:
        op = s.scalars(select(Organization).where(Organization.kind == "operator")).one()
        op_id = op.id
    status, org = world.call("POST", "/api/v1/organizations", "operator",
                             {"kind": "school", "name_ja": "国立大学附属中学校",
                              "school_code": _school_code(founder="1"), "board_id": op_id})
    assert status == 201 and org["status"] == "active", org


def test_school_list_import_confirms_matching_pending_schools(world: World, settings: Any,
                                                              tmp_path: Path) -> None:
    env = world.env
    listed_code, other_code, later_code = _school_code(), _school_code(), _school_code()
    closed_code = _school_code()
    ids = {}
    names = ((listed_code, "新宿区立 落合中学校"), (other_code, "新宿区立名前違い中学校"))
    for code, name in names:
        status, org = world.call("POST", "/api/v1/organizations", "own_officer",
                                 {"kind": "school", "name_ja": name, "school_code": code})
        assert status == 201 and org["status"] == "pending"
        ids[code] = org["id"]
    csv = ("学校コード,学校種,都道府県番号,設置区分,本分校,学校名,学校所在地,郵便番号,"
           "属性情報設定年月日,属性情報廃止年月日\n"
           f"{listed_code},C1,13,2,1,新宿区立　落合中学校,東京都新宿区,1610000,20200401,\n"
           f"{other_code},C1,13,2,1,新宿区立別の中学校,東京都新宿区,1610000,20200401,\n"
           f"{later_code},C1,13,2,1,新宿区立西中学校,東京都新宿区,1610000,20200401,\n"
           f"{closed_code},C1,13,2,1,新宿区立閉校中学校,東京都新宿区,1610000,20000401,20200331\n")
    bad = tmp_path / "bad.csv"
    bad.write_text(csv.replace(f"{later_code},C1,13", f"{later_code},C1,14"), encoding="utf-8")
    good = tmp_path / "schools.csv"
    good.write_bytes(csv.encode("cp932"))  # MEXT publishes Shift_JIS
    result = CliRunner().invoke(main, ["--home", str(settings.home), "registry", "import",
                                       str(bad)], env={"KAKUIN_DATABASE_URL": _db_url(env)})
    assert result.exit_code == 1 and "line 4" in result.output, result.output
    result = CliRunner().invoke(main, ["--home", str(settings.home), "registry", "import",
                                       str(good)], env={"KAKUIN_DATABASE_URL": _db_url(env)})
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"rows": 4, "closed": 1, "confirmed": [ids[listed_code]]}
    with env.store.session() as s:
        assert s.get(Organization, ids[listed_code]).status == "active"  # type: ignore[union-attr]
        assert s.get(Organization, ids[other_code]).status == "pending"  # type: ignore[union-attr]
    # A school already on the list is active as soon as its board registers it.
    status, org = world.call("POST", "/api/v1/organizations", "own_officer",
                             {"kind": "school", "name_ja": "新宿区立西中学校",
                              "school_code": later_code})
    assert status == 201 and org["status"] == "active", org
    status, org = world.call("POST", "/api/v1/organizations", "own_officer",
                             {"kind": "school", "name_ja": "新宿区立閉校中学校",
                              "school_code": closed_code})
    assert status == 201 and org["status"] == "pending", org  # closed on the list: no match


def _db_url(env: Env) -> str:
    return env.store.engine.url.render_as_string(hide_password=False)


# -- auditors ------------------------------------------------------------------------------------

def test_auditors_read_their_jurisdiction_only(world: World) -> None:
    env = world.env
    req = world.csr_request()
    status, _ = world.call("POST", "/api/v1/seal-requests", "other_officer",
                                     {"key": {"hosted": True}})
    assert status == 422  # board B has no corporate number; read B's organization instead
    for who, path, expected in (
        ("own_auditor", f"/api/v1/organizations/{env.board_a}", 200),
        ("own_auditor", f"/api/v1/organizations/{world.school2}", 200),
        ("own_auditor", f"/api/v1/seal-requests/{req['id']}", 200),
        ("own_auditor", f"/api/v1/organizations/{world.board_b}", 403),
        ("other_auditor", f"/api/v1/organizations/{env.board_a}", 403),
        ("other_auditor", f"/api/v1/seal-requests/{req['id']}", 403),
        ("other_auditor", f"/api/v1/organizations/{world.board_b}", 200),
        ("op_auditor", f"/api/v1/organizations/{world.board_b}", 200),
        ("op_auditor", f"/api/v1/organizations/{env.board_a}/certificates", 200),
    ):
        status, _ = world.call("GET", path, who)
        assert status == expected, (who, path)
    with env.store.session() as s:
        row = s.get(SealRequest, req["id"])
        assert row is not None and row.status == "pending"


def test_the_same_person_through_two_clients_is_still_the_requester(world: World) -> None:
    """Dual control compares people too: a Principal's ``subject`` (an OIDC ``sub`` once
    console login exists) that requested may not approve through another client."""
    env = world.env
    assert env.services is not None
    svc = env.services.ca
    with env.store.session() as s:
        school_client, _ = clients.create_client(s, organization_id=env.school_id,
                                                 role="school-system", name="console",
                                                 actor="test")
        officer_client, _ = clients.create_client(s, organization_id=env.board_a,
                                                  role="board-officer", name="console",
                                                  actor="test")
        ids = school_client.id, officer_client.id
    requester = clients.Principal(ids[0], env.school_id, "school-system", "console",
                                  method="oidc", subject="teacher-1@example.jp")
    approver = clients.Principal(ids[1], env.board_a, "board-officer", "console",
                                 method="oidc", subject="teacher-1@example.jp")
    row = enrollment.submit(svc.store, svc.keys, svc.profiles, requester, enrollment.NewRequest(
        organization_id=env.school_id, csr=_csr(ec.generate_private_key(ec.SECP256R1())).encode()))
    assert row.requested_by_subject == "teacher-1@example.jp"
    with pytest.raises(Forbidden, match="dual control"):
        enrollment.approve(svc.store, svc.keys, svc.authority(), svc.profiles, approver, row.id)
    other = dataclasses.replace(approver, subject="officer-2@example.jp")
    done, cert = enrollment.approve(svc.store, svc.keys, svc.authority(), svc.profiles, other,
                                    row.id)
    assert done.status == "issued" and cert is not None
    assert [a.subject for a in enrollment.approvals_of(svc.store, row.id)] == [
        "officer-2@example.jp"]
