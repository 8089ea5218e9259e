"""`kakuin seal pdf|json` and `kakuin lta renew` on the real services."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from pyhanko.pdf_utils.reader import PdfFileReader

from kakuin.cli import main
from tests.cafixtures import Env, _validate
from tests.fixtures_pdf import guidance_record


def _run(env: Env, settings, *args: str) -> str:
    url = env.store.engine.url.render_as_string(hide_password=False)
    out = CliRunner().invoke(main, ["--home", str(settings.home), *args],
                             env={"KAKUIN_DATABASE_URL": url}, catch_exceptions=False)
    assert out.exit_code == 0, out.output
    return out.output


def test_seal_pdf_and_renew(sealer: Env, settings, tmp_path: Path) -> None:
    source = tmp_path / "record.pdf"
    source.write_bytes(guidance_record(pages=2))
    target = tmp_path / "sealed.pdf"
    out = _run(sealer, settings, "seal", "pdf", str(source), str(target), "--org",
               str(sealer.school_id), "--level", "B-LTA")
    assert "B-LTA" in out
    sealed = target.read_bytes()
    result = _validate(sealed, sealer)
    assert result.intact and result.valid and result.trusted
    before = len(PdfFileReader(io.BytesIO(sealed)).embedded_timestamp_signatures)

    out = _run(sealer, settings, "lta", "renew", str(target), "--within-days", "1")
    assert "not due" in out
    out = _run(sealer, settings, "lta", "renew", str(target), "--force")
    assert "renewed" in out
    after = PdfFileReader(io.BytesIO(target.read_bytes())).embedded_timestamp_signatures
    assert len(after) == before + 1


def test_seal_json(sealer: Env, settings, tmp_path: Path) -> None:
    source = tmp_path / "record.json"
    source.write_text(json.dumps({"学校": "新宿区立第一中学校", "学年": 3}, ensure_ascii=False))
    target = tmp_path / "record.jws.json"
    _run(sealer, settings, "seal", "json", str(source), str(target), "--org",
         str(sealer.school_id), "--level", "B-B")
    jws = json.loads(target.read_text())
    assert {"protected", "payload", "signature"} <= set(jws)


def test_seal_pdf_remote_over_csc(sealer: Env, settings, tmp_path: Path) -> None:
    source = tmp_path / "record.pdf"
    source.write_bytes(guidance_record(pages=1))
    target = tmp_path / "sealed-remote.pdf"
    out = CliRunner().invoke(main, ["--home", str(settings.home), "seal", "pdf", str(source),
                                    str(target), "--remote", sealer.url, "--level", "B-B"],
                             env={"KAKUIN_TOKEN": sealer.school}, catch_exceptions=False)
    assert out.exit_code == 0, out.output
    result = _validate(target.read_bytes(), sealer)
    assert result.intact and result.valid and result.trusted


def test_console_cannot_seal_without_a_hosted_seal(sealer: Env, settings, tmp_path: Path):
    source = tmp_path / "record.pdf"
    source.write_bytes(guidance_record(pages=1))
    url = sealer.store.engine.url.render_as_string(hide_password=False)
    out = CliRunner().invoke(main, ["--home", str(settings.home), "seal", "pdf", str(source),
                                    str(tmp_path / "x.pdf"), "--org", "999999"],
                             env={"KAKUIN_DATABASE_URL": url})
    assert out.exit_code == 1 and "no valid hosted e-seal" in out.output


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
