from __future__ import annotations

import json
import random

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ca import audit, registry
from ca.errors import Conflict, InvalidRequest, NotFound
from ca.models import AuditEntry, Organization, OrganizationEvent
from ca.store import Store

ACTOR = "operator:test"

# Real identifiers, so the algorithms are anchored to the world and not only to themselves.
LOCAL_GOV_CODES = {
    "130001": "東京都",
    "131041": "新宿区",
    "011002": "札幌市",
    "122068": "木更津市",
}
CORPORATE_NUMBERS = {
    "7000012050002": "国税庁",
    "8000020130001": "東京都",  # local governments: "00002" + "0" + local government code
}
PUBLIC_TOKYO = "B113210000010"  # B1 小学校, 13 東京都, 2 公立
PRIVATE_CHIBA = "F112310102342"  # F1 大学, 12 千葉県, 3 私立


def corrupt(digit: str) -> str:
    """Another digit, never swapping 0 and 9 (which the corporate check digit cannot see)."""
    d = int(digit)
    return str(d + 1 if d < 9 else 8)


def with_local_gov_check(first_five: str) -> str:
    return first_five + str(registry.local_gov_check_digit(first_five))


def with_corporate_check(base: str) -> str:
    return str(registry.corporate_number_check_digit(base)) + base


def local_gov_corporate_number(local_gov_code: str) -> str:
    return with_corporate_check("000020" + local_gov_code)


# --- validators -------------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(LOCAL_GOV_CODES))
def test_local_gov_code_real_examples(code: str) -> None:
    assert registry.validate_local_gov_code(code) == code


@pytest.mark.parametrize("code", sorted(LOCAL_GOV_CODES))
def test_local_gov_code_other_check_digits_rejected(code: str) -> None:
    for digit in "0123456789":
        if digit != code[5]:
            with pytest.raises(InvalidRequest, match="check digit"):
                registry.validate_local_gov_code(code[:5] + digit)


@pytest.mark.parametrize("code", ["130011", "131141", "021002", "122069"])
def test_local_gov_code_corrupted_digit_rejected(code: str) -> None:
    with pytest.raises(InvalidRequest, match=r"check digit .*expected"):
        registry.validate_local_gov_code(code)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("13000", "must be 6 digits, got 5"),
        ("1300011", "must be 6 digits, got 7"),
        ("", "must be 6 digits, got 0"),
        ("13000a", "only the digits 0-9"),
        ("１３０００１", "only the digits 0-9"),  # full-width digits pass str.isdigit
        (" 30001", "only the digits 0-9"),
        (130001, "must be a string"),
        (None, "must be a string"),
    ],
)
def test_local_gov_code_format_rejected(value: object, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as exc:
        registry.validate_local_gov_code(value)
    assert "local_gov_code" in exc.value.detail


@pytest.mark.parametrize("prefecture", ["00", "48", "99"])
def test_local_gov_code_bad_prefecture(prefecture: str) -> None:
    code = with_local_gov_check(prefecture + "100")  # check digit right, prefecture wrong
    with pytest.raises(InvalidRequest, match=r"local_gov_code \(first two digits.*01-47"):
        registry.validate_local_gov_code(code)


@pytest.mark.parametrize("number", sorted(CORPORATE_NUMBERS))
def test_corporate_number_real_examples(number: str) -> None:
    assert registry.validate_corporate_number(number) == number


def test_corporate_number_computed_and_corrupted() -> None:
    rng = random.Random(20240401)
    for _ in range(50):
        number = with_corporate_check(f"{rng.randrange(10**12):012d}")
        assert registry.validate_corporate_number(number) == number
        for i in range(13):
            bad = number[:i] + corrupt(number[i]) + number[i + 1 :]
            with pytest.raises(InvalidRequest, match="check digit"):
                registry.validate_corporate_number(bad)


def test_corporate_number_check_digit_is_first_and_never_zero() -> None:
    assert registry.corporate_number_check_digit("000012050002") == 7
    for base in ("000000000000", "999999999999", "000000000009"):
        assert 1 <= registry.corporate_number_check_digit(base) <= 9
    with pytest.raises(InvalidRequest, match=r"check digit 0 \(the first digit\), expected 7"):
        registry.validate_corporate_number("0000012050002")


def test_corporate_number_cannot_see_a_zero_nine_swap() -> None:
    """Documented weakness of the algorithm (weights 1 and 2 mod 9), not of our code."""
    assert registry.validate_corporate_number("7000012050002")
    assert registry.validate_corporate_number("7900012050002")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("700001205000", "must be 13 digits, got 12"),
        ("70000120500021", "must be 13 digits, got 14"),
        ("700001205000X", "only the digits 0-9"),
        (7000012050002, "must be a string"),
    ],
)
def test_corporate_number_format_rejected(value: object, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        registry.validate_corporate_number(value)


def test_school_code_parts() -> None:
    assert registry.parse_school_code(PUBLIC_TOKYO) == registry.SchoolCode(
        code=PUBLIC_TOKYO,
        school_type="B1",
        school_type_ja="小学校",
        prefecture="13",
        founder="public",
        number="1000001",
        check="0",
    )
    parsed = registry.parse_school_code(PRIVATE_CHIBA)
    assert (parsed.school_type_ja, parsed.prefecture, parsed.founder) == ("大学", "12", "private")
    assert (parsed.number, parsed.check) == ("1010234", "2")
    assert registry.parse_school_code("G101110000001").founder == "national"


@pytest.mark.parametrize("school_type", sorted(registry.SCHOOL_TYPES))
def test_school_code_every_type(school_type: str) -> None:
    parsed = registry.parse_school_code(school_type + "01300000010")
    assert parsed.school_type_ja == registry.SCHOOL_TYPES[school_type]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("B11321000001", "must be 13 characters, got 12"),
        ("B1132100000100", "must be 13 characters, got 14"),
        ("Z113210000010", "unknown school type 'Z1'"),
        ("b113210000010", "unknown school type 'b1'"),
        ("B3132100000100"[:13], "unknown school type 'B3'"),
        ("B11321000001X", "11 remaining characters must be digits"),
        ("B1AB210000010", "11 remaining characters must be digits"),
        ("B1１３210000010"[:13], "11 remaining characters must be digits"),
        ("B100210000010", r"prefecture.*01-47, got '00'"),
        ("B148210000010", r"prefecture.*01-47, got '48'"),
        ("B113010000010", "founder type '0'"),
        ("B113410000010", "founder type '4'"),
        (None, "must be a string"),
    ],
)
def test_school_code_rejected(value: object, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as exc:
        registry.parse_school_code(value)
    assert "school_code" in exc.value.detail


@pytest.mark.parametrize("code", ["01", "13", "47"])
def test_prefecture_valid(code: str) -> None:
    assert registry.validate_prefecture(code) == code


@pytest.mark.parametrize("code", ["00", "48", "1", "013", "ab", "", 13])
def test_prefecture_rejected(code: object) -> None:
    with pytest.raises(InvalidRequest, match="prefecture"):
        registry.validate_prefecture(code)


# --- registry flows ---------------------------------------------------------------------


def count(session: Session, model: type[object]) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0


def ids(orgs: list[Organization]) -> list[int]:
    return [o.id for o in orgs]


def actions(session: Session) -> list[str]:
    return [e.action for e in audit.entries(session, limit=1000)]


def events(session: Session, org_id: int) -> list[tuple[str, dict[str, object]]]:
    return [(e.event, json.loads(e.detail)) for e in registry.history(session, org_id)]


def add_shinjuku(session: Session) -> Organization:
    return registry.add_board(
        session,
        name_ja="新宿区教育委員会",
        name_en="Shinjuku City Board of Education",
        local_gov_code="131041",
        corporate_number=local_gov_corporate_number("131041"),
        actor=ACTOR,
        request_id="req-1",
    )


def add_tokyo(session: Session) -> Organization:
    return registry.add_board(
        session, name_ja="東京都教育委員会", local_gov_code="130001", actor=ACTOR
    )


def add_sapporo(session: Session) -> Organization:
    return registry.add_board(
        session, name_ja="札幌市教育委員会", local_gov_code="011002", actor=ACTOR
    )


def add_school(session: Session, board: Organization, code: str = PUBLIC_TOKYO) -> Organization:
    return registry.add_school(
        session, name_ja=f"学校{code}", school_code=code, board_id=board.id, actor=ACTOR
    )


def test_add_board_and_schools(store: Store) -> None:
    with store.session() as session:
        board = add_shinjuku(session)
        first = add_school(session, board)
        second = add_school(session, board, "C113210000020")
        ids = board.id, first.id, second.id
    with store.session() as session:
        board, first, second = (registry.get(session, i) for i in ids)
        assert (board.kind, board.prefecture, board.status) == ("board", "13", "active")
        assert board.name_en == "Shinjuku City Board of Education"
        assert (first.kind, first.prefecture, first.parent_id) == ("school", "13", board.id)
        assert registry.list_schools(session, board.id) == [first, second]
        assert registry.board_of(session, first) == board
        assert registry.board_of(session, board) is None
        assert events(session, first.id) == [
            (
                "created",
                {
                    "kind": "school",
                    "name_ja": f"学校{PUBLIC_TOKYO}",
                    "parent_id": board.id,
                    "prefecture": "13",
                    "school_code": PUBLIC_TOKYO,
                },
            )
        ]
        assert actions(session) == ["organization.created"] * 3
        entry = audit.entries(session)[0]
        assert (entry.actor, entry.organization_id, entry.request_id) == (
            ACTOR,
            board.id,
            "req-1",
        )
        assert audit.verify(session).ok


def test_duplicate_school_code_conflicts_and_writes_nothing(store: Store) -> None:
    with store.session() as session:
        board = add_shinjuku(session)
        add_school(session, board)
    with store.session() as session:
        before = [count(session, m) for m in (Organization, OrganizationEvent, AuditEntry)]
    with pytest.raises(Conflict, match=f"school code {PUBLIC_TOKYO} is already registered"):
        with store.session() as session:
            registry.add_board(
                session, name_ja="東京都教育委員会", local_gov_code="130001", actor=ACTOR
            )
            add_school(session, board)
    with store.session() as session:
        after = [count(session, m) for m in (Organization, OrganizationEvent, AuditEntry)]
        assert after == before  # the board added in the failed unit of work is gone too
        assert audit.verify(session).ok


def test_duplicate_active_board_conflicts_until_closed(store: Store) -> None:
    with store.session() as session:
        board_id = add_tokyo(session).id
    with pytest.raises(Conflict, match="130001 already has an active board"):
        with store.session() as session:
            add_tokyo(session)
    with store.session() as session:
        registry.close_organization(session, board_id, actor=ACTOR, reason="再編")
        assert add_tokyo(session).id != board_id


def test_duplicate_corporate_number_conflicts(store: Store) -> None:
    with store.session() as session:
        add_shinjuku(session)
    with pytest.raises(Conflict, match=r"corporate number .* already registered"):
        with store.session() as session:
            registry.add_school_corporation(
                session,
                name_ja="学校法人",
                corporate_number=local_gov_corporate_number("131041"),
                prefecture="13",
                actor=ACTOR,
            )


def test_invalid_input_is_rejected_before_writing(store: Store) -> None:
    with store.session() as session:
        with pytest.raises(InvalidRequest, match="local_gov_code"):
            registry.add_board(session, name_ja="x", local_gov_code="130002", actor=ACTOR)
        with pytest.raises(InvalidRequest, match="name_ja must be a non-empty"):
            registry.add_board(session, name_ja="  ", local_gov_code="130001", actor=ACTOR)
        with pytest.raises(InvalidRequest, match="actor"):
            registry.add_board(session, name_ja="x", local_gov_code="130001", actor="")
        with pytest.raises(InvalidRequest, match="corporate_number"):
            registry.add_board(
                session,
                name_ja="x",
                local_gov_code="130001",
                corporate_number="1000020130001",
                actor=ACTOR,
            )
        assert count(session, Organization) == 0


def test_school_parent_rules(store: Store) -> None:
    with store.session() as session:
        sapporo = add_sapporo(session)
        with pytest.raises(InvalidRequest, match=r"prefecture 13 but board .* prefecture 01"):
            add_school(session, sapporo)
        corporation = registry.add_school_corporation(
            session,
            name_ja="学校法人千葉学園",
            corporate_number=with_corporate_check("123456789012"),
            prefecture="12",
            actor=ACTOR,
        )
        private = add_school(session, corporation, PRIVATE_CHIBA)
        assert (private.parent_id, private.prefecture) == (corporation.id, "12")
        operator = registry.add_operator(session, name_ja="運営者", actor=ACTOR)
        with pytest.raises(InvalidRequest, match=r"public school .* \(kind operator\)"):
            add_school(session, operator)
        national = add_school(session, operator, "B113110000010")
        assert registry.board_of(session, national) == operator
        with pytest.raises(
            InvalidRequest,
            match=r"\(kind school\); allowed kinds: board, school_corporation$",
        ):
            add_school(session, national, "B113210000099")
        with pytest.raises(NotFound, match="organization 999 not found"):
            registry.add_school(
                session, name_ja="x", school_code=PUBLIC_TOKYO, board_id=999, actor=ACTOR
            )


def test_move_keeps_history(store: Store) -> None:
    with store.session() as session:
        shinjuku, tokyo, sapporo = add_shinjuku(session), add_tokyo(session), add_sapporo(session)
        school = add_school(session, shinjuku)
        registry.move_school(session, school.id, tokyo.id, actor=ACTOR, reason="都立化")
    with store.session() as session:
        school = registry.get(session, school.id)
        assert school.parent_id == tokyo.id
        assert registry.list_schools(session, shinjuku.id) == []
        assert registry.list_schools(session, tokyo.id) == [school]
        assert [e for e, _ in events(session, school.id)] == ["created", "moved"]
        assert events(session, school.id)[1][1] == {
            "from": shinjuku.id,
            "to": tokyo.id,
            "reason": "都立化",
        }
        with pytest.raises(Conflict, match="already run by"):
            registry.move_school(session, school.id, tokyo.id, actor=ACTOR)
        with pytest.raises(InvalidRequest, match="prefecture"):
            registry.move_school(session, school.id, sapporo.id, actor=ACTOR)
        with pytest.raises(InvalidRequest, match="is of kind board, expected school"):
            registry.move_school(session, tokyo.id, shinjuku.id, actor=ACTOR)
        assert actions(session)[-1] == "organization.moved"
        assert audit.verify(session).ok


def test_merge(store: Store) -> None:
    with store.session() as session:
        board = add_shinjuku(session)
        absorbed = add_school(session, board)
        into = add_school(session, board, "B113210000020")
        other = add_school(session, board, "B113210000030")
        merged = registry.merge_schools(session, absorbed.id, into.id, actor=ACTOR)
        assert merged is absorbed
    with store.session() as session:
        assert registry.get(session, absorbed.id).status == "merged"
        assert registry.get(session, into.id).status == "active"
        assert events(session, absorbed.id)[-1] == ("merged_into", {"into": into.id})
        assert events(session, into.id)[-1] == ("absorbed", {"absorbed": absorbed.id})
        assert ids(registry.list_schools(session, board.id)) == [into.id, other.id]
        everything = registry.list_schools(session, board.id, include_inactive=True)
        assert ids(everything) == [absorbed.id, into.id, other.id]
        with pytest.raises(Conflict, match="is merged"):
            registry.merge_schools(session, absorbed.id, other.id, actor=ACTOR)
        with pytest.raises(Conflict, match="is merged"):
            registry.merge_schools(session, other.id, absorbed.id, actor=ACTOR)
        with pytest.raises(Conflict, match="is merged"):
            registry.close_organization(session, absorbed.id, actor=ACTOR)
        with pytest.raises(Conflict, match="is merged"):
            registry.move_school(session, absorbed.id, board.id, actor=ACTOR)
        with pytest.raises(InvalidRequest, match="into itself"):
            registry.merge_schools(session, into.id, into.id, actor=ACTOR)
        with pytest.raises(InvalidRequest, match="is of kind board"):
            registry.merge_schools(session, into.id, board.id, actor=ACTOR)
        assert actions(session)[-1] == "organization.merged"


def test_close(store: Store) -> None:
    with store.session() as session:
        board = add_shinjuku(session)
        school = add_school(session, board)
        with pytest.raises(Conflict, match="still runs 1 active school"):
            registry.close_organization(session, board.id, actor=ACTOR)
        registry.close_organization(session, school.id, actor=ACTOR, reason="廃校")
    with store.session() as session:
        assert registry.get(session, school.id).status == "closed"
        assert events(session, school.id)[-1] == ("closed", {"reason": "廃校"})
        with pytest.raises(Conflict, match="is closed"):
            registry.close_organization(session, school.id, actor=ACTOR)
        registry.close_organization(session, board.id, actor=ACTOR)
        with pytest.raises(Conflict, match="is closed"):
            add_school(session, board, "B113210000020")
        with pytest.raises(InvalidRequest, match="reason"):
            registry.close_organization(session, board.id, actor=ACTOR, reason="x" * 501)
    with store.session() as session:
        assert registry.get(session, board.id).status == "closed"
        assert count(session, Organization) == 2  # closed, never deleted


def test_audit_trail(store: Store) -> None:
    with store.session() as session:
        tokyo, shinjuku = add_tokyo(session), add_shinjuku(session)
        a, b = add_school(session, shinjuku), add_school(session, shinjuku, "B113210000020")
        registry.move_school(session, a.id, tokyo.id, actor=ACTOR)
        registry.merge_schools(session, a.id, b.id, actor=ACTOR)
        registry.close_organization(session, b.id, actor="board:shinjuku", request_id="r-9")
        registry.add_operator(session, name_ja="運営者", actor=ACTOR)
    with store.session() as session:
        assert audit.verify(session).ok
        assert actions(session) == [
            "organization.created",
            "organization.created",
            "organization.created",
            "organization.created",
            "organization.moved",
            "organization.merged",
            "organization.closed",
            "organization.created",
        ]
        closed = audit.entries(session)[6]
        assert (closed.actor, closed.request_id, closed.organization_id) == (
            "board:shinjuku",
            "r-9",
            b.id,
        )
        assert (closed.object_type, closed.object_id) == ("organization", str(b.id))


def test_reading_missing_organizations(store: Store) -> None:
    with store.session() as session:
        for call in (registry.get, registry.history, registry.list_schools):
            with pytest.raises(NotFound, match="organization 42 not found"):
                call(session, 42)


def test_organization_identifier(store: Store) -> None:
    with store.session() as session:
        shinjuku, tokyo = add_shinjuku(session), add_tokyo(session)
        school = add_school(session, shinjuku)
        operator = registry.add_operator(session, name_ja="運営者", actor=ACTOR)
        assert registry.organization_identifier(shinjuku) == (
            f"NTRJP-{local_gov_corporate_number('131041')}"
        )
        assert registry.organization_identifier(school) == f"SC:JP-{PUBLIC_TOKYO}"
        assert registry.organization_identifier(tokyo) is None
        assert registry.organization_identifier(operator) is None
    assert local_gov_corporate_number("130001") == "8000020130001"  # 東京都, as published
