"""The registry of organizations: boards of education, schools, school corporations, operator.

Certificates name their subject from here, never from a CSR, so what enters the registry is
checked hard: identifiers are validated (format and, where the algorithm is public, check
digit) before anything is written. Every change writes an ``OrganizationEvent`` and an audit
entry in the caller's transaction, so a change and its trace land together or not at all.
Nothing is ever deleted: old certificates and audit entries keep pointing at closed and merged
organizations.

Mutations lock the rows they depend on (``SELECT ... FOR UPDATE``; a no-op on SQLite, whose
writers are serialised anyway), in id order, so a school cannot be moved under a board that
is being closed at the same moment.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ca import audit, names
from ca.errors import Conflict, InvalidRequest, NotFound
from ca.models import ListedSchool, Organization, OrganizationEvent

Founder = Literal["national", "public", "private"]

SCHOOL_TYPES: dict[str, str] = {
    "A1": "幼稚園",
    "A2": "幼保連携型認定こども園",
    "B1": "小学校",
    "C1": "中学校",
    "C2": "義務教育学校",
    "D1": "高等学校",
    "D2": "中等教育学校",
    "E1": "特別支援学校",
    "F1": "大学",
    "F2": "短期大学",
    "G1": "高等専門学校",
    "H1": "専修学校",
    "H2": "各種学校",
}
FOUNDERS: dict[str, Founder] = {"1": "national", "2": "public", "3": "private"}

# Which kinds of organization may run a school, by founder (the jurisdiction rule). A board
# of education runs only public (公立) schools; private schools belong to school corporations
# (学校法人); public universities to public university corporations, which we register as
# ``school_corporation``; national schools to national university corporations or the operator.
PARENT_KINDS: dict[Founder, tuple[str, ...]] = {
    "national": ("school_corporation", "operator"),
    "public": ("board", "school_corporation"),
    "private": ("school_corporation",),
}
MAX_NAME = 256  # the column width; names are held to names.MAX_CHARS
MAX_REASON = 500  # goes into the audit entry too, which is capped at 4 KiB

_LOCAL_GOV_WEIGHTS = (6, 5, 4, 3, 2)
_SCHOOL_CODE = re.compile(
    r"(?P<type>[A-Z][0-9])(?P<pref>[0-9]{2})(?P<founder>[0-9])(?P<number>[0-9]{7})(?P<check>[0-9])"
)


# --- validators -------------------------------------------------------------------------


@dataclass(frozen=True)
class SchoolCode:
    """A MEXT school code (学校コード) split into its parts."""

    code: str
    school_type: str
    school_type_ja: str
    prefecture: str
    founder: Founder
    number: str
    check: str


def _show(value: object) -> str:
    """The offending value for an error message, short enough to be harmless."""
    text = repr(value)
    return text if len(text) <= 24 else text[:21] + "..."


def _digits(value: object, field: str, length: int) -> str:
    """``value`` if it is exactly ``length`` ASCII digits (``str.isdigit`` also takes "１")."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{field} must be a string of {length} digits")
    if len(value) != length:
        raise InvalidRequest(
            f"{field} must be {length} digits, got {len(value)} characters: {_show(value)}"
        )
    if not re.fullmatch(r"[0-9]+", value):
        raise InvalidRequest(f"{field} must contain only the digits 0-9: {_show(value)}")
    return value


def validate_prefecture(value: object, field: str = "prefecture") -> str:
    """A JIS X 0401 prefecture code, "01" (Hokkaido) to "47" (Okinawa)."""
    code = _digits(value, field, 2)
    if not 1 <= int(code) <= 47:
        raise InvalidRequest(f"{field} must be a prefecture code 01-47, got {code!r}")
    return code


def local_gov_check_digit(first_five: str) -> int:
    """Check digit of a local government code: weights 6..2, mod 11, ``(11 - r) % 10``."""
    r = sum(int(d) * w for d, w in zip(first_five, _LOCAL_GOV_WEIGHTS, strict=True)) % 11
    return (11 - r) % 10


def validate_local_gov_code(value: object, field: str = "local_gov_code") -> str:
    """A 地方公共団体コード: 6 digits, prefecture in the first two, check digit last."""
    code = _digits(value, field, 6)
    validate_prefecture(code[:2], f"{field} (first two digits, the prefecture)")
    expected = local_gov_check_digit(code[:5])
    if int(code[5]) != expected:
        raise InvalidRequest(
            f"{field} {code!r} has check digit {code[5]}, expected {expected} (mistyped?)"
        )
    return code


def corporate_number_check_digit(base: str) -> int:
    """Check digit of a 法人番号 for its 12-digit base: ``9 - Σ P_n·Q_n mod 9``.

    ``P_n`` is the n-th digit from the right, ``Q_n`` is 1 for odd n and 2 for even n.
    """
    if len(base) != 12:
        raise ValueError("a corporate number base has 12 digits")
    total = sum(int(d) * (1 if n % 2 else 2) for n, d in enumerate(reversed(base), start=1))
    return 9 - total % 9


def validate_corporate_number(value: object, field: str = "corporate_number") -> str:
    """A 法人番号: 13 digits whose *first* digit is the check digit."""
    number = _digits(value, field, 13)
    expected = corporate_number_check_digit(number[1:])
    if int(number[0]) != expected:
        raise InvalidRequest(
            f"{field} {number!r} has check digit {number[0]} (the first digit),"
            f" expected {expected} (mistyped?)"
        )
    return number


def parse_school_code(value: object, field: str = "school_code") -> SchoolCode:
    """Parse a MEXT 学校コード: type (2) + prefecture (2) + founder (1) + number (7) + check (1).

    Only the format is validated: MEXT does not publish how the last digit is computed, so a
    mistyped digit in the number or the check digit goes unnoticed here. Boards should copy
    codes from MEXT's list rather than type them.
    """
    if not isinstance(value, str):
        raise InvalidRequest(f"{field} must be a string of 13 characters")
    if len(value) != 13:
        raise InvalidRequest(f"{field} must be 13 characters, got {len(value)}: {_show(value)}")
    school_type = value[:2]
    if school_type not in SCHOOL_TYPES:
        raise InvalidRequest(
            f"{field} {value!r} starts with unknown school type {school_type!r}"
            f" (expected one of {' '.join(SCHOOL_TYPES)})"
        )
    m = _SCHOOL_CODE.fullmatch(value)
    if m is None:
        raise InvalidRequest(
            f"{field} {value!r}: after the school type, the 11 remaining characters must be"
            " digits 0-9"
        )
    prefecture = validate_prefecture(m["pref"], f"{field} (characters 3-4, the prefecture)")
    founder = FOUNDERS.get(m["founder"])
    if founder is None:
        raise InvalidRequest(
            f"{field} {value!r} has founder type {m['founder']!r} (character 5);"
            " expected 1 (national), 2 (public) or 3 (private)"
        )
    return SchoolCode(
        code=value,
        school_type=school_type,
        school_type_ja=SCHOOL_TYPES[school_type],
        prefecture=prefecture,
        founder=founder,
        number=m["number"],
        check=m["check"],
    )


def _name(value: object, field: str) -> str:
    return names.clean(value, field)  # NFC, no hidden characters, 64 characters (ca/names.py)


def _optional_name(value: object, field: str) -> str | None:
    return None if value is None else _name(value, field)


def _reason(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_REASON:
        raise InvalidRequest(f"reason must be a string of at most {MAX_REASON} characters")
    return value


def _actor(value: object) -> str:
    # Checked before any write so a bad actor is a 422, not a ValueError halfway through.
    if not isinstance(value, str) or not 0 < len(value) <= 128:
        raise InvalidRequest("actor must be 1-128 characters")
    return value


# --- reading ----------------------------------------------------------------------------


def get(session: Session, org_id: int) -> Organization:
    """The organization with this id, whatever its status."""
    org = session.get(Organization, org_id)
    if org is None:
        raise NotFound(f"organization {org_id} not found")
    return org


def board_of(session: Session, org: Organization) -> Organization | None:
    """The organization running a school: its board, school corporation or the operator.

    ``None`` for anything that is not a school (boards and corporations run themselves).
    """
    if org.kind != "school" or org.parent_id is None:
        return None
    return session.get(Organization, org.parent_id)


def history(session: Session, org_id: int) -> list[OrganizationEvent]:
    """Events of one organization, oldest first."""
    get(session, org_id)
    query = (
        select(OrganizationEvent)
        .where(OrganizationEvent.organization_id == org_id)
        .order_by(OrganizationEvent.at, OrganizationEvent.id)
    )
    return list(session.scalars(query))


def list_schools(
    session: Session, board_id: int, *, include_inactive: bool = False
) -> list[Organization]:
    """Schools run by ``board_id`` (active ones unless asked), by id."""
    get(session, board_id)
    query = select(Organization).where(
        Organization.parent_id == board_id, Organization.kind == "school"
    )
    if not include_inactive:
        query = query.where(Organization.status == "active")
    return list(session.scalars(query.order_by(Organization.id)))


def organization_identifier(org: Organization) -> str | None:
    """The ETSI EN 319 412-1 §5.1.4 ``organizationIdentifier`` for a certificate subject.

    - ``NTRJP-<法人番号>`` when the organization has a corporate number (the scheme Japanese
      e-seal practice uses for the National Tax Agency's number). For a board this is its
      local government's number: boards have none of their own.
    - otherwise, for a school, ``SC:JP-<学校コード>``: §5.1.4 allows "two characters
      according to local definition ... followed by ':'" as the identity type reference.
      ``SC`` ("school code") is kakuin's own definition, meaning the MEXT school code; it
      must be published in the certificate policy. pkilint reports it as a NOTICE
      (national scheme detected), not an error.
    - otherwise ``None``: leave the attribute out rather than invent an identifier.
    """
    if org.corporate_number:
        return f"NTRJP-{org.corporate_number}"
    if org.kind == "school" and org.school_code:
        return f"SC:JP-{org.school_code}"
    return None


# --- writing ----------------------------------------------------------------------------


def _lock(session: Session, *org_ids: int) -> dict[int, Organization]:
    """Load and row-lock organizations, in id order so two writers cannot deadlock."""
    found: dict[int, Organization] = {}
    for org_id in sorted(set(org_ids)):
        org = session.get(Organization, org_id, with_for_update=True, populate_existing=True)
        if org is None:
            raise NotFound(f"organization {org_id} not found")
        found[org_id] = org
    return found


def _require_active(org: Organization) -> None:
    if org.status != "active":
        raise Conflict(f"organization {org.id} ({org.name_ja}) is {org.status}")


def _require_kind(org: Organization, *kinds: str) -> None:
    if org.kind not in kinds:
        raise InvalidRequest(
            f"organization {org.id} is of kind {org.kind}, expected {' or '.join(kinds)}"
        )


def _check_parent(parent: Organization, code: SchoolCode) -> None:
    """Whether ``parent`` may run a school with this code."""
    _require_active(parent)
    kinds = PARENT_KINDS[code.founder]
    if parent.kind not in kinds:
        raise InvalidRequest(
            f"a {code.founder} school ({code.code}) cannot be run by organization {parent.id}"
            f" (kind {parent.kind}); allowed kinds: {', '.join(kinds)}"
        )
    board_prefecture = (parent.local_gov_code or "")[:2] or parent.prefecture
    if parent.kind == "board" and board_prefecture != code.prefecture:
        raise InvalidRequest(
            f"school code {code.code} is in prefecture {code.prefecture} but board"
            f" {parent.id} ({parent.name_ja}) is in prefecture {board_prefecture}"
        )


def _event(session: Session, org_id: int, event: str, detail: dict[str, Any]) -> None:
    session.add(
        OrganizationEvent(
            organization_id=org_id,
            event=event,
            detail=json.dumps(detail, ensure_ascii=False, sort_keys=True),
        )
    )


def _audit(
    session: Session,
    org_id: int,
    action: str,
    actor: str,
    request_id: str | None,
    details: dict[str, Any],
) -> None:
    audit.record(
        session,
        actor=actor,
        action=action,
        organization_id=org_id,
        object_type="organization",
        object_id=str(org_id),
        request_id=request_id,
        details=details,
    )


def _create(
    session: Session, org: Organization, actor: str, request_id: str | None
) -> Organization:
    names.check_organization(session, org)  # CN fits, names free (ca/names.py)
    try:
        session.flush()
    except IntegrityError as exc:
        # Only reached when a concurrent writer won the race past our own checks.
        raise Conflict(f"{org.kind} conflicts with an organization just registered") from exc
    details = {
        "kind": org.kind,
        "name_ja": org.name_ja,
        "parent_id": org.parent_id,
        "prefecture": org.prefecture,
        "school_code": org.school_code,
        "local_gov_code": org.local_gov_code,
        "corporate_number": org.corporate_number,
    }
    details = {k: v for k, v in details.items() if v is not None}
    if org.status != "active":
        details["status"] = org.status
    _event(session, org.id, "created", details)
    _audit(session, org.id, "organization.created", actor, request_id, details)
    return org


def _check_corporate_number_free(session: Session, number: str) -> None:
    # A municipality has one corporate number and one board, so duplicates are mistakes too.
    clash = session.scalars(
        select(Organization).where(
            Organization.corporate_number == number, Organization.status == "active"
        )
    ).first()
    if clash is not None:
        raise Conflict(
            f"corporate number {number} is already registered to active organization"
            f" {clash.id} ({clash.name_ja})"
        )


def add_board(
    session: Session,
    *,
    name_ja: str,
    local_gov_code: str,
    corporate_number: str | None = None,
    name_en: str | None = None,
    actor: str,
    request_id: str | None = None,
) -> Organization:
    """Register a board of education (教育委員会) by its local government's code.

    Only one *active* board per local government: a municipal merger closes the old boards
    and registers the new one under the new code.
    """
    actor = _actor(actor)
    name = _name(name_ja, "name_ja")
    name_en = _optional_name(name_en, "name_en")
    code = validate_local_gov_code(local_gov_code)
    if corporate_number is not None:
        corporate_number = validate_corporate_number(corporate_number)
    clash = session.scalars(
        select(Organization).where(
            Organization.kind == "board",
            Organization.local_gov_code == code,
            Organization.status == "active",
        )
    ).first()
    if clash is not None:
        raise Conflict(
            f"local government {code} already has an active board: organization {clash.id}"
            f" ({clash.name_ja})"
        )
    if corporate_number is not None:
        _check_corporate_number_free(session, corporate_number)
    org = Organization(
        kind="board",
        name_ja=name,
        name_en=name_en,
        local_gov_code=code,
        corporate_number=corporate_number,
        prefecture=code[:2],
        status="active",
    )
    session.add(org)
    return _create(session, org, actor, request_id)


def add_school(
    session: Session,
    *,
    name_ja: str,
    school_code: str,
    board_id: int,
    name_en: str | None = None,
    actor: str,
    request_id: str | None = None,
    confirmed: bool = True,
) -> Organization:
    """Register a school under the organization running it (see ``PARENT_KINDS``).

    A public school's board must be in the prefecture its school code names. School codes
    are unique for ever: a closed school's code is not given to a new school. With
    ``confirmed=False`` (registered by a board, not the operator) the school is ``pending``
    unless it matches the imported school list; pending schools get no seal.
    """
    actor = _actor(actor)
    name = _name(name_ja, "name_ja")
    name_en = _optional_name(name_en, "name_en")
    code = parse_school_code(school_code)
    parent = _lock(session, board_id)[board_id]
    _check_parent(parent, code)
    clash = session.scalars(
        select(Organization).where(Organization.school_code == code.code)
    ).first()
    if clash is not None:
        raise Conflict(
            f"school code {code.code} is already registered: organization {clash.id}"
            f" ({clash.name_ja}, {clash.status})"
        )
    org = Organization(
        kind="school",
        name_ja=name,
        name_en=name_en,
        school_code=code.code,
        prefecture=code.prefecture,
        parent_id=parent.id,
        status="active" if confirmed or listed(session, code.code, name, parent) else "pending",
    )
    session.add(org)
    return _create(session, org, actor, request_id)


def add_school_corporation(
    session: Session,
    *,
    name_ja: str,
    corporate_number: str,
    prefecture: str,
    name_en: str | None = None,
    actor: str,
    request_id: str | None = None,
) -> Organization:
    """Register a school corporation (学校法人, or a public/national university corporation).

    It runs private schools; its corporate number becomes their certificates' identifier.
    """
    actor = _actor(actor)
    name = _name(name_ja, "name_ja")
    name_en = _optional_name(name_en, "name_en")
    number = validate_corporate_number(corporate_number)
    pref = validate_prefecture(prefecture)
    _check_corporate_number_free(session, number)
    org = Organization(
        kind="school_corporation",
        name_ja=name,
        name_en=name_en,
        corporate_number=number,
        prefecture=pref,
        status="active",
    )
    session.add(org)
    return _create(session, org, actor, request_id)


def add_operator(
    session: Session,
    *,
    name_ja: str,
    actor: str,
    name_en: str | None = None,
    corporate_number: str | None = None,
    request_id: str | None = None,
) -> Organization:
    """Register the CA operator's own organization, which the first operator token binds to."""
    actor = _actor(actor)
    name = _name(name_ja, "name_ja")
    name_en = _optional_name(name_en, "name_en")
    if corporate_number is not None:
        corporate_number = validate_corporate_number(corporate_number)
        _check_corporate_number_free(session, corporate_number)
    org = Organization(
        kind="operator",
        name_ja=name,
        name_en=name_en,
        corporate_number=corporate_number,
        status="active",
    )
    session.add(org)
    return _create(session, org, actor, request_id)


def move_school(
    session: Session,
    school_id: int,
    new_board_id: int,
    *,
    actor: str,
    reason: str | None = None,
    request_id: str | None = None,
) -> Organization:
    """Put a school under another board (transfer of control, municipal merger)."""
    actor = _actor(actor)
    reason = _reason(reason)
    orgs = _lock(session, school_id, new_board_id)
    school, board = orgs[school_id], orgs[new_board_id]
    _require_kind(school, "school")
    _require_active(school)
    if school.parent_id == board.id:
        raise Conflict(f"school {school.id} is already run by organization {board.id}")
    if school.school_code is None:  # every school gets one in add_school
        raise ValueError(f"school {school.id} has no school code")
    _check_parent(board, parse_school_code(school.school_code))
    old = school.parent_id
    school.parent_id = board.id
    names.ensure_unique(session, school)  # its name must be free among the new board's schools
    detail = {"from": old, "to": board.id, "reason": reason}
    _event(session, school.id, "moved", detail)
    _audit(session, school.id, "organization.moved", actor, request_id, detail)
    session.flush()
    return school


def merge_schools(
    session: Session,
    absorbed_id: int,
    into_id: int,
    *,
    actor: str,
    request_id: str | None = None,
) -> Organization:
    """Merge one school into another (統廃合); the absorbed one keeps its row as "merged".

    Returns the absorbed school. Its certificates are not revoked here: that is the caller's
    (or the board's) decision, made with a reason code.
    """
    actor = _actor(actor)
    if absorbed_id == into_id:
        raise InvalidRequest("a school cannot be merged into itself")
    orgs = _lock(session, absorbed_id, into_id)
    absorbed, into = orgs[absorbed_id], orgs[into_id]
    for org in (absorbed, into):
        _require_kind(org, "school")
        _require_active(org)
    absorbed.status = "merged"
    _event(session, absorbed.id, "merged_into", {"into": into.id})
    _event(session, into.id, "absorbed", {"absorbed": absorbed.id})
    _audit(session, absorbed.id, "organization.merged", actor, request_id, {"into": into.id})
    session.flush()
    return absorbed


def close_organization(
    session: Session,
    org_id: int,
    *,
    actor: str,
    reason: str | None = None,
    request_id: str | None = None,
) -> Organization:
    """Close an organization (school closed, board dissolved).

    Refused while it still runs active schools: move or close them first, so no active school
    is left under a closed board with nobody to approve its requests.
    """
    actor = _actor(actor)
    reason = _reason(reason)
    org = _lock(session, org_id)[org_id]
    if org.status != "pending":  # a pending registration is closed to refuse it
        _require_active(org)
    running = session.scalar(
        select(func.count())
        .select_from(Organization)
        .where(Organization.parent_id == org.id,
               Organization.status.in_(("active", "pending")))
    )
    if running:
        raise Conflict(
            f"organization {org.id} still runs {running} active school(s); move or close them first"
        )
    org.status = "closed"
    detail = {"reason": reason}
    _event(session, org.id, "closed", detail)
    _audit(session, org.id, "organization.closed", actor, request_id, detail)
    session.flush()
    return org


# --- confirming schools a board registered ----------------------------------------------


def same_name(a: str, b: str) -> bool:
    """Names equal up to Unicode compatibility forms and spaces (全角/半角, 　)."""
    def norm(text: str) -> str:
        return "".join(unicodedata.normalize("NFKC", text).split())

    return norm(a) == norm(b)


def listed(session: Session, school_code: str, name_ja: str, parent: Organization) -> bool:
    """Whether the imported school list has this open school under (about) this name, and,
    where the list names the founding local government, ``parent`` is that government's."""
    row = session.get(ListedSchool, school_code)
    if row is None or row.status != "open" or not same_name(row.name_ja, name_ja):
        return False
    return row.local_gov_code is None or row.local_gov_code == parent.local_gov_code


def confirm_school(
    session: Session, school_id: int, *, actor: str, how: str = "operator",
    request_id: str | None = None,
) -> Organization:
    """Make a ``pending`` school (registered by its board) ``active``: the operator's check
    that the school exists and belongs to that board, or a match with the imported list."""
    actor = _actor(actor)
    school = _lock(session, school_id)[school_id]
    _require_kind(school, "school")
    if school.status != "pending":
        raise Conflict(f"school {school.id} is {school.status}, not pending")
    parent = session.get(Organization, school.parent_id) if school.parent_id else None
    if parent is None or parent.status != "active":
        raise Conflict(f"school {school.id} has no active organization running it")
    school.status = "active"
    detail = {"by": how}
    _event(session, school.id, "confirmed", detail)
    _audit(session, school.id, "organization.confirmed", actor, request_id, detail)
    session.flush()
    return school
