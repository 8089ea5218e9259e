"""Test PDFs made here, without reportlab: pyHanko's writer with the IPAex font embedded as a
subset, plus a few hand-written byte strings.

The text goes through the seal's font engine (``signing.stamp.SealFontEngine``), not pyHanko's
``GlyphAccumulator``: pyHanko 0.38 writes IPAex's widths in font units (2048 per em) where PDF
wants 1000 per em, so its text comes out spread to twice its width.

``guidance_record()`` is a 3-page A4 指導要録 (cumulative guidance record) with Japanese text,
the document kakuin seals most; the benchmark seals it too.
"""

from __future__ import annotations

import functools
import io
import subprocess
import tempfile
from pathlib import Path

from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.generic import pdf_name
from pyhanko.pdf_utils.writer import PageObject, PdfFileWriter

from signing.stamp import DEFAULT_FONT, SealFontEngine, subset_font

A4 = (0.0, 0.0, 595.28, 841.89)
SCHOOL = "新宿区立第一中学校"

_PAGES: list[tuple[str, list[str]]] = [
    (
        "中学校生徒指導要録（学籍に関する記録）",
        [
            "生徒氏名　山田　花子（やまだ　はなこ）　性別　女",
            "生年月日　平成二十五年四月十二日",
            "現住所　東京都新宿区西新宿二丁目八番一号",
            "保護者氏名　山田　太郎",
            "入学・編入学等　令和八年四月一日　第一学年入学",
            "転学・退学等　令和九年三月三十一日　転学",
            "学校名及び所在地　" + SCHOOL + "　東京都新宿区",
            "校長氏名印　鈴木　一郎",
            "学級担任者氏名印　佐藤　美咲",
        ],
    ),
    (
        "指導に関する記録（各教科の学習の記録）",
        [
            "国語　知識・技能 A　思考・判断・表現 A　主体的に学習に取り組む態度 B　評定 4",
            "社会　知識・技能 B　思考・判断・表現 A　主体的に学習に取り組む態度 A　評定 4",
            "数学　知識・技能 A　思考・判断・表現 A　主体的に学習に取り組む態度 A　評定 5",
            "理科　知識・技能 B　思考・判断・表現 B　主体的に学習に取り組む態度 A　評定 3",
            "英語　知識・技能 A　思考・判断・表現 B　主体的に学習に取り組む態度 A　評定 4",
            "特別の教科　道徳：思いやりの心をもって友達と接することができた。",
            "総合的な学習の時間：地域の防災について調べ、発表した。",
        ],
    ),
    (
        "行動の記録・総合所見及び指導上参考となる諸事項",
        [
            "基本的な生活習慣　○　健康・体力の向上　○　自主・自律　○",
            "責任感　○　創意工夫　○　思いやり・協力　○",
            "生命尊重・自然愛護　○　勤労・奉仕　○　公正・公平　○",
            "総合所見：学級委員として学級をまとめ、行事では中心となって活躍した。",
            "出欠の記録：授業日数 二〇〇　欠席日数 二　出席日数 一九八",
            "以上、原本と相違ないことを証明する。",
        ],
    ),
]


def _line(font: SealFontEngine, size: float, x: float, y: float, text: str) -> bytes:
    return b"BT /F1 %g Tf 1 0 0 1 %g %g Tm %s ET" % (size, x, y, font.glyphs(text))


@functools.lru_cache(maxsize=4)
def guidance_record(pages: int = 3) -> bytes:
    """A 指導要録 of ``pages`` A4 pages; the school's name is at the top right of page 1,
    where a 角印 goes."""
    writer = PdfFileWriter()
    chars = frozenset("".join(t + "".join(lines) for t, lines in _PAGES) + SCHOOL + "- /0123456789")
    font = SealFontEngine(writer, subset_font(DEFAULT_FONT, chars | frozenset("校長鈴木一郎")))
    resources = generic.DictionaryObject(
        {pdf_name("/Font"): generic.DictionaryObject({pdf_name("/F1"): font.as_resource()})}
    )
    for index in range(pages):
        title, lines = _PAGES[index % len(_PAGES)]
        ops = [b"0 0 0 rg 0 0 0 RG"]
        ops.append(_line(font, 16, 60, 770, title))
        if index == 0:
            ops.append(_line(font, 11, 380, 730, SCHOOL))
            ops.append(_line(font, 11, 380, 714, "校長　鈴木　一郎"))
        ops.append(b"0.8 w 50 690 m 545 690 l S")
        y = 660.0
        for line in lines:
            ops.append(_line(font, 10.5, 60, y, line))
            ops.append(b"0.3 w 55 %g m 540 %g l S" % (y - 6, y - 6))
            y -= 30
        ops.append(_line(font, 9, 270, 40, f"- {index + 1} / {pages} -"))
        stream = generic.StreamObject(stream_data=b"\n".join(ops))
        stream.compress()
        writer.insert_page(PageObject(writer.add_object(stream), A4, resources))
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def pdf_from_objects(objects: list[bytes], root: int = 1) -> bytes:
    """A classic-xref PDF of these object bodies (numbered from 1), written by hand."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, root, xref)
    return bytes(out)


def minimal_pdf(text: str = "kakuin") -> bytes:
    """One A4 page in a standard font, written by hand: the smallest sealable PDF."""
    content = b"BT /F1 24 Tf 72 720 Td (%s) Tj ET" % text.encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    return pdf_from_objects(objects)


def encrypted_pdf(source: bytes | None = None) -> bytes:
    """``source`` encrypted with qpdf (AES-256, empty user password: it still opens)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "in.pdf"), Path(tmp, "out.pdf")
        src.write_bytes(source or minimal_pdf())
        subprocess.run(
            ["qpdf", "--encrypt", "", "owner-secret", "256", "--", str(src), str(dst)],
            check=True,
            capture_output=True,
        )
        return dst.read_bytes()


if __name__ == "__main__":  # write the guidance record for a look: python -m tests.fixtures_pdf
    Path("guidance-record.pdf").write_bytes(guidance_record())
