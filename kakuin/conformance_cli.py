"""``kakuin conformance ...``: vectors for vendors (see kakuin/conformance.py)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from kakuin import conformance


@click.group("conformance")
def conformance_group() -> None:
    """Conformance kit for vendors: test vectors with expected ETSI verdicts."""


@conformance_group.command("vectors")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--port", type=int, default=None,
              help="Loopback port of the throwaway CA (its URLs name it); default: a free one.")
def vectors_command(directory: Path, port: int | None) -> None:
    """Generate, from a throwaway CA, a corpus + manifest.json + the trust list to import."""
    manifest = conformance.generate(directory, port=port)
    click.echo(json.dumps({"directory": str(directory), "vectors": len(manifest["vectors"]),
                           "serve": manifest["serve"]}, ensure_ascii=False))
