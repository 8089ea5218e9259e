"""The import rules of docs/architecture.md, checked on the source (import-linter too)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEB_OR_CLI = {"api.py", "cli.py", "protocol_api.py", "csc_api.py"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in ("ca", "hsm", "signing", "kakuin"):
                # `from ca import status` imports the module ca.status
                out.update(f"{node.module}.{a.name}" for a in node.names)
            else:
                out.add(node.module)
    return out


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_hsm_imports_nothing_of_ours():
    for path in _modules("hsm"):
        bad = {m for m in _imports(path) if m.split(".")[0] in ("ca", "signing", "kakuin")}
        assert not bad, f"{path}: {bad}"


def test_signing_uses_only_ca_status():
    for path in _modules("signing"):
        bad = {m for m in _imports(path)
               if m.split(".")[0] == "kakuin" or (m.split(".")[0] == "ca" and m != "ca.status")}
        assert not bad, f"{path}: {bad}"


def test_flask_and_click_only_in_web_and_cli_modules():
    for package in ("hsm", "ca", "signing"):
        for path in _modules(package):
            if path.name in WEB_OR_CLI or "migrations" in path.parts:
                continue
            bad = {m for m in _imports(path) if m.split(".")[0] in ("flask", "click", "werkzeug")}
            assert not bad, f"{path}: {bad}"
