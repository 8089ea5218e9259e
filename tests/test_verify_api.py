"""POST /api/v1/verify and `kakuin verify` against the instance's own trust list."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from click.testing import CliRunner

from ca import audit
from kakuin.cli import main
from tests.cafixtures import Env, routed_fetch
from tests.fixtures_pdf import guidance_record
from tests.test_seal_api import _multipart, _post


def _seal(env: Env, level: str) -> bytes:
    body, ctype = _multipart({"level": level}, guidance_record(pages=1))
    code, _, sealed = _post(f"{env.url}/api/v1/seal/pdf", body, ctype, env.school)
    assert code == 200, sealed[:300]
    return sealed


def test_verify_api_and_cli(sealer: Env, settings, tmp_path: Path) -> None:
    assert sealer.services is not None
    sealer.services.signing.fetch = routed_fetch(settings.base_url, sealer.url)
    sealed = _seal(sealer, "B-LTA")  # carries its own revocation data: verifiable offline
    body, ctype = _multipart({}, sealed, filename="sealed.pdf")
    code, headers, raw = _post(f"{sealer.url}/api/v1/verify", body, ctype)  # no token: public
    assert code == 200, raw[:500]
    report = json.loads(raw)
    failed = [
        (sig["kind"], c["name"], c["detail"])
        for sig in report["signatures"]
        for c in sig["checks"]
        if c["passed"] is not True
    ]
    assert report["indication"] == "TOTAL-PASSED", failed
    seal = next(s for s in report["signatures"] if s["kind"] == "seal")
    assert seal["sealed_by"]["organization"] == "新宿区立第一中学校"

    tampered = sealed.replace(b"%%EOF", b"%%EOF\n% appended garbage\n", 1)
    body, ctype = _multipart({}, tampered[:-200], filename="bad.pdf")
    code, headers, raw = _post(f"{sealer.url}/api/v1/verify", body, ctype)
    assert code in (200, 422)
    if code == 200:
        assert json.loads(raw)["indication"] != "TOTAL-PASSED"

    code, headers, raw = _post(f"{sealer.url}/api/v1/verify", b"hello", "text/plain")
    assert code == 422 and headers["Content-Type"] == "application/problem+json"

    path = tmp_path / "sealed.pdf"
    path.write_bytes(sealed)
    url = sealer.store.engine.url.render_as_string(hide_password=False)
    out = CliRunner().invoke(
        main,
        ["--home", str(settings.home), "verify", str(path)],
        env={"KAKUIN_DATABASE_URL": url},
        catch_exceptions=False,
    )
    # B-LTA carries its own validation data: the console verifies it without the network.
    assert out.exit_code == 0 and "TOTAL-PASSED" in out.output, out.output
    bad = tmp_path / "bad.pdf"
    flipped = bytearray(sealed)
    flipped[len(flipped) // 3] ^= 0x01
    bad.write_bytes(bytes(flipped))
    out = CliRunner().invoke(
        main,
        ["--home", str(settings.home), "verify", str(bad), "--json"],
        env={"KAKUIN_DATABASE_URL": url},
    )
    assert out.exit_code == 1


def test_uploads_are_not_kept(sealer: Env) -> None:
    """Anonymous verification is counted (``on_verified``), not stored: no audit row, no
    document, nothing written to the database (issue 10 item 8)."""
    sealed = _seal(sealer, "B-LTA")
    seen: list[str] = []
    sealer.services.signing.on_verified = lambda report: seen.append(report.indication)
    try:
        with sealer.store.session() as s:
            before = len(audit.entries(s, limit=100_000))
        body, ctype = _multipart({}, sealed)
        _post(f"{sealer.url}/api/v1/verify", body, ctype)
        with sealer.store.session() as s:
            entries = audit.entries(s, limit=100_000)
    finally:
        sealer.services.signing.on_verified = None
    assert len(entries) == before
    assert hashlib.sha256(sealed).hexdigest() not in {e.digest for e in entries}
    assert seen == ["TOTAL-PASSED"]
