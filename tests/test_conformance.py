"""``kakuin conformance vectors DIR``: the corpus is generated once (real CLI, throwaway CA
with its own home and ceremony), its CA served again for online revocation; kakuin's own
verifier matches every expected ETSI verdict, and pyHanko's validator, used directly, agrees
on pass/fail for every PDF vector."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import x509 as asn1_x509
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.validation import validate_pdf_signature
from pyhanko_certvalidator import ValidationContext

from kakuin import conformance

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    directory = tmp_path_factory.mktemp("conformance") / "corpus"
    proc = subprocess.run([sys.executable, "-m", "kakuin", "conformance", "vectors",
                           str(directory)], cwd=REPO, capture_output=True, text=True,
                          timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((directory / "manifest.json").read_text())
    with conformance.serving_ca(directory):
        yield directory, manifest


def test_manifest_names_files_and_expectations(corpus: tuple[Path, dict[str, Any]]) -> None:
    directory, manifest = corpus
    assert manifest["schema"] == conformance.SCHEMA
    files = sorted(p.name for p in (directory / "vectors").iterdir())
    assert files == [v["file"] for v in manifest["vectors"]]  # sorted, nothing unlisted
    for v in manifest["vectors"]:
        fmt, verdict, _ = v["file"].split("-", 2)
        assert fmt == v["format"] and verdict in ("pass", "fail")
        assert (verdict == "pass") == (v["expected"]["indication"] == "TOTAL-PASSED")
    levels = {(v["format"], v["level"]) for v in manifest["vectors"] if "-pass-" in v["file"]}
    assert levels >= {("pades", "B-B"), ("pades", "B-T"), ("pades", "B-LT"),
                      ("pades", "B-LTA"), ("jades", "B-B"), ("jades", "B-T")}
    assert len([v for v in manifest["vectors"] if "-fail-" in v["file"]]) >= 7
    assert (directory / manifest["trust_list"]).read_bytes().startswith(b"{")


def test_kakuin_verifier_scores_100_percent(corpus: tuple[Path, dict[str, Any]]) -> None:
    directory, manifest = corpus
    wrong = {}
    for v in manifest["vectors"]:
        got = conformance.kakuin_verdict(directory, v["file"])
        want = (v["expected"]["indication"], v["expected"]["sub_indication"])
        if got != want:
            wrong[v["file"]] = (got, want)
    assert not wrong


def _tst_time(sig: Any) -> datetime | None:
    for attr in sig.signer_info["unsigned_attrs"] or []:
        if attr["type"].native == "signature_time_stamp_token":
            tst = attr["values"][0]["content"]["encap_content_info"]["content"].parsed
            when: datetime = tst["gen_time"].native
            return when
    return None


def test_pyhanko_agrees_on_pass_fail(corpus: tuple[Path, dict[str, Any]]) -> None:
    directory, manifest = corpus
    root = asn1_x509.Certificate.load((directory / manifest["trust_anchor"]).read_bytes())
    disagree = {}
    for v in (v for v in manifest["vectors"] if v["format"] == "pades"):
        data = (directory / "vectors" / v["file"]).read_bytes()
        try:
            sig = PdfFileReader(BytesIO(data), strict=False).embedded_signatures[0]
            # Validate at the signature timestamp's time when there is one (past validation:
            # the timestamp is the proof of existence), else now.
            status = validate_pdf_signature(sig, ValidationContext(
                trust_roots=[root], allow_fetching=True, moment=_tst_time(sig),
                retroactive_revinfo=True))
            passed = bool(status.bottom_line)
        except Exception:  # pyHanko refusing the file is a failure verdict
            passed = False
        if passed != (v["expected"]["indication"] == "TOTAL-PASSED"):
            disagree[v["file"]] = passed
    assert not disagree


def _verifier_cli(directory: Path, *args: str) -> tuple[int, dict[str, Any]]:
    report = directory.parent / "report.json"
    env = {**os.environ, "KAKUIN_FETCH_ALLOW_NETWORKS": "127.0.0.0/8"}
    proc = subprocess.run([sys.executable, "-m", "kakuin", "conformance", "verifier",
                           str(directory), "--no-serve-ca", "--report", str(report), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
                          check=False)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    return proc.returncode, json.loads(report.read_text())


def test_verifier_check_scores_a_naive_verifier_down(
        corpus: tuple[Path, dict[str, Any]]) -> None:
    """A "verifier" that accepts everything agrees only on the passing vectors."""
    directory, manifest = corpus
    code, report = _verifier_cli(directory, "--cmd", "true {file}", "--verdict-from", "exit")
    failing = {v["file"] for v in manifest["vectors"] if "-fail-" in v["file"]}
    assert code == 1
    assert {r["file"] for r in report["vectors"] if not r["pass_fail_agrees"]} == failing
    score = report["score"]["pass_fail"]
    assert score["total"] == len(manifest["vectors"])
    assert score["agree"] == len(manifest["vectors"]) - len(failing)


def test_verifier_check_json_verdicts_of_kakuin_cli(corpus: tuple[Path, dict[str, Any]]) -> None:
    """kakuin's own CLI as the vendor's verifier (its home is the corpus CA's), JSON verdicts,
    on the failing vectors: every pass/fail agrees, every parsed indication is the expected."""
    directory, _ = corpus
    cmd = f"{sys.executable} -m kakuin --home {directory / 'ca'} verify --json {{file}}"
    code, report = _verifier_cli(directory, "--cmd", cmd, "--verdict-from", "json",
                                 "--match", "*-fail-*")
    rows = report["vectors"]
    assert len(rows) >= 7 and all(r["pass_fail_agrees"] for r in rows), rows
    parsed = [r for r in rows if r["indication"] is not None]
    assert len(parsed) >= len(rows) - 1 and all(r["sub_indication_agrees"] for r in parsed), rows
    assert code == (0 if len(parsed) == len(rows) else 1)


def test_producer_check_passes_kakuin_and_fails_plain_pyhanko(
        corpus: tuple[Path, dict[str, Any]]) -> None:
    """kakuin's B-LTA visible seal meets every rule; a PDF sealed by plain pyHanko with a
    self-made certificate fails with the right reasons (no QcType eseal, no visible seal, none
    of the B-T/B-LT/B-LTA material), and claiming less than delivered is what is checked."""
    directory, _ = corpus
    good = directory / "vectors" / "pades-pass-b-lta-visible.pdf"
    plain = directory / "vectors" / "pades-fail-unknown-anchor.pdf"
    proc = subprocess.run([sys.executable, "-m", "kakuin", "conformance", "producer",
                           "--level", "B-LTA", str(good), str(plain)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    results = json.loads(proc.stdout)
    assert results[str(good)]["passed"] is True
    failed = {r["rule"]: r["reason"] for r in results[str(plain)]["rules"] if not r["passed"]}
    assert set(failed) == {"visible-seal", "eseal-qctype", "signature-timestamp",
                           "revocation-data", "document-timestamp"}, failed
    assert all(failed.values())
    bt = (directory / "vectors" / "pades-pass-b-t-visible.pdf").read_bytes()
    assert conformance.check_producer_pdf(bt, level="B-T")["passed"] is True
    assert {r["rule"] for r in conformance.check_producer_pdf(bt, level="B-LT")["rules"]
            if not r["passed"]} == {"revocation-data"}
