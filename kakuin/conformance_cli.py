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


@conformance_group.command("verifier")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--cmd", "command", required=True,
              help="The vendor's verifier; {file} is replaced by each vector's path.")
@click.option("--verdict-from", type=click.Choice(["exit", "json"]), default="exit",
              show_default=True, help="exit: status 0 = passed; json: indication on stdout.")
@click.option("--match", default="*", show_default=True, help="Only vectors matching this glob.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write the JSON report here (default: stdout).")
@click.option("--timeout", type=float, default=120.0, show_default=True,
              help="Seconds per vector.")
@click.option("--serve-ca/--no-serve-ca", default=True, show_default=True,
              help="Serve the corpus's CA on its port for online revocation checks.")
def verifier_command(directory: Path, command: str, verdict_from: str, match: str,
                     report_path: Path | None, timeout: float, serve_ca: bool) -> None:
    """Score a vendor's verifier over the corpus; exit 0 only if it agrees on every vector."""
    if not (directory / "manifest.json").is_file():
        raise click.ClickException(f"{directory}: no manifest.json (kakuin conformance vectors)")
    if serve_ca:
        with conformance.serving_ca(directory):
            report = conformance.score_verifier(directory, command, verdict_from=verdict_from,
                                                match=match, timeout=timeout)
    else:
        report = conformance.score_verifier(directory, command, verdict_from=verdict_from,
                                            match=match, timeout=timeout)
    text = json.dumps(report, ensure_ascii=False, indent=2)
    if report_path is not None:
        report_path.write_text(text + "\n")
        click.echo(json.dumps(report["score"]))
    else:
        click.echo(text)
    key = "sub_indication" if verdict_from == "json" else "pass_fail"
    score = report["score"][key]
    raise SystemExit(0 if score["total"] and score["agree"] == score["total"] else 1)


@conformance_group.command("producer")
@click.argument("files", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--level", type=click.Choice(list(conformance.LEVEL_ORDER)), default="B-LTA",
              show_default=True, help="The PAdES level the producer claims.")
@click.option("--visible/--no-visible", default=True, show_default=True,
              help="Require the visible seal.")
def producer_command(files: tuple[Path, ...], level: str, visible: bool) -> None:
    """Check sealed PDFs a vendor's system produced against the profile; exit 0 if all pass."""
    results = {str(f): conformance.check_producer_pdf(f.read_bytes(), level=level,
                                                      require_visible=visible)
               for f in files}
    click.echo(json.dumps(results, ensure_ascii=False, indent=2))
    raise SystemExit(0 if all(r["passed"] for r in results.values()) else 1)
