"""Run by the Python of a fresh venv holding only kakuin-client (tests/test_sdk.py): every SDK
flow against a live kakuin over HTTP. Prints one JSON object of what it saw.

argv[1]: JSON {"url", "school", "officer", "pin", "pdf": bool, "pdf_path"}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import kakuin_client as kc

cfg = json.loads(sys.argv[1])
out: dict[str, object] = {}
try:
    import kakuin  # noqa: F401
    out["kakuin_importable"] = True
except ImportError:
    out["kakuin_importable"] = False

school = kc.KakuinClient(cfg["url"], cfg["school"], timeout=60)
officer = kc.KakuinClient(cfg["url"], cfg["officer"], timeout=60)
anonymous = kc.KakuinClient(cfg["url"])

# Request a seal; the board's officer approves; wait_for_approval sees the certificate.
req = school.request_seal(algorithm="ECDSA-P256")
officer.transport.json("POST", f"/api/v1/seal-requests/{req['id']}/approve", {})
done = school.wait_for_approval(req["id"], timeout=60, poll=0.2)
out["issued"] = done["status"], bool(done["certificate"])

record = {"pupil": "山田太郎", "grade": 2, "note": "指導要録"}
jws = school.seal_json(record, level="B-B")
out["json_verify"] = anonymous.verify(json.dumps(jws).encode()).indication
batch = school.seal_json_batch([record, {"pupil": "佐藤花子"}], level="B-B")
out["batch"] = [anonymous.verify(json.dumps(s).encode()).indication for s in batch]
tampered = dict(jws)
tampered["payload"] = jws["payload"][:-2] + ("AA" if jws["payload"][-2:] != "AA" else "BB")
out["tampered"] = anonymous.verify(json.dumps(tampered).encode()).indication

# One exception type per problem type.
for name, call in (("unauthenticated", lambda: kc.KakuinClient(cfg["url"], "nope").seal_json(
                        record, level="B-B")),
                   ("bad_level", lambda: school.seal_json(record, level="B-ZZ")),
                   ("not_found", lambda: school.seal_request("00000000-0000-4000-8000-0000000"
                                                             "00000"))):
    try:
        call()
        out[name] = "no error"
    except kc.ApiError as exc:
        out[name] = [type(exc).__name__, exc.status]

pin = cfg["pin"]
try:
    tl = anonymous.trust_list(pin_sha256=pin)
    out["trust"] = [tl.signature_verified, len(tl.anchors()), tl.sequence > 0]
except kc.TrustListError as exc:
    out["trust"] = ["TrustListError", str(exc)]
try:
    anonymous.trust_list(pin_sha256="00" * 32)
    out["trust_wrong_pin"] = "accepted"
except kc.TrustListError:
    out["trust_wrong_pin"] = "refused"

if cfg.get("pdf"):
    pdf = Path(cfg["pdf_path"]).read_bytes()
    school.transport.sent = []
    for level in ("B-B", "B-T"):
        sealed = school.seal_pdf_by_hash(pdf, level=level)
        out[f"pdf_{level}"] = anonymous.verify(sealed).report["signatures"][0]["level"], \
            anonymous.verify(sealed).indication
    Path(cfg["sent_path"]).write_bytes(b"\n--SENT--\n".join(school.transport.sent))
    out["pdf_sent"] = len(school.transport.sent)
print(json.dumps(out))
