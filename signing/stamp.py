"""The visible seal: a square red 角印 (kakuin) with the organization's Japanese name set in a
grid of characters, the sealing time in JST and a short verification URL with its QR code.

It is a pyHanko stamp style, so ``PdfSigner`` draws it into the signature widget's appearance
stream. The text is set in a Japanese OpenType font (IPAex Gothic by default), embedded as a
subset. The subset is made once per character set and cached: pyHanko's ``GlyphAccumulator``
loads the 6 MB font and subsets it again for every document (about 150 ms each, measured),
while a seal's characters (name, digits, URL) are known before the first document.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from pyhanko.pdf_utils import generic, layout
from pyhanko.pdf_utils.content import ResourceType
from pyhanko.pdf_utils.font.api import FontEngine, ShapeResult
from pyhanko.pdf_utils.generic import pdf_name
from pyhanko.pdf_utils.writer import BasePdfFileWriter
from pyhanko.stamp import BaseStamp, BaseStampStyle

__all__ = [
    "DEFAULT_FONT",
    "JST",
    "SEAL_RED",
    "KakuinStamp",
    "KakuinStampStyle",
    "SubsetFont",
    "grid_layout",
    "stamp_time",
    "subset_font",
]

#: Debian's fonts-ipaexfont-gothic, installed by ``make``; override with KAKUIN_SEAL_FONT.
DEFAULT_FONT = os.environ.get(
    "KAKUIN_SEAL_FONT", "/usr/share/fonts/opentype/ipaexfont-gothic/ipaexg.ttf"
)
#: Japan has no daylight saving time, so a fixed offset needs no tz database.
JST = timezone(timedelta(hours=9), "JST")
#: Shu-iro (朱色) of seal ink, close to #C8102E.
SEAL_RED = (0.784, 0.063, 0.180)
#: Characters the time line can use, so one font subset serves every timestamp.
_TIME_CHARS = "0123456789-: JST"
#: Layout, as fractions of the seal's side: content inset and height of the QR/time band.
PAD = 0.11
BAND = 0.24


def stamp_time(moment: datetime) -> str:
    """The sealing time as shown on the stamp, e.g. ``2026-11-24 13:05 JST``."""
    return moment.astimezone(JST).strftime("%Y-%m-%d %H:%M JST")


def display_url(url: str) -> str:
    """The URL without its scheme: shorter on a small stamp, and still typeable."""
    return url.split("://", 1)[-1].rstrip("/")


# --- font ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubsetFont:
    """A TrueType subset with what a PDF CIDFontType2 needs, ready to embed many times."""

    ps_name: str
    program: bytes  # FlateDecode-compressed TrueType font program
    program_length: int
    gids: Mapping[str, int]
    widths: Mapping[int, int]  # glyph id -> advance in 1/1000 em
    ascent: int
    descent: int
    cap_height: int
    bbox: tuple[int, int, int, int]
    to_unicode: bytes  # ToUnicode CMap for every glyph of the subset

    def advance(self, text: str) -> float:
        """Width of ``text`` in em."""
        return sum(self.widths.get(self.gids.get(ch, 0), 1000) for ch in text) / 1000


@functools.lru_cache(maxsize=64)
def subset_font(path: str, chars: frozenset[str]) -> SubsetFont:
    """Subset ``path`` to ``chars`` (compact glyph ids, no hinting or layout tables: the seal
    places every glyph itself)."""
    from fontTools import subset, ttLib

    logging.getLogger("fontTools.subset").setLevel(logging.WARNING)  # INFO for every table
    tt = ttLib.TTFont(path, lazy=True)
    options = subset.Options()
    options.hinting = False
    options.layout_features = []
    options.notdef_outline = True
    options.drop_tables += ["GSUB", "GPOS", "GDEF", "BASE", "JSTF", "vhea", "vmtx", "VORG"]
    subsetter = subset.Subsetter(options)
    subsetter.populate(text="".join(sorted(chars)))
    subsetter.subset(tt)
    buf = io.BytesIO()
    tt.save(buf)
    raw = buf.getvalue()
    scale = 1000 / tt["head"].unitsPerEm
    order = tt.getGlyphOrder()
    gid_of = {name: gid for gid, name in enumerate(order)}
    cmap = tt.getBestCmap()
    gids = {chr(cp): gid_of[name] for cp, name in cmap.items() if chr(cp) in chars}
    widths = {gid: round(tt["hmtx"][name][0] * scale) for gid, name in enumerate(order)}
    head, hhea, os2 = tt["head"], tt["hhea"], tt["OS/2"]
    ps_name = tt["name"].getDebugName(6) or "KakuinSealFont"
    return SubsetFont(
        ps_name=ps_name.replace(" ", ""),
        program=zlib.compress(raw, 9),
        program_length=len(raw),
        gids=gids,
        widths=widths,
        ascent=round(hhea.ascent * scale),
        descent=round(hhea.descent * scale),
        cap_height=round(getattr(os2, "sCapHeight", 700) * scale),
        bbox=(
            round(head.xMin * scale),
            round(head.yMin * scale),
            round(head.xMax * scale),
            round(head.yMax * scale),
        ),
        to_unicode=_to_unicode_cmap(gids),
    )


def _to_unicode_cmap(gids: Mapping[str, int]) -> bytes:
    pairs = sorted((gid, ch) for ch, gid in gids.items())
    lines = [
        "/CIDInit /ProcSet findresource begin 12 dict begin begincmap",
        "/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def",
        "/CMapName /Adobe-Identity-UCS def /CMapType 2 def",
        "1 begincodespacerange <0000> <FFFF> endcodespacerange",
    ]
    for start in range(0, len(pairs), 100):  # at most 100 entries per block
        chunk = pairs[start : start + 100]
        lines.append(f"{len(chunk)} beginbfchar")
        lines += [f"<{gid:04x}> <{ch.encode('utf-16-be').hex()}>" for gid, ch in chunk]
        lines.append("endbfchar")
    lines.append("endcmap CMapName currentdict /CMap defineresource pop end end")
    return "\n".join(lines).encode("ascii")


class SealFontEngine(FontEngine):
    """A pyHanko font engine over a cached :class:`SubsetFont`: glyph ids straight from the
    cmap (no shaping: CJK ideographs and ASCII need none), objects written per document."""

    def __init__(self, writer: BasePdfFileWriter, font: SubsetFont) -> None:
        super().__init__(writer, font.ps_name, embedded_subset=True)
        self.font = font
        self._ref = writer.allocate_placeholder()
        self._written = False

    @property
    def uses_complex_positioning(self) -> bool:
        return False

    def glyphs(self, text: str) -> bytes:
        """``<gids> Tj`` for ``text``; a character missing from the subset shows .notdef."""
        gids = self.font.gids
        return b"<" + "".join(f"{gids.get(ch, 0):04x}" for ch in text).encode() + b"> Tj"

    def shape(self, txt: str) -> ShapeResult:
        return ShapeResult(self.glyphs(txt), self.font.advance(txt), 0)

    def as_resource(self) -> generic.IndirectObject:
        return self._ref

    def prepare_write(self) -> None:
        if self._written:  # the writer may prepare its fonts more than once
            return
        self._written = True
        font, writer = self.font, self.writer
        name = f"{self.subset_prefix}+{font.ps_name}"
        program = generic.StreamObject(
            {
                pdf_name("/Filter"): pdf_name("/FlateDecode"),
                pdf_name("/Length1"): generic.NumberObject(font.program_length),
            },
            encoded_data=font.program,
        )
        descriptor = generic.DictionaryObject(
            {
                pdf_name("/Type"): pdf_name("/FontDescriptor"),
                pdf_name("/FontName"): pdf_name("/" + name),
                pdf_name("/Flags"): generic.NumberObject(4),  # symbolic
                pdf_name("/FontBBox"): generic.ArrayObject(map(generic.NumberObject, font.bbox)),
                pdf_name("/ItalicAngle"): generic.NumberObject(0),
                pdf_name("/Ascent"): generic.NumberObject(font.ascent),
                pdf_name("/Descent"): generic.NumberObject(font.descent),
                pdf_name("/CapHeight"): generic.NumberObject(font.cap_height),
                pdf_name("/StemV"): generic.NumberObject(80),
                pdf_name("/FontFile2"): writer.add_object(program),
            }
        )
        widths = generic.ArrayObject()
        for gid in sorted(font.widths):
            widths.append(generic.NumberObject(gid))
            widths.append(generic.ArrayObject([generic.NumberObject(font.widths[gid])]))
        cid_font = generic.DictionaryObject(
            {
                pdf_name("/Type"): pdf_name("/Font"),
                pdf_name("/Subtype"): pdf_name("/CIDFontType2"),
                pdf_name("/BaseFont"): pdf_name("/" + name),
                pdf_name("/CIDSystemInfo"): generic.DictionaryObject(
                    {
                        pdf_name("/Registry"): generic.pdf_string("Adobe"),
                        pdf_name("/Ordering"): generic.pdf_string("Identity"),
                        pdf_name("/Supplement"): generic.NumberObject(0),
                    }
                ),
                pdf_name("/FontDescriptor"): writer.add_object(descriptor),
                pdf_name("/CIDToGIDMap"): pdf_name("/Identity"),
                pdf_name("/DW"): generic.NumberObject(1000),
                pdf_name("/W"): widths,
            }
        )
        to_unicode = generic.StreamObject(stream_data=font.to_unicode)
        to_unicode.compress()
        type0 = generic.DictionaryObject(
            {
                pdf_name("/Type"): pdf_name("/Font"),
                pdf_name("/Subtype"): pdf_name("/Type0"),
                pdf_name("/BaseFont"): pdf_name("/" + name),
                pdf_name("/Encoding"): pdf_name("/Identity-H"),
                pdf_name("/DescendantFonts"): generic.ArrayObject([writer.add_object(cid_font)]),
                pdf_name("/ToUnicode"): writer.add_object(to_unicode),
            }
        )
        writer.add_object(type0, idnum=self._ref.idnum)


# --- layout ----------------------------------------------------------------------------------


def grid_layout(count: int, width: float, height: float) -> tuple[list[int], float]:
    """Split ``count`` characters into columns (right to left, as a kakuin is read) for a
    ``width`` x ``height`` area: the column sizes, rightmost first, and the glyph size.

    Picks the column count that gives the largest glyphs; columns differ by at most one
    character, the longer ones first, and each column is spread over the full height.
    """
    if count <= 0:
        return [], 0.0
    best_cols, best_size = 1, 0.0
    for cols in range(1, count + 1):
        rows = math.ceil(count / cols)
        size = min(width / cols, height / rows)
        if size > best_size + 1e-9:
            best_cols, best_size = cols, size
    base, extra = divmod(count, best_cols)
    return [base + (1 if i < extra else 0) for i in range(best_cols)], best_size


@functools.lru_cache(maxsize=32)
def _qr_modules(url: str) -> tuple[int, tuple[tuple[int, int, int], ...]]:
    """The QR code of ``url`` as (modules per side, runs of dark modules (row, col, length))."""
    import qrcode
    import qrcode.constants

    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=0)
    qr.add_data(url)
    qr.make(fit=True)
    matrix = qr.get_matrix()
    runs = []
    for r, row in enumerate(matrix):
        c = 0
        while c < len(row):
            if row[c]:
                start = c
                while c < len(row) and row[c]:
                    c += 1
                runs.append((r, start, c - start))
            else:
                c += 1
    return len(matrix), tuple(runs)


@dataclass(frozen=True)
class KakuinStampStyle(BaseStampStyle):
    """The seal's content and look; the sealing time comes per signature as text param
    ``ts`` (see :func:`stamp_time`)."""

    organization_name: str = ""
    verify_url: str = ""
    font_file: str = DEFAULT_FONT
    color: tuple[float, float, float] = SEAL_RED
    #: A kakuin reads "<name>印"; set "" to show the bare name.
    suffix: str = "印"
    border_width: int = 0  # the base class's rectangle; the seal draws its own frame

    def seal_text(self) -> str:
        name = "".join(self.organization_name.split())
        if self.suffix and not name.endswith(self.suffix):
            name += self.suffix
        return name

    def font(self) -> SubsetFont:
        chars = frozenset(self.seal_text() + _TIME_CHARS + display_url(self.verify_url))
        return subset_font(self.font_file, chars)

    def create_stamp(
        self, writer: BasePdfFileWriter, box: layout.BoxConstraints, text_params: dict[str, Any]
    ) -> KakuinStamp:
        return KakuinStamp(writer, self, box, text_params)


class KakuinStamp(BaseStamp):
    """Draws the seal into a square of side min(width, height), centred in the box.

    Top: the name in columns inside a double frame. Bottom band: QR code (on white, so it
    scans over text) and two lines: sealing time and verification URL.
    """

    style: KakuinStampStyle

    def __init__(
        self,
        writer: BasePdfFileWriter,
        style: KakuinStampStyle,
        box: layout.BoxConstraints,
        text_params: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(writer, style, box)
        self.text_params = text_params or {}

    def _render_inner_content(self) -> list[bytes]:
        style = self.style
        assert self.writer is not None  # pyHanko sets it before rendering
        engine = SealFontEngine(self.writer, style.font())
        self.set_resource(ResourceType.FONT, pdf_name("/KF"), engine.as_resource())
        w, h = self.box.width, self.box.height
        side = min(w, h)
        ops: list[bytes] = [
            b"q 1 0 0 1 %.3f %.3f cm" % ((w - side) / 2, (h - side) / 2),
            b"%.3f %.3f %.3f RG %.3f %.3f %.3f rg" % (style.color + style.color),
        ]
        # double frame: a heavy outer line, a thin inner one
        outer = side * 0.035
        ops.append(b"%.3f w %.3f %.3f %.3f %.3f re S" % (
            outer, outer / 2, outer / 2, side - outer, side - outer))
        inset = side * 0.075
        ops.append(b"%.3f w %.3f %.3f %.3f %.3f re S" % (
            side * 0.012, inset, inset, side - 2 * inset, side - 2 * inset))
        pad = side * PAD
        band = side * BAND
        split = pad + band + side * 0.025
        ops.append(b"%.3f w %.3f %.3f m %.3f %.3f l S" % (
            side * 0.008, inset, split, side - inset, split))
        ops += self._name(engine, pad, split + side * 0.03, side - pad, side - pad)
        ops += self._band(engine, pad, pad, side - pad, band)
        ops.append(b"Q")
        return ops

    def _name(
        self, engine: SealFontEngine, x1: float, y1: float, x2: float, y2: float
    ) -> list[bytes]:
        text = self.style.seal_text()
        columns, size = grid_layout(len(text), x2 - x1, y2 - y1)
        if not columns:
            return []
        glyph = size * 0.9
        height = y2 - y1
        font = engine.font
        # the ideographic em box runs from descent to ascent: centre it in each cell
        centre_offset = (font.ascent + font.descent) / 2000
        # fill and stroke the glyphs: a little weight, like ink, and legible when small
        ops = [b"q BT 2 Tr %.3f w" % (size * 0.025)]
        pos = 0
        col_width = (x2 - x1) / len(columns)
        for index, count in enumerate(columns):
            cx = x2 - (index + 0.5) * col_width
            cell = height / count
            # fewer characters in a column: stretch them a little, as seal carvers do
            stretch = min(cell * 0.9, glyph * 1.35)
            for row in range(count):
                ch = text[pos]
                pos += 1
                cy = y2 - (row + 0.5) * cell
                advance = font.advance(ch)
                ops.append(b"/KF 1 Tf %.3f 0 0 %.3f %.3f %.3f Tm %s" % (
                    glyph, stretch, cx - advance * glyph / 2, cy - centre_offset * stretch,
                    engine.glyphs(ch)))
        ops.append(b"ET Q")
        return ops

    def _band(
        self, engine: SealFontEngine, x: float, y: float, x2: float, band: float
    ) -> list[bytes]:
        url = self.style.verify_url
        ops: list[bytes] = []
        text_x = x
        if url:
            modules, runs = _qr_modules(url)
            unit = band / (modules + 2)  # one module of white quiet zone on each side
            ops.append(b"q 1 1 1 rg %.3f %.3f %.3f %.3f re f Q" % (x, y, band, band))
            ops.append(b"q %.4f 0 0 %.4f %.3f %.3f cm" % (unit, -unit, x + unit, y + band - unit))
            ops += [b"%d %d %d 1 re" % (c, r, n) for r, c, n in runs]
            ops.append(b"f Q")
            text_x = x + band + band * 0.12
        lines = [str(self.text_params.get("ts", "")), display_url(url)]
        lines = [line for line in lines if line]
        if not lines:
            return ops
        font = engine.font
        room = x2 - text_x
        widest = max(font.advance(line) for line in lines) or 1.0
        size = min(band / (len(lines) + 0.6), room / widest)
        leading = band / len(lines)
        ops.append(b"BT")
        for i, line in enumerate(lines):
            base = y + band - (i + 0.5) * leading - size * 0.35
            ops.append(b"/KF %.3f Tf 1 0 0 1 %.3f %.3f Tm %s" % (
                size, text_x, base, engine.glyphs(line)))
        ops.append(b"ET")
        return ops
