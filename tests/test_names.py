"""Clean organization names (ca/names.py): hostile names refused over real HTTP with 422 naming
the field and the rule, duplicates refused within a board and among boards."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select

from ca import clients, names, registry
from ca.eseal import EsealError, eseal_subject
from ca.models import AuditEntry, Organization
from ca.store import Store
from tests.cafixtures import Env, _call

HOSTILE = [
    ("nul", "新宿区立\x00小学校", "control"),
    ("esc", "\x1b[31m新宿区立小学校", "control"),
    ("bel", "新宿区立小学校\x07", "control"),
    ("c1", "新宿区立\x85小学校", "control"),
    ("rlo", "新宿区立\u202e校学小", "bidi"),
    ("isolate", "新宿区立\u2067小学校", "bidi"),
    ("lrm", "新宿区立\u200e小学校", "bidi"),
    ("zwsp", "新宿区立\u200b小学校", "default-ignorable"),
    ("bom", "\ufeff新宿区立小学校", "default-ignorable"),
    ("ivs", "葛\U000e0100飾区立小学校", "default-ignorable"),
    ("hangul-filler", "新宿区立\u3164小学校", "default-ignorable"),
    ("nbsp", "新宿区立\u00a0小学校", "separator"),
    ("line-separator", "新宿区立\u2028小学校", "separator"),
    ("private-use", "新宿区立\ue000小学校", "private-use"),
    ("unassigned", "新宿区立\U0003ffff小学校", "unassigned"),
    ("non-nfc", "新宿区立か\u3099っこう", "nfc"),  # か + combining dakuten: NFC is が
    ("cjk-compat", "\ufa19宮小学校", "nfc"),  # 神 U+FA19: NFC would change the character
    ("65-chars", "あ" * 65, "length"),
    ("bytes", "𠮷" * 49, "bytes"),  # 49 characters, 196 bytes
    ("blank", " \u3000 ", "empty"),
]


def _post_raw(base: str, token: str, raw: bytes) -> tuple[int, str, Any]:
    req = urllib.request.Request(
        base + "/api/v1/organizations",
        data=raw,
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.headers["Content-Type"], json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], json.loads(err.read())


def _count(env: Env) -> tuple[int, int]:
    with env.store.session() as s:
        orgs = s.scalar(select(func.count()).select_from(Organization)) or 0
        entries = s.scalar(select(func.count()).select_from(AuditEntry)) or 0
    return orgs, entries


def _assert_refused(status: int, ctype: str, body: Any, field: str, rule: str) -> None:
    assert (status, ctype) == (422, "application/problem+json"), (status, body)
    assert body["type"] == "urn:kakuin:problem:ca/invalid-name", body
    assert (body["field"], body["rule"]) == (field, rule), body
    assert field in body["detail"]


# --- unit: the rules ---------------------------------------------------------------------


@pytest.mark.parametrize(("value", "rule"), [(v, r) for _, v, r in HOSTILE],
                         ids=[i for i, _, _ in HOSTILE])  # fmt: skip
def test_clean_refuses(value: str, rule: str) -> None:
    with pytest.raises(names.NameRejected) as caught:
        names.clean(value, "name_ja")
    assert (caught.value.field, caught.value.rule) == ("name_ja", rule)
    assert caught.value.status == 422
    for ch in value:  # the detail names code points, never echoes what it refused
        if names._rule_for(ch) is not None:
            assert ch not in caught.value.detail


@pytest.mark.parametrize(
    "value",
    [
        "新宿区立第一中学校",
        "学校法人　山田学園",  # ideographic space inside
        "Shinjuku No.1 JHS",
        "𠮷野町立小学校",  # a supplementary-plane kanji
        "あ" * 64,  # 64 characters, 192 bytes: the limit
        "神宮小学校",  # U+795E, the NFC form of U+FA19
    ],
)
def test_clean_accepts(value: str) -> None:
    assert names.clean(f" {value}\u3000", "name_ja") == value


def test_clean_refuses_lone_surrogate_and_non_strings() -> None:
    # (a lone surrogate cannot sit in the HOSTILE table: pytest's ids would not encode)
    with pytest.raises(names.NameRejected) as caught:
        names.clean(json.loads('"\\ud800新宿"'), "name_en")
    assert (caught.value.field, caught.value.rule) == ("name_en", "surrogate")
    with pytest.raises(names.NameRejected) as caught:
        names.clean(42, "name_ja")
    assert caught.value.rule == "type"


@pytest.mark.skipif(shutil.which("perl") is None, reason="perl is the independent oracle")
def test_default_ignorable_table_matches_perl() -> None:
    """Our Default_Ignorable_Code_Point table against perl's Unicode database."""
    script = (
        "for my $c (0..0x10FFFF) { next if $c >= 0xD800 && $c <= 0xDFFF;"
        ' print "$c\\n" if chr($c) =~ /\\p{Default_Ignorable_Code_Point}/ }'
    )
    out = subprocess.run(["perl", "-e", script], capture_output=True, text=True, check=True)
    theirs = {int(line) for line in out.stdout.split()}
    ours = {c for c in range(0x110000) if names.is_default_ignorable(c)}
    assert len(theirs) > 4000
    assert ours == theirs, (sorted(ours - theirs)[:10], sorted(theirs - ours)[:10])


def test_comparison_key() -> None:
    key = names.comparison_key
    assert key("Ａ小学校") == key("a小学校") == key("A 小学校") == key("a\u3000小学校")
    assert key("ｼﾝｼﾞｭｸ") == key("シンジュク")  # half-width katakana
    assert key("第一小学校") != key("第二小学校")


# --- over real HTTP --------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "value", "rule"), HOSTILE, ids=[i for i, _, _ in HOSTILE])
def test_hostile_school_names_refused_over_http(env: Env, case: str, value: str, rule: str) -> None:
    before = _count(env)
    for field in ("name_ja", "name_en"):
        body = {"kind": "school", "school_code": "C113210000900", "name_ja": "新宿区立第九小学校"}
        body[field] = value
        status, problem = _call(env.url, "POST", "/api/v1/organizations", env.officer_a, body)
        _assert_refused(status, "application/problem+json", problem, field, rule)
    assert _count(env) == before  # nothing written, not even an audit entry


@pytest.mark.parametrize("field", ["name_ja", "name_en"])
def test_lone_surrogate_as_raw_json_escape_is_422(env: Env, field: str) -> None:
    """ "\\ud800" is valid JSON syntax and becomes a lone surrogate: once an HTTP 500."""
    other = "name_en" if field == "name_ja" else "name_ja"
    raw = (
        '{"kind": "school", "school_code": "C113210000910", "' + field + '": "\\ud800 school",'
        ' "' + other + '": "Dai-91"}'
    ).encode()
    # The strict JSON reader (ca/strictjson.py, RFC 7493 I-JSON) refuses the body before the
    # registry sees it: 400 bad-json naming the surrogate; ca/names.py's rule "surrogate"
    # still guards every other way in (CLI, school list).
    status, ctype, problem = _post_raw(env.url, env.officer_a, raw)
    _assert_bad_json_surrogate(status, ctype, problem)
    # an operator registering a board meets the same rule
    raw = (
        '{"kind": "board", "local_gov_code": "132012", "name_ja": "八王子市\\udfff教育委員会"}'
    ).encode()
    status, ctype, problem = _post_raw(env.url, env.operator, raw)
    _assert_bad_json_surrogate(status, ctype, problem)


def _assert_bad_json_surrogate(status: int, ctype: str, problem: dict[str, Any]) -> None:
    assert (status, ctype) == (400, "application/problem+json"), (status, problem)
    assert problem["type"] == "urn:kakuin:problem:api/bad-json"
    assert "surrogate" in problem["detail"]


def test_hostile_board_name_refused_over_http(env: Env) -> None:
    for value, rule in [("八王子市\u202e教育委員会", "bidi"), ("八" * 65, "length")]:
        status, problem = _call(
            env.url,
            "POST",
            "/api/v1/organizations",
            env.operator,
            {"kind": "board", "local_gov_code": "132012", "name_ja": value},
        )
        _assert_refused(status, "application/problem+json", problem, "name_ja", rule)


def test_duplicate_names_refused_within_a_board(env: Env) -> None:
    before = _count(env)
    # env's school is 新宿区立第一中学校 / Shinjuku No.1 JHS, under board A
    for body, field in [
        ({"name_ja": "新宿区立第一中学校"}, "name_ja"),
        ({"name_ja": "新宿区立 第一中学校　"}, "name_ja"),  # spaces do not make it another
        ({"name_ja": "新宿区立第五中学校", "name_en": "SHINJUKU NO.1 JHS"}, "name_en"),
        ({"name_ja": "Ｓｈｉｎｊｕｋｕ　Ｎｏ．１　ＪＨＳ"}, "name_ja"),  # full-width = its CN
    ]:
        status, problem = _call(
            env.url,
            "POST",
            "/api/v1/organizations",
            env.officer_a,
            {"kind": "school", "school_code": "C113210000050", **body},
        )
        _assert_refused(status, "application/problem+json", problem, field, "unique")
        assert str(env.school_id) in problem["detail"]
    assert _count(env) == before


def test_same_school_name_under_another_board_is_fine(env: Env) -> None:
    # Sapporo's board (officer_b) may run its own 第一中学校: names are unique per board.
    status, school = _call(
        env.url,
        "POST",
        "/api/v1/organizations",
        env.officer_b,
        {"kind": "school", "school_code": "C101210000010", "name_ja": "新宿区立第一中学校"},
    )
    assert status == 201, school


def test_duplicate_board_names_refused(env: Env) -> None:
    for name in ("新宿区教育委員会", "札幌市 教育委員会", "kakuin 運用者"):
        status, problem = _call(
            env.url,
            "POST",
            "/api/v1/organizations",
            env.operator,
            {"kind": "board", "local_gov_code": "132012", "name_ja": name},
        )
        _assert_refused(status, "application/problem+json", problem, "name_ja", "unique")


# --- registry: moves and closures ---------------------------------------------------------------


def test_move_into_a_board_with_that_name_refused_and_closed_names_free(store: Store) -> None:
    with store.session() as s:
        a = registry.add_board(s, name_ja="新宿区教育委員会", local_gov_code="131041", actor="t")
        b = registry.add_board(s, name_ja="渋谷区教育委員会", local_gov_code="131130", actor="t")
        first = registry.add_school(
            s, name_ja="区立第一小学校", school_code="B113210000010", board_id=a.id, actor="t"
        )
        registry.add_school(
            s, name_ja="区立第一小学校", school_code="B113210000020", board_id=b.id, actor="t"
        )
        ids = a.id, b.id, first.id
    a_id, b_id, first_id = ids
    with pytest.raises(names.NameRejected) as caught, store.session() as s:
        registry.move_school(s, first_id, b_id, actor="t")
    assert caught.value.rule == "unique"
    with store.session() as s:
        assert registry.get(s, first_id).parent_id == a_id  # the refused move left no trace
        registry.close_organization(s, first_id, actor="t", reason="統廃合")
        again = registry.add_school(
            s, name_ja="区立第一小学校", school_code="B113210000030", board_id=a_id, actor="t"
        )
        assert again.status == "active"


def test_cn_that_a_certificate_cannot_carry_is_refused(env: Env) -> None:
    """CN = name_en or else name_ja, at most 64 bytes of UTF-8 (cryptography's limit): once a
    500 at approval, now a 422 at registration naming the field."""
    long_ja = "横浜市立横浜サイエンスフロンティア高等学校附属中学校"  # 26 characters, 78 bytes
    for extra, field in [({}, "name_ja"), ({"name_en": "é" * 33}, "name_en")]:
        status, problem = _call(
            env.url,
            "POST",
            "/api/v1/organizations",
            env.officer_a,
            {"kind": "school", "school_code": "C113210000080", "name_ja": long_ja, **extra},
        )
        _assert_refused(status, "application/problem+json", problem, field, "common-name")
    with pytest.raises(EsealError, match="CN"):
        eseal_subject(name_ja=long_ja, organization_identifier=None)


@pytest.mark.parametrize(
    ("code", "name_ja", "name_en"),
    [
        ("C113210000060", "新宿区立" + "あ" * 60, "Shinjuku " + "A" * 55),
        ("C113210000070", "𠮷" * 48, "Yoshino"),
        ("C113210000090", "𠮷" * 16, None),  # CN = name_ja, 64 bytes
    ],
    ids=["64-chars-192-bytes", "48-supplementary-192-bytes", "cn-64-bytes"],
)
def test_longest_names_fit_the_certificate(
    env: Env, code: str, name_ja: str, name_en: str | None
) -> None:
    """Names at the limits are issued: pre-issuance pkilint (ETSI legal person) passes with
    them as O and CN, and the certificate carries them unchanged."""
    assert len(name_ja) <= names.MAX_CHARS and len(name_ja.encode()) <= names.MAX_BYTES
    with env.store.session() as s:
        school = registry.add_school(
            s, name_ja=name_ja, name_en=name_en, school_code=code, board_id=env.board_a,
            actor="test",
        )  # fmt: skip
        _, token = clients.create_client(
            s, organization_id=school.id, role="school-system", name="s", actor="test"
        )
    _, req = _call(env.url, "POST", "/api/v1/seal-requests", token, {"key": {"hosted": True}})
    status, done = _call(
        env.url, "POST", f"/api/v1/seal-requests/{req['id']}/approve", env.officer_a
    )
    assert status == 200, done
    serial = done["certificate"]["serial"]
    status, der = _call(
        env.url, "GET", f"/api/v1/certificates/{serial}", None,
        headers={"Accept": "application/pkix-cert"},
    )  # fmt: skip
    cert = x509.load_der_x509_certificate(der)
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == name_ja
    common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert common == (name_en or name_ja)
