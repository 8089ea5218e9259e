"""The one hand-written DER encoder, for the hot paths where asn1crypto is too slow.

Everything else builds ASN.1 through asn1crypto or cryptography objects. These few
primitives survive because a same-run benchmark (``bench/der.py``) shows asn1crypto at well
over 2x their cost where kakuin answers requests or builds large CRLs: the OCSP responses
(``ca/ocsp.py``), CRL entries (``ca/crl.py``) and timestamp tokens (``signing/tsa.py``).
tests/test_der.py checks them byte for byte against asn1crypto, and the structures built
from them likewise.

It lives in ``hsm`` because that is the one layer both ``ca`` and ``signing`` may import, and
PKCS#11 itself speaks DER (DigestInfo, ECDSA signatures).
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache

NULL = b"\x05\x00"


def tlv(tag: int, value: bytes) -> bytes:
    """One TLV with a definite length (short form under 128 octets, long form above)."""
    n = len(value)
    if n < 0x80:
        return bytes((tag, n)) + value
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + value


def seq(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def integer(value: int) -> bytes:
    """INTEGER, two's complement, minimal octets."""
    size = ((value if value >= 0 else ~value).bit_length() + 8) // 8
    return tlv(0x02, value.to_bytes(size, "big", signed=True))


def octets(value: bytes) -> bytes:
    return tlv(0x04, value)


@lru_cache(maxsize=256)
def oid(dotted: str) -> bytes:
    """OBJECT IDENTIFIER (cached: callers pass constants)."""
    arcs = [int(a) for a in dotted.split(".")]
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] > 39):
        raise ValueError(f"not an OID: {dotted}")
    body = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return tlv(0x06, bytes(body))


def generalized_time(at: datetime, *, fraction: bool = False) -> bytes:
    """GeneralizedTime in UTC with ``Z``; with ``fraction``, the microseconds without trailing
    zeros (DER), else whole seconds (RFC 5280 §4.1.2.5.2; RFC 6960 via RFC 9919 §2.2.4)."""
    if at.tzinfo is None:
        raise ValueError("naive datetime; use an aware (UTC) datetime")
    at = at.astimezone(UTC)
    text = b"%04d%02d%02d%02d%02d%02d" % (
        at.year, at.month, at.day, at.hour, at.minute, at.second
    )
    if fraction and at.microsecond:
        text += (b".%06d" % at.microsecond).rstrip(b"0")
    return tlv(0x18, text + b"Z")


def x509_time(at: datetime) -> bytes:
    """UTCTime through 2049, GeneralizedTime after (RFC 5280 §4.1.2.5); whole seconds.

    %-formatting, not strftime: strftime costs 3 µs a call, a third of a 100k-entry CRL."""
    if at.tzinfo is None:
        raise ValueError("naive datetime; use an aware (UTC) datetime")
    at = at.astimezone(UTC)
    if not 1950 <= at.year <= 9999:
        raise ValueError(f"time {at} cannot be encoded in X.509")
    if at.year < 2050:
        return b"\x17\x0d%02d%02d%02d%02d%02d%02dZ" % (
            at.year % 100, at.month, at.day, at.hour, at.minute, at.second
        )
    return b"\x18\x0f%04d%02d%02d%02d%02d%02dZ" % (
        at.year, at.month, at.day, at.hour, at.minute, at.second
    )


def children(value: bytes) -> list[bytes]:
    """The whole TLVs inside one constructed TLV (definite lengths, one-byte tags): for
    splicing DER that cryptography built, never for reading what others sent."""

    def header(pos: int) -> tuple[int, int]:  # (start of value, length)
        first = value[pos + 1]
        if not first & 0x80:
            return pos + 2, first
        size = first & 0x7F
        return pos + 2 + size, int.from_bytes(value[pos + 2 : pos + 2 + size], "big")

    pos, end = header(0)
    end += pos
    out = []
    while pos < end:
        start, length = header(pos)
        out.append(value[pos : start + length])
        pos = start + length
    return out


__all__ = [
    "NULL",
    "children",
    "generalized_time",
    "integer",
    "octets",
    "oid",
    "seq",
    "tlv",
    "x509_time",
]
