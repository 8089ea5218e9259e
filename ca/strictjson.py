"""The one strict JSON reader of kakuin (RFC 8259 inside the I-JSON subset, RFC 7493).

Every JSON body the HTTP API reads (CA API, sealing, CSC) and every JSON record a seal covers
goes through :func:`loads`; the web layer installs it as Flask's JSON provider, the signing
side reaches it through ``ca.status``. Refused, with a :class:`BadJSON` (HTTP 400) naming
the reason: bytes that are not UTF-8 or start with a byte order mark, duplicate member names
(parsers disagree on which one wins: an object must mean one thing everywhere), NaN and
Infinity (not JSON), numbers beyond the double range or with absurdly many digits, unpaired
UTF-16 surrogates from ``\\uD800``-style escapes (they cannot be stored or encoded), and
nesting deeper than ``max_depth``. The depth is checked on the text *before* parsing, without
recursion: Python's parser recurses once per level, so 10,000 levels would otherwise end in
RecursionError (an HTTP 500) instead of an answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from itertools import accumulate
from typing import Any

from ca.errors import CAError

__all__ = ["DEFAULT_MAX_DEPTH", "MAX_NUMBER_CHARS", "BadJSON", "loads"]

DEFAULT_MAX_DEPTH = 32
MAX_NUMBER_CHARS = 400
# A string (possibly unterminated: it then runs to the end, which keeps the scan linear);
# brackets inside strings are removed with their string before the brackets are counted.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*+(?:"|\Z)', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


class BadJSON(CAError):
    status = 400
    type = "api/bad-json"
    title = "Request body is not acceptable JSON"


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BadJSON(f"duplicate member name {_short(key)!r} in an object")
            seen.add(key)
    return obj


def _constant(name: str) -> Any:
    raise BadJSON(f"{name} is not a JSON number (RFC 8259 6); send it as a string")


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise BadJSON(f"number {_short(text)} has too many digits; send it as a string")
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise BadJSON(f"number {_short(text)} is out of the IEEE 754 double range")
    return value


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise BadJSON(f"number {_short(text)} has too many digits; send it as a string")
    return int(text)


def depth(text: str) -> int:
    """The deepest nesting of arrays/objects in ``text``, without parsing (no recursion;
    the loops run in C: about as fast as ``json.loads`` itself)."""
    brackets = _BRACKET.findall(_STRING.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def _check_strings(value: Any, what: str) -> None:
    """Refuse unpaired surrogates anywhere (keys and values), iteratively."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise BadJSON(
                    f"{what} contains an unpaired UTF-16 surrogate "
                    f"U+{ord(node[exc.start]):04X} (RFC 7493 2.1)"
                ) from None


def loads(
    raw: bytes | bytearray | memoryview | str,
    *,
    what: str = "body",
    max_depth: int = DEFAULT_MAX_DEPTH,
    parse_float: Callable[[str], Any] | None = None,
    parse_int: Callable[[str], Any] | None = None,
) -> Any:
    """Parse ``raw`` strictly (see the module doc); ``what`` names it in the messages.

    ``parse_float``/``parse_int`` replace the default number checks (a caller with stricter
    rules, such as JCS for seals, passes its own and must bound the digits itself).
    """
    if isinstance(raw, str):
        text = raw
        if text.startswith("\ufeff"):
            raise BadJSON(f"{what} starts with a byte order mark; send UTF-8 JSON without it")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BadJSON(f"{what} is not valid Unicode (offset {exc.start})") from None
    else:
        data = bytes(raw)
        if data.startswith(b"\xef\xbb\xbf"):
            raise BadJSON(f"{what} starts with a byte order mark; send UTF-8 JSON without it")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadJSON(f"{what} is not valid UTF-8 (byte offset {exc.start})") from None
    # Counting every bracket is cheap and bounds the depth; scan only when it could exceed.
    if text.count("[") + text.count("{") > max_depth and depth(text) > max_depth:
        raise BadJSON(f"{what} is nested deeper than {max_depth} levels")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_constant=_constant,
            parse_float=parse_float or _float,
            parse_int=parse_int or _int,
        )
    except json.JSONDecodeError as exc:
        raise BadJSON(
            f"{what} is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:  # only if the stack is already deep: the scan above bounds it
        raise BadJSON(f"{what} is nested deeper than {max_depth} levels") from None
    except ValueError as exc:  # e.g. int() beyond sys.get_int_max_str_digits()
        raise BadJSON(f"{what} is not acceptable JSON: {_short(str(exc), 120)}") from None
    if _ESCAPED_SURROGATE.search(text):
        _check_strings(value, what)
    return value
