"""The operator's school list, imported from a CSV shaped like MEXT's 学校コード list.

A school a board registers stays ``pending`` until the operator confirms it or it matches
this list (code, open, same name), because a board must not be able to invent a school and
get a seal in its name. The file is checked whole before anything is written: one bad row
refuses the import with its line number.

Columns (header row required; Japanese names as in MEXT's list, English aliases accepted;
other columns are ignored):

==================  ==============  =========================================================
MEXT header         alias           content
==================  ==============  =========================================================
学校コード          school_code     13-character school code (required)
学校名              name_ja         school name (required)
学校種              school_type     e.g. C1 (optional; must agree with the code)
都道府県番号        prefecture      01-47 (optional; must agree with the code)
設置区分            founder         1/2/3 or 国立/公立/私立 (optional; must agree with the code)
属性情報廃止年月日  closed_on       non-empty: the school is closed (no match)
地方公共団体コード  local_gov_code  6-digit code of the founding local government (optional)
==================  ==============  =========================================================
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from ca import audit, registry
from ca.errors import InvalidRequest
from ca.models import ListedSchool, Organization, utcnow

COLUMNS: dict[str, tuple[str, ...]] = {
    "school_code": ("学校コード", "school_code"),
    "name_ja": ("学校名", "name_ja"),
    "school_type": ("学校種", "school_type"),
    "prefecture": ("都道府県番号", "prefecture"),
    "founder": ("設置区分", "founder"),
    "closed_on": ("属性情報廃止年月日", "closed_on"),
    "local_gov_code": ("地方公共団体コード", "local_gov_code"),
}
_FOUNDER_WORDS = {"国立": "1", "公立": "2", "私立": "3"}
MAX_BYTES = 64 * 1024 * 1024  # MEXT's whole list is ~10 MB


@dataclass(frozen=True)
class ImportResult:
    rows: int
    closed: int
    confirmed: list[int]


def _decode(data: bytes) -> str:
    for encoding in ("utf-8-sig", "cp932"):  # MEXT publishes Shift_JIS (cp932) and UTF-8
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise InvalidRequest("school list is neither UTF-8 nor Shift_JIS (cp932)")


def parse(data: bytes) -> list[ListedSchool]:
    """Rows of the CSV as (unsaved) ``ListedSchool`` objects; 422 naming the first bad line."""
    if len(data) > MAX_BYTES:
        raise InvalidRequest(f"school list larger than {MAX_BYTES} bytes")
    reader = csv.reader(io.StringIO(_decode(data)))
    header = [h.strip() for h in next(reader, [])]
    where: dict[str, int] = {}
    for key, names in COLUMNS.items():
        for i, h in enumerate(header):
            if h in names:
                where[key] = i
    for required in ("school_code", "name_ja"):
        if required not in where:
            raise InvalidRequest(f"school list needs a column {' or '.join(COLUMNS[required])}")
    rows: dict[str, ListedSchool] = {}
    for line, record in enumerate(reader, start=2):
        if not any(cell.strip() for cell in record):
            continue

        def cell(key: str, record: list[str] = record) -> str:
            i = where.get(key)
            return record[i].strip() if i is not None and i < len(record) else ""

        try:
            code = registry.parse_school_code(cell("school_code"))
            name = registry._name(cell("name_ja"), "name_ja")
            checks = {
                "school_type": code.school_type,
                "prefecture": code.prefecture,
                "founder": next(k for k, v in registry.FOUNDERS.items() if v == code.founder),
            }
            for key, expected in checks.items():
                given = cell(key)
                given = _FOUNDER_WORDS.get(given, given) if key == "founder" else given
                if key == "prefecture" and given.isdigit():
                    given = given.zfill(2)
                if given and given != expected:
                    raise InvalidRequest(f"{key} {given!r} disagrees with the code ({expected})")
            gov = cell("local_gov_code") or None
            if gov is not None:
                gov = registry.validate_local_gov_code(gov)
        except InvalidRequest as exc:
            raise InvalidRequest(f"school list line {line}: {exc.detail}") from exc
        if code.code in rows:
            raise InvalidRequest(f"school list line {line}: school code {code.code} repeated")
        rows[code.code] = ListedSchool(
            school_code=code.code, name_ja=name, school_type=code.school_type,
            founder=code.founder, prefecture=code.prefecture, local_gov_code=gov,
            status="closed" if cell("closed_on") else "open", imported_at=utcnow(),
        )
    return list(rows.values())


def import_list(session: Session, data: bytes, *, actor: str,
                request_id: str | None = None) -> ImportResult:
    """Add or update the file's rows (schools not in the file stay listed, so prefectures can
    be imported one file at a time), then confirm the pending schools that now match (same
    code, open, same name, under a board of the listed local government if one is named)."""
    parsed = parse(data)
    for row in parsed:
        session.merge(row)
    session.flush()
    confirmed: list[int] = []
    pending = session.scalars(
        select(Organization).where(Organization.kind == "school",
                                   Organization.status == "pending").order_by(Organization.id)
    ).all()
    for school in pending:
        parent = session.get(Organization, school.parent_id) if school.parent_id else None
        if (school.school_code is None or parent is None
                or not registry.listed(session, school.school_code, school.name_ja, parent)):
            continue
        registry.confirm_school(session, school.id, actor=actor, how="school-list",
                                request_id=request_id)
        confirmed.append(school.id)
    closed = sum(1 for r in parsed if r.status == "closed")
    audit.record(session, actor=actor, action="registry.list-imported", object_type="school-list",
                 request_id=request_id,
                 details={"rows": len(parsed), "closed": closed, "confirmed": confirmed})
    return ImportResult(len(parsed), closed, confirmed)
