"""Organization names: what may enter the registry, and so a certificate subject.

A name becomes O (UTF8String) of the organization's e-seal certificates and, Japanese or
English, their CN; the verification page, pdfsig and Acrobat show it as "sealed by". It must
therefore display as exactly what it is and never look like another organization's name:

- Unicode NFC. A name that is not NFC is **refused, not normalised**: NFC maps the CJK
  compatibility ideographs (U+F900-U+FAFF, e.g. 神 U+FA19 -> 神 U+795E) to other code
  points, so normalising silently would change a legal name's characters behind the
  registrant's back. The refusal says so and the registrant decides.
- No C0/C1 controls, no bidi embeddings, overrides, isolates or marks, no
  Default_Ignorable_Code_Point (zero-width characters, variation selectors including the
  ideographic variation sequences, tags, fillers), no other format characters, no private-use
  or unassigned code points, no unpaired surrogates, no line/paragraph separators and no
  spaces other than U+0020 and U+3000 (ideographic space). Leading and trailing U+0020/U+3000
  are trimmed, as before.
- At most 64 characters (X.520 ub-organization-name, ub-common-name) and at most 192 bytes of
  UTF-8: every kana and BMP kanji takes 3 bytes, so any 64-character BMP name fits, and a
  subject stays small and bounded.
- The name that becomes CN (``name_en`` when given, else ``name_ja``: ``ca.eseal.eseal_subject``)
  at most 64 bytes of UTF-8. X.520 counts characters, but pyca/cryptography, which builds our
  certificates and which many Python verifiers parse them with, counts CN in bytes: it refuses
  to build a longer CN (a 500 at approval, before this rule) and warns on every parse of one.
  A Japanese name over 21 kanji therefore needs ``name_en`` (rule ``common-name``).
- Unique: two schools run by the same board (or school corporation) never share a name, nor
  do two boards, school corporations or the operator. Names are compared after NFKC, case
  folding and removing spaces, so "Ａ小学校" and "A小学校" clash; the English name takes part
  too, as it is the CN readers show. Closed and merged organizations do not block a name.

Refusals are ``NameRejected`` (422) with the ``field`` and the ``rule`` as extra problem
members. Details name code points as U+XXXX, never echo the hostile text itself.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ca.errors import InvalidRequest
from ca.models import Organization

NAME_FIELDS = ("name_ja", "name_en")  # the registry fields these rules guard
MAX_CHARS = 64
MAX_BYTES = 192
MAX_COMMON_NAME_BYTES = 64  # cryptography's limit for CN (NameOID.COMMON_NAME), in UTF-8 bytes
RULES = (
    "type",
    "empty",
    "surrogate",
    "control",
    "bidi",
    "default-ignorable",
    "format",
    "private-use",
    "unassigned",
    "separator",
    "nfc",
    "length",
    "bytes",
    "common-name",
    "unique",
)

# Bidirectional formatting characters (UAX #9): embeddings and overrides, isolates, marks.
BIDI = frozenset([*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C])

# Default_Ignorable_Code_Point, DerivedCoreProperties.txt (Unicode 14/15, unchanged since 14).
# tests/test_names.py checks this table against perl's \p{Default_Ignorable_Code_Point}.
_DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
_STATUSES_HOLDING_A_NAME = ("closed", "merged")  # these do not: a new school may reuse it
_SPACES = " \u3000"


class NameRejected(InvalidRequest):
    """A name the registry refuses; ``field`` and ``rule`` go into the problem document."""

    type = "ca/invalid-name"
    title = "Organization name refused"

    def __init__(self, field: str, rule: str, detail: str) -> None:
        super().__init__(detail)
        self.field = field
        self.rule = rule

    def members(self) -> dict[str, Any]:
        return {"field": self.field, "rule": self.rule}


def is_default_ignorable(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _DEFAULT_IGNORABLE)


def _rule_for(ch: str) -> str | None:
    """Which rule one character breaks, if any."""
    cp = ord(ch)
    category = unicodedata.category(ch)
    if 0xD800 <= cp <= 0xDFFF:
        return "surrogate"
    if category == "Cc":
        return "control"
    if cp in BIDI:
        return "bidi"
    if is_default_ignorable(cp):
        return "default-ignorable"
    if category == "Cf":
        return "format"
    if category == "Co":
        return "private-use"
    if category == "Cn":
        return "unassigned"
    if category in ("Zl", "Zp") or (category == "Zs" and ch not in _SPACES):
        return "separator"
    return None


_WHAT = {
    "surrogate": "an unpaired surrogate",
    "control": "a control character",
    "bidi": "a bidirectional formatting character",
    "default-ignorable": "an invisible (default-ignorable) character",
    "format": "a format character",
    "private-use": "a private-use character",
    "unassigned": "an unassigned code point",
    "separator": "a line separator or a space other than U+0020 and U+3000",
}


def clean(value: object, field: str) -> str:
    """``value`` as a registry name (trimmed), or ``NameRejected`` naming the broken rule."""
    if not isinstance(value, str):
        raise NameRejected(field, "type", f"{field} must be a non-empty string")
    for index, ch in enumerate(value):
        rule = _rule_for(ch)
        if rule is not None:
            raise NameRejected(
                field,
                rule,
                f"{field} contains {_WHAT[rule]} (U+{ord(ch):04X} at position {index + 1})",
            )
    text = value.strip(_SPACES)
    if not text:
        raise NameRejected(field, "empty", f"{field} must be a non-empty string")
    nfc = unicodedata.normalize("NFC", text)
    if nfc != text:
        pairs = enumerate(zip(text, nfc, strict=False))
        at = min(next((i for i, (a, b) in pairs if a != b), len(nfc)), len(text) - 1)
        raise NameRejected(
            field,
            "nfc",
            f"{field} is not in Unicode NFC (from position {at + 1}, U+{ord(text[at]):04X});"
            " send its NFC form if that is still the organization's name (NFC changes CJK"
            " compatibility ideographs, so kakuin does not normalise names itself)",
        )
    if len(text) > MAX_CHARS:
        raise NameRejected(
            field, "length", f"{field} must be at most {MAX_CHARS} characters, got {len(text)}"
        )
    size = len(text.encode("utf-8"))
    if size > MAX_BYTES:
        raise NameRejected(
            field, "bytes", f"{field} must be at most {MAX_BYTES} bytes in UTF-8, got {size}"
        )
    return text


def comparison_key(name: str) -> str:
    """What two names must not share: NFKC, case folded, without spaces."""
    return "".join(unicodedata.normalize("NFKC", name).casefold().split())


def _keys(org: Organization) -> set[str]:
    return {comparison_key(n) for n in (org.name_ja, org.name_en) if n}


def _peers(session: Session, org: Organization) -> Iterable[Organization]:
    """Organizations whose names ``org`` must not share: its board's other schools, or, for
    anything that is not a school, the other boards, school corporations and the operator."""
    query = select(Organization).where(Organization.status.not_in(_STATUSES_HOLDING_A_NAME))
    if org.kind == "school":
        query = query.where(Organization.kind == "school", Organization.parent_id == org.parent_id)
    else:
        query = query.where(Organization.kind != "school")
    with session.no_autoflush:
        return [peer for peer in session.scalars(query) if peer is not org]


def check_common_name(name_ja: str, name_en: str | None) -> None:
    """Refuse a pair of names whose CN (``name_en`` or else ``name_ja``) a certificate cannot
    carry (see the module docstring)."""
    field, common = ("name_en", name_en) if name_en else ("name_ja", name_ja)
    size = len(common.encode("utf-8"))
    if size > MAX_COMMON_NAME_BYTES:
        hint = "" if name_en else "; give name_en (it becomes the CN) or a shorter name"
        raise NameRejected(
            field,
            "common-name",
            f"{field} becomes the certificate's CN, which holds at most"
            f" {MAX_COMMON_NAME_BYTES} bytes of UTF-8; it has {size}{hint}",
        )


def check_organization(session: Session, org: Organization) -> None:
    """The checks that need the whole (new) organization: its CN fits, its names are free."""
    check_common_name(org.name_ja, org.name_en)
    ensure_unique(session, org)


def ensure_unique(session: Session, org: Organization) -> None:
    """Refuse ``org`` (new, renamed or moved) if a name of it is already a peer's name."""
    for peer in _peers(session, org):
        taken = _keys(peer)
        for field in ("name_ja", "name_en"):
            name = getattr(org, field)
            if name and comparison_key(name) in taken:
                where = "the same board" if org.kind == "school" else "the registry"
                raise NameRejected(
                    field,
                    "unique",
                    f"{field} is already the name of organization {peer.id} in {where}",
                )


__all__ = [
    "BIDI",
    "MAX_BYTES",
    "MAX_CHARS",
    "MAX_COMMON_NAME_BYTES",
    "RULES",
    "NameRejected",
    "check_common_name",
    "check_organization",
    "clean",
    "comparison_key",
    "ensure_unique",
    "is_default_ignorable",
]
