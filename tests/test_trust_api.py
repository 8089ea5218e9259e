"""GET /trust-list over HTTP and `kakuin trust import|list|remove`."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from click.testing import CliRunner

from ca import status
from kakuin.cli import main
from signing import trustlist


def test_trust_list_served_signed_and_importable(live_server, services, settings,
                                                 tmp_path: Path) -> None:
    with urllib.request.urlopen(f"{live_server.url}/trust-list", timeout=30) as resp:
        assert resp.headers["Content-Type"] == trustlist.MEDIA_TYPE
        raw = resp.read()
    root = status.ca_chain(services.store)[-1]
    listed = trustlist.verify_trust_list(raw, trust_roots=[root])
    doc = listed.document
    assert doc["issuer"]["region"] == settings.trust.region
    types = sorted(s["type"] for s in doc["services"])
    assert types == ["issuing-ca", "root-ca", "tsa"]
    anchors = trustlist.anchors(doc)
    assert root in anchors.roots

    # Import it under another name in a scratch home: pin required, then listed, removable.
    source = tmp_path / "list.json"
    source.write_bytes(raw)
    runner = CliRunner()
    home = ["--home", str(settings.home)]
    out = runner.invoke(main, [*home, "trust", "import", str(source), "--name", "mirror"])
    assert out.exit_code == 1 and "pin" in out.output.lower()
    out = runner.invoke(main, [*home, "trust", "import", str(source), "--name", "mirror",
                               "--pin", "00" * 32])
    assert out.exit_code == 1
    out = runner.invoke(main, [*home, "trust", "import", str(source), "--name", "mirror",
                               "--pin", listed.signer_sha256], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    out = runner.invoke(main, [*home, "trust", "list"])
    assert "mirror" in out.output
    out = runner.invoke(main, [*home, "trust", "remove", "mirror"])
    assert out.exit_code == 0
    assert json.loads(raw)["signature"]
