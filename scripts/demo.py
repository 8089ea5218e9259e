"""``make demo``: two regions end to end, told in plain words (Japanese and English).

Region A (東京都) and region B (北海道) are two kakuin instances (own home, SoftHSM token,
database and port) under ``var/demo/region-a`` and ``var/demo/region-b``, wiped at start. A
school in A seals a 指導要録 PDF and a JSON record; B, which imported A's trust list, verifies
them over real HTTP (fetching A's OCSP/CRL); A revokes the seal; B verifies again.

Leaves the sealed files, the trust list and ``report.html`` under ``var/demo/``; exits 1 if
any expectation fails. The flow itself is ``tests.test_two_regions.TwoRegions``.
"""

from __future__ import annotations

import html
import json
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.test_two_regions import (  # noqa: E402  (after the sys.path line)
    GUIDANCE_JSON,
    SCHOOL_NAME,
    HttpError,
    Sealed,
    TwoRegions,
    http,
)

OUT = REPO / "var" / "demo"


def say(ja: str, en: str) -> None:
    print(f"・{ja}\n  {en}", flush=True)


class Demo:
    def __init__(self) -> None:
        self.two = TwoRegions(OUT)
        self.rows: list[dict[str, Any]] = []
        self.failures: list[str] = []

    def expect(self, ok: bool, what: str) -> None:
        mark = "OK " if ok else "NG "
        print(f"  [{mark}] {what}", flush=True)
        if not ok:
            self.failures.append(what)

    def check(self, doc: Sealed, phase: str, want_pass: bool) -> None:
        report = self.two.b.verify(doc.data, doc.filename)
        seal = next((s for s in report["signatures"] if s["kind"] == "seal"), {})
        by = seal.get("sealed_by", {}) if seal else {}
        verdict = report["indication"] + (f" / {report['sub_indication']}"
                                          if report.get("sub_indication") else "")
        self.rows.append({
            "document": doc.filename, "level": doc.level, "phase": phase,
            "verdict": verdict, "passed": report["indication"] == "TOTAL-PASSED",
            "expected": "TOTAL-PASSED" if want_pass else "not TOTAL-PASSED",
            "organization": by.get("organization", ""),
            "signing_time": seal.get("signing_time") or "",
            "poe": seal.get("best_signature_time") or "",
            "checked_at": report.get("checked_at", ""),
            "failed_checks": [c["name"] for s in report["signatures"] for c in s["checks"]
                              if not c["passed"]],
        })
        passed = report["indication"] == "TOTAL-PASSED"
        if passed:
            say(f"B 地域が {doc.filename} ({doc.level}) を検証: 有効 (TOTAL-PASSED)",
                f"Region B verified {doc.filename} ({doc.level}): valid (TOTAL-PASSED)")
        else:
            say(f"B 地域が {doc.filename} ({doc.level}) を検証: 有効と認められません ({verdict})",
                f"Region B verified {doc.filename} ({doc.level}): not valid ({verdict})")
        self.expect(passed == want_pass,
                    f"{doc.filename} {phase}: expected {self.rows[-1]['expected']}, got {verdict}")

    def run(self) -> None:
        two = self.two
        OUT.mkdir(parents=True, exist_ok=True)
        two.wipe()
        for stale in [*OUT.glob("*.pdf"), *OUT.glob("*.json"), OUT / "report.html"]:
            stale.unlink(missing_ok=True)

        say("A 地域 (東京都) と B 地域 (北海道) の鍵生成式を行います "
            "(HSM トークンは地域ごとに別)",
            "Key ceremonies for region A (Tokyo) and region B (Hokkaido), "
            "each with its own HSM token")
        two.init()
        two.start()
        say(f"A 地域は {two.a.url}、B 地域は {two.b.url} で稼働中です",
            f"Region A serves on {two.a.url}, region B on {two.b.url}")

        cert = two.bootstrap_school()
        say(f"A 地域で新宿区教育委員会が{SCHOOL_NAME}を登録し、運用者が確認し、学校が申請した"
            f"電子シール (角印) を教育委員会が承認しました (証明書シリアル {cert['serial']})",
            f"In region A the Shinjuku board registered the school, the operator confirmed it, "
            f"and the board approved the seal the school requested "
            f"(certificate serial {cert['serial']})")

        trust = two.import_trust()
        (OUT / "trust-list-region-a.json").write_bytes(http("GET", f"{two.a.url}/trust-list")[2])
        say("B 地域が A 地域のトラストリストを取り込みました "
            f"(署名者 SHA-256 {trust['pin'][:16]}…)",
            "Region B imported region A's signed trust list, pinned by its signer's fingerprint")

        lta = two.seal_pdf("B-LTA", "guidance-record-B-LTA")
        bt = two.seal_pdf("B-T", "guidance-record-B-T")
        bb = two.seal_pdf("B-B", "guidance-record-B-B")
        rec = two.seal_json("B-T", "guidance-record", GUIDANCE_JSON)
        for doc in (lta, bt, bb, rec):
            (OUT / doc.filename).write_bytes(doc.data)
        say(f"A 地域で{SCHOOL_NAME}が指導要録 (PDF) に電子シールを押しました "
            "(B-LTA・B-T はタイムスタンプ付き、B-B はタイムスタンプなし)",
            "School in region A sealed a guidance record (PDF) at levels B-LTA and B-T "
            "(with timestamps) and B-B (without)")
        say("同じ学校が指導要録の JSON レコードにも電子シール (JAdES B-T) を押しました",
            "The same school sealed a JSON guidance record (JAdES B-T)")

        say("B 地域が、A 地域の OCSP/CRL を HTTP で取得しながら検証します (失効前)",
            "Region B verifies everything, fetching region A's OCSP/CRL over HTTP "
            "(before revocation)")
        for doc in (lta, bt, bb, rec):
            self.check(doc, "before revocation", want_pass=True)

        time.sleep(1.5)
        revoked = two.revoke()
        say(f"A 地域の教育委員会が{SCHOOL_NAME}の電子シールを失効させました (理由: 鍵の危殆化)",
            f"Region A's board revoked the school's e-seal (reason: key compromise); "
            f"status {revoked.get('status')}")
        self.expect(revoked.get("status") == "revoked", "certificate status is revoked")

        say("B 地域がもう一度検証します (失効後)", "Region B verifies again (after revocation)")
        for doc in (lta, bt, rec):
            self.check(doc, "after revocation", want_pass=True)
        say("タイムスタンプ付きの文書は、失効より前に存在した証拠 (POE) があるので有効のままです "
            "(EN 319 102-1)",
            "Timestamped documents keep their proof: they existed before the revocation "
            "(EN 319 102-1)")
        self.check(bb, "after revocation", want_pass=False)
        say("タイムスタンプのない B-B 文書は、失効前に押された証拠がないため有効と認められません",
            "The B-B document has no timestamp, so nothing proves it was sealed before the "
            "revocation: it no longer passes")

        for label, attempt in (("PDF", lambda: two.seal_pdf("B-T", "after")),
                               ("JSON", lambda: two.seal_json("B-T", "after", GUIDANCE_JSON))):
            try:
                attempt()
            except HttpError as exc:
                detail = _problem(exc.body)
                say(f"失効後に A 地域で {label} に押そうとしましたが拒否されました "
                    f"(HTTP {exc.status})",
                    f"After the revocation region A refused to seal a {label} "
                    f"(HTTP {exc.status}: {detail})")
                self.rows.append({
                    "document": f"new {label} (sealing attempt)", "level": "B-T",
                    "phase": "after revocation", "verdict": f"refused: HTTP {exc.status} {detail}",
                    "passed": False, "expected": "refused", "organization": SCHOOL_NAME,
                    "signing_time": "", "poe": "", "checked_at": _now(), "failed_checks": []})
                self.expect(400 <= exc.status < 500, f"{label} sealing after revocation refused")
            else:
                self.expect(False, f"{label} sealing after revocation refused")

    def write_report(self) -> Path:
        two = self.two
        rows = "\n".join(
            "<tr class='{cls}'><td>{document}</td><td>{level}</td><td>{phase}</td>"
            "<td>{verdict}</td><td>{expected}</td><td>{organization}</td><td>{signing_time}</td>"
            "<td>{poe}</td><td>{checked_at}</td><td>{failed}</td></tr>".format(
                cls="pass" if r["passed"] else "fail",
                failed=html.escape(", ".join(r["failed_checks"])),
                **{k: html.escape(str(v)) for k, v in r.items() if k != "failed_checks"})
            for r in self.rows)
        outcome = ("すべての期待どおり / every expectation met" if not self.failures
                   else "期待と異なる結果あり / unexpected results: "
                   + html.escape("; ".join(self.failures)))
        page = f"""<!doctype html>
<html lang="ja"><head><meta charset="utf-8"><title>kakuin: two regions demo</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
td, th {{ border: 1px solid #999; padding: 4px 8px; text-align: left; vertical-align: top; }}
tr.pass td:nth-child(4) {{ color: #060; font-weight: bold; }}
tr.fail td:nth-child(4) {{ color: #a00; font-weight: bold; }}
</style></head><body>
<h1>二地域の検証デモ / Two regions demo</h1>
<p>Region A: {html.escape(two.a.region)} at {html.escape(two.a.url)};
region B: {html.escape(two.b.region)} at {html.escape(two.b.url)}.<br>
School: {html.escape(SCHOOL_NAME)}; seal certificate serial {html.escape(two.serial)};
trust list signer pin {html.escape(two.trust_pin)}.<br>
Generated {html.escape(_now())}.</p>
<p><strong>{outcome}</strong></p>
<table>
<tr><th>document</th><th>level</th><th>when verified</th><th>verdict at B</th><th>expected</th>
<th>organization</th><th>signing time (claimed)</th><th>proof of existence</th>
<th>checked at</th><th>failed checks</th></tr>
{rows}
</table>
<p>Documents timestamped before the revocation keep their proof of existence under
EN 319 102-1; a document without a timestamp has none, and the revoked seal cannot seal
anything new.</p>
</body></html>
"""
        path = OUT / "report.html"
        path.write_text(page, encoding="utf-8")
        (OUT / "report.json").write_text(json.dumps(self.rows, ensure_ascii=False, indent=2),
                                         encoding="utf-8")
        return path


def _problem(body: bytes) -> str:
    try:
        doc = json.loads(body)
        return str(doc.get("detail") or doc.get("title") or "")[:200]
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def main() -> int:
    demo = Demo()
    try:
        demo.run()
    except Exception:
        traceback.print_exc()
        demo.failures.append("the demo stopped on an error (see above)")
        for r in (demo.two.a, demo.two.b):
            tail = r.log_tail(2000)
            if tail:
                print(f"--- region {r.key} server log (tail) ---\n{tail}", file=sys.stderr)
    finally:
        demo.two.stop()
    path = demo.write_report()
    print()
    if demo.failures:
        print(f"期待と異なる結果がありました / Unexpected results: {len(demo.failures)}")
        for f in demo.failures:
            print(f"  - {f}")
    else:
        print("すべて期待どおりでした / Everything went as expected.")
    print(f"封印済みファイルとレポート / Sealed files and report: {OUT.relative_to(REPO)}/ "
          f"({path.name})")
    return 1 if demo.failures else 0


if __name__ == "__main__":
    sys.exit(main())
