"""Sealing commands (click). The composition package passes an object with ``signing``."""

from __future__ import annotations

import getpass
import json
from datetime import timedelta
from pathlib import Path
from typing import Protocol

import click

from ca import status
from signing import pdf, trustlist
from signing.client import seal_pdf_remote
from signing.service import SigningService


class HasSigning(Protocol):
    @property
    def signing(self) -> SigningService: ...


def _console(organization_id: int) -> status.Principal:
    """Someone at the CA host's console, sealing for the organization (audited by login)."""
    return status.Principal(None, organization_id, "school-system",
                            f"console:{getpass.getuser()}", method="cli")


@click.group("seal")
def seal_group() -> None:
    """Seal documents with an organization's hosted e-seal."""


@seal_group.command("pdf")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("target", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--org", "org_id", type=int, help="Organization whose hosted seal is used.")
@click.option("--level", type=click.Choice(pdf.LEVELS), default="B-LTA", show_default=True)
@click.option("--invisible", is_flag=True, help="No stamp on the page.")
@click.option("--page", type=int, default=1, show_default=True, help="1-based; -1 = last.")
@click.option("--field", default=None, help="Seal into this (empty) signature field.")
@click.option("--remote", default=None, metavar="URL",
              help="Seal locally through kakuin's CSC API at URL: only hashes leave here.")
@click.option("--token", envvar="KAKUIN_TOKEN", default=None,
              help="API token for --remote (or $KAKUIN_TOKEN, which keeps it out of history).")
@click.option("--credential", default=None, help="CSC credential id (--remote).")
@click.pass_context
def seal_pdf_command(ctx: click.Context, source: Path, target: Path, org_id: int | None,
                     level: str, invisible: bool, page: int, field: str | None,
                     remote: str | None, token: str | None, credential: str | None) -> None:
    """Seal SOURCE into TARGET (PAdES; default B-LTA with a visible 角印)."""
    data = source.read_bytes()
    if remote:
        if not token:
            raise click.UsageError("--remote needs --token or $KAKUIN_TOKEN")
        if level not in ("B-B", "B-T"):
            raise click.UsageError("--remote seals at B-B or B-T")
        sealed = seal_pdf_remote(data, base_url=remote.rstrip("/"), token=token,
                                 credential_id=credential, level=level)
        target.write_bytes(sealed)
        click.echo(f"sealed {target} remotely ({level}); the document never left this host")
        return
    if org_id is None:
        raise click.UsageError("--org is required (or use --remote)")
    obj: HasSigning = ctx.obj
    result = obj.signing.seal_pdf(
        _console(org_id), org_id, data,
        pdf.SealOptions(level=level, visible=not invisible, page=page, field=field))
    target.write_bytes(result.pdf)
    click.echo(f"sealed {target} ({result.level}, field {result.field_name}, "
               f"sha256 {result.output_sha256})")


@seal_group.command("json")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("target", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--org", "org_id", type=int, required=True)
@click.option("--level", type=click.Choice(("B-B", "B-T", "B-LT")), default="B-T",
              show_default=True)
@click.pass_obj
def seal_json_command(obj: HasSigning, source: Path, target: Path, org_id: int,
                      level: str) -> None:
    """Seal the JSON record SOURCE into a JAdES JWS (JSON serialization) at TARGET."""
    (jws,) = obj.signing.seal_json(_console(org_id), org_id, [source.read_bytes()], level=level)
    target.write_text(json.dumps(jws, ensure_ascii=False, indent=2))
    click.echo(f"sealed {target} (JAdES {level})")


@click.group("lta")
def lta_group() -> None:
    """Long-term archival (PAdES B-LTA) upkeep."""


@lta_group.command("renew")
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--within-days", type=int, default=90, show_default=True,
              help="Renew documents whose last timestamp's TSA certificate expires this soon.")
@click.option("--force", is_flag=True, help="Renew every given B-LTA document.")
@click.pass_obj
def lta_renew(obj: HasSigning, files: tuple[Path, ...], within_days: int, force: bool) -> None:
    """Add validation data and a new document timestamp to B-LTA PDFs, in place."""
    svc = obj.signing
    renewed = 0
    for path in files:
        data = path.read_bytes()
        if not force and not pdf.needs_renewal(data, timedelta(days=within_days)):
            click.echo(f"{path}: not due")
            continue
        validation = pdf.validation_material(svc.store, svc.keys, crl_issuers=svc.crl_issuers)
        updated = pdf.renew_lta(data, timestamper=svc.timestamper, validation=validation)
        tmp = path.with_suffix(path.suffix + ".renewing")
        tmp.write_bytes(updated)
        tmp.replace(path)
        renewed += 1
        click.echo(f"{path}: renewed")
    click.echo(f"{renewed} of {len(files)} renewed")


@click.group("trust")
def trust_group() -> None:
    """Trust lists of other regions."""


@trust_group.command("import")
@click.argument("source")
@click.option("--pin", default=None, help="SHA-256 of the list signer's certificate "
              "(required the first time; get it from the other region out of band).")
@click.option("--name", default=None, help="Local name for the imported list.")
@click.pass_obj
def trust_import(obj: HasSigning, source: str, pin: str | None, name: str | None) -> None:
    """Import another region's trust list from a URL or a file, pinned by its signer."""
    svc = obj.signing
    assert svc.home is not None
    imported = trustlist.import_trust_list(svc.home, source, pin=pin, name=name,
                                            fetch=svc.fetch_trust_list)
    doc = imported.trust_list.document
    status.record(svc.store, actor=f"console:{getpass.getuser()}", action="trust.imported",
                  object_type="trust-list", object_id=imported.name,
                  digest=imported.trust_list.signer_sha256,
                  details={"source": source[:200], "sequence": doc.get("sequence")})
    click.echo(f"imported {imported.name}: {doc['issuer'].get('name')} "
               f"({doc['issuer'].get('region')}), sequence {doc.get('sequence')}, "
               f"signer {imported.trust_list.signer_sha256}")


@trust_group.command("list")
@click.pass_obj
def trust_list_command(obj: HasSigning) -> None:
    """Show the imported trust lists that still verify."""
    assert obj.signing.home is not None
    for item in trustlist.load_imported(obj.signing.home):
        doc = item.trust_list.document
        click.echo(f"{item.name}: {doc['issuer'].get('name')} ({doc['issuer'].get('region')}) "
                   f"from {item.source_url}, next update {doc.get('next_update')}")


@trust_group.command("remove")
@click.argument("name")
@click.pass_obj
def trust_remove(obj: HasSigning, name: str) -> None:
    """Stop trusting an imported list."""
    assert obj.signing.home is not None
    if not trustlist.remove_imported(obj.signing.home, name):
        raise click.ClickException(f"no imported trust list named {name!r}")
    click.echo(f"removed {name}")


@click.command("verify")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--detached", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="The record of a detached JAdES seal.")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.pass_obj
def verify_command(obj: HasSigning, source: Path, detached: Path | None, as_json: bool) -> None:
    """Verify a sealed PDF or JAdES record; exit 0 only on TOTAL-PASSED."""
    report = obj.signing.verify(source.read_bytes(),
                                detached=detached.read_bytes() if detached else None,
                                requester=f"console:{getpass.getuser()}")
    if as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        click.echo(f"{report.indication}"
                   + (f" / {report.sub_indication}" if report.sub_indication else ""))
        for sig in report.signatures:
            who = (sig.sealed_by or {}).get("organization") if sig.sealed_by else None
            click.echo(f"  {sig.kind} {sig.level or ''}: {sig.indication}"
                       + (f" / {sig.sub_indication}" if sig.sub_indication else "")
                       + (f" — {who}" if who else "")
                       + (f", sealed {sig.best_signature_time}" if sig.best_signature_time
                          else ""))
            for check in sig.checks:
                if check.passed is False:
                    click.echo(f"    ✗ {check.name}: {check.detail}")
    raise SystemExit(0 if report.indication == "TOTAL-PASSED" else 1)
