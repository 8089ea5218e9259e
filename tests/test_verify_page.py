"""The public verification page (GET/POST /verify): HTTP behaviour and a headless Chromium
screenshot of the form and of a verdict."""

from __future__ import annotations

import http.server
import os
import shutil
import struct
import subprocess
import threading
import urllib.request
import zlib
from pathlib import Path

import pytest

from tests.cafixtures import Env, routed_fetch
from tests.fixtures_pdf import guidance_record
from tests.test_seal_api import _multipart, _post

CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; "
       "style-src 'self' 'unsafe-inline'; img-src 'self' data:")
GREEN = (0x2E, 0x7D, 0x32)  # .verdict.passed in verify.css
NAVY = (0x1D, 0x35, 0x57)  # the page header


def _get(url: str) -> tuple[int, dict[str, str], str]:
    with urllib.request.urlopen(url, timeout=60) as resp:
        return resp.status, dict(resp.headers), resp.read().decode()


@pytest.fixture(scope="module")
def sealed(sealer: Env, settings) -> bytes:  # type: ignore[no-untyped-def]
    assert sealer.services is not None
    sealer.services.signing.fetch = routed_fetch(settings.base_url, sealer.url)
    body, ctype = _multipart({"level": "B-LTA"}, guidance_record(pages=1))
    code, _, pdf = _post(f"{sealer.url}/api/v1/seal/pdf", body, ctype, sealer.school)
    assert code == 200, pdf[:300]
    return pdf


def _verify_html(env: Env, data: bytes, query: str = "") -> tuple[int, dict[str, str], str]:
    body, ctype = _multipart({}, data, filename="sealed.pdf")
    code, headers, raw = _post(f"{env.url}/verify{query}", body, ctype)
    return code, headers, raw.decode()


def test_verify_page_http(sealer: Env, sealed: bytes) -> None:
    code, headers, html = _get(f"{sealer.url}/verify")
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert headers["Content-Security-Policy"] == CSP
    assert '<html lang="ja">' in html and "確認する" in html and 'type="file"' in html
    assert "?lang=en" in html  # the language switch
    assert "http://" not in html and "https://" not in html  # nothing from outside
    code, _, css = _get(f"{sealer.url}/verify/static/verify.css")
    assert code == 200 and ".verdict.passed" in css

    code, _, html = _get(f"{sealer.url}/verify?lang=en")
    assert '<html lang="en">' in html and "Check a sealed document" in html
    assert "日本語" in html

    code, headers, html = _verify_html(sealer, sealed)
    assert code == 200, html[:2000]
    assert headers["Content-Security-Policy"] == CSP
    assert "確認できました" in html and 'class="verdict passed"' in html
    assert "新宿区立第一中学校" in html and "JST" in html
    assert "封印後に内容が変更されていない" in html  # the integrity check in plain words
    assert "TOTAL-PASSED" in html  # only in the small details line
    headline = html.split('class="headline"', 1)[1].split("</p>", 1)[0]
    assert "TOTAL" not in headline and "PASSED" not in headline

    code, _, html = _verify_html(sealer, sealed, "?lang=en")
    assert code == 200 and "Verified" in html and "The content has not changed" in html

    flipped = bytearray(sealed)
    flipped[len(flipped) // 3] ^= 0x01
    code, _, html = _verify_html(sealer, bytes(flipped))
    assert code in (200, 422), html[:500]
    if code == 200:
        assert "確認できました" not in html

    code, headers, html = _verify_html(sealer, b"hello, not a sealed document")
    assert code == 422 and headers["Content-Type"].startswith("text/html")
    assert "封印された文書" in html and "<form" in html
    for junk in (b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n%%EOF", b"{}", b'{"payload": 1}',
                 b"eyJhbGciOiJFUzI1NiJ9.e30.AAAA", sealed[: len(sealed) // 2]):
        code, _, html = _verify_html(sealer, junk)
        assert code in (200, 422), (junk[:40], html[:500])
        assert "確認できました" not in html
    code, _, html = _verify_html(sealer, b"<script>alert(1)</script>", "?lang=en")
    assert code == 422 and "sealed document" in html and "<script>alert(1)" not in html


# -- headless Chromium ---------------------------------------------------------------------------


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "chromium"], capture_output=True, env=env,
                       timeout=900, check=False)
        found = shutil.which("chromium")
    return found


def _screenshot(chromium: str, url: str, out: Path) -> None:
    profile = out.parent / f"profile-{out.stem}"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
         "--window-size=1200,1600", f"--screenshot={out}", url],
        capture_output=True, timeout=120, check=False,
    )
    assert out.exists() and out.stat().st_size > 1000, f"no screenshot of {url}"


def _pixels(png: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Decode an 8-bit, non-interlaced RGB/RGBA PNG (what Chromium writes) to RGB pixels."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    width = height = color = 0
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        chunk = png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
            assert depth == 8 and color in (2, 6) and interlace == 0
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    bpp = 4 if color == 6 else 3
    raw, stride = zlib.decompress(idat), width * bpp
    prev, pixels = bytearray(stride), []
    for y in range(height):
        start = y * (stride + 1)
        ftype, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + b) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        pixels.extend(tuple(line[i:i + 3]) for i in range(0, stride, bpp))
        prev = line
    return width, height, pixels  # type: ignore[return-value]


def _share(pixels: list[tuple[int, int, int]], rgb: tuple[int, int, int], tol: int = 12) -> float:
    near = sum(1 for p in pixels if all(abs(p[k] - rgb[k]) <= tol for k in range(3)))
    return near / len(pixels)


def _serve(html: str, base: str) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve one HTML page from 127.0.0.1 (its static files still come from ``base``)."""
    body = html.replace("<head>", f'<head><base href="{base}/">', 1).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/result.html"


def test_verify_page_in_chromium(sealer: Env, sealed: bytes, tmp_path: Path) -> None:
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed and could not be installed (needs root and apt)")

    form_png = tmp_path / "form.png"
    _screenshot(chromium, f"{sealer.url}/verify", form_png)
    width, height, pixels = _pixels(form_png.read_bytes())
    assert (width, height) == (1200, 1600)
    assert len(set(pixels[:: 37])) > 20, "the form page looks blank"
    assert _share(pixels, NAVY) > 0.01, "the header (served CSS) did not render"
    assert _share(pixels, GREEN) < 0.001

    code, _, html = _verify_html(sealer, sealed)
    assert code == 200
    server, url = _serve(html, sealer.url)
    try:
        result_png = tmp_path / "result.png"
        _screenshot(chromium, url, result_png)
    finally:
        server.shutdown()
        server.server_close()
    _, _, pixels = _pixels(result_png.read_bytes())
    assert len(set(pixels[:: 37])) > 20, "the result page looks blank"
    assert _share(pixels, GREEN) > 0.02, "no green verdict box in the screenshot"
    keep = os.environ.get("KAKUIN_SCREENSHOT_DIR")
    if keep:
        shutil.copy(result_png, Path(keep) / "verify-page.png")
        shutil.copy(form_png, Path(keep) / "verify-form.png")
