"""CA commands (click). The composition package passes an object with a ``store``."""

from __future__ import annotations

import getpass
import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Protocol

import click
from sqlalchemy import select

from ca import audit, clients, registry, revocation, schoollist, transparency
from ca.errors import CAError
from ca.models import Organization
from ca.service import CAService
from ca.store import Store, current_revision, head_revision, upgrade


class HasStore(Protocol):
    @property
    def store(self) -> Store: ...

    @property
    def database_url(self) -> str: ...


@click.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
@click.pass_obj
def db_upgrade(obj: HasStore) -> None:
    """Apply Alembic migrations up to the newest revision."""
    upgrade(obj.database_url)
    click.echo(f"database at revision {current_revision(obj.database_url)}")


@db_group.command("status")
@click.pass_obj
def db_status(obj: HasStore) -> None:
    """Show the current and the newest schema revision."""
    click.echo(f"current {current_revision(obj.database_url)}, newest {head_revision()}")


@click.group("audit")
def audit_group() -> None:
    """The hash-chained audit log."""


@audit_group.command("verify")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def audit_verify(obj: HasStore, as_json: bool) -> None:
    """Check every entry's hash and link; exit 1 if anything was edited, moved or deleted."""
    with obj.store.session() as s:
        result = audit.verify(s)
    if as_json:
        click.echo(
            json.dumps(
                {"ok": result.ok, "entries": result.entries, "problems": result.problems},
                ensure_ascii=False,
            )
        )
    elif result.ok:
        click.echo(f"audit log intact: {result.entries} entries")
    else:
        click.echo(f"audit log BROKEN ({len(result.problems)} problems):", err=True)
        for problem in result.problems:
            click.echo(f"  - {problem}", err=True)
    raise SystemExit(0 if result.ok else 1)


@audit_group.command("show")
@click.option("--since", default=0, help="Show entries after this sequence number.")
@click.option("--limit", default=50)
@click.pass_obj
def audit_show(obj: HasStore, since: int, limit: int) -> None:
    """Print audit entries as JSON lines."""
    with obj.store.session() as s:
        for e in audit.entries(s, since_seq=since, limit=limit):
            click.echo(
                json.dumps(
                    {
                        "seq": e.seq,
                        "at": e.at.isoformat(),
                        "actor": e.actor,
                        "action": e.action,
                        "organization_id": e.organization_id,
                        "object_type": e.object_type,
                        "object_id": e.object_id,
                        "digest": e.digest,
                        "request_id": e.request_id,
                    },
                    ensure_ascii=False,
                )
            )


@audit_group.command("who-sealed")
@click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False,
                                                         path_type=Path))
@click.option("--sha256", "digest", help="The document's SHA-256 (hex) instead of FILE.")
@click.option("--token", envvar="KAKUIN_TOKEN",
              help="Act as this API client (its jurisdiction); default: the operator's "
                   "auditor at the CA host's console.")
@click.pass_obj
def audit_who_sealed(obj: HasStore, file: Path | None, digest: str | None,
                     token: str | None) -> None:
    """Who sealed FILE (or --sha256): organization, client, actor, time, level, request id."""
    if (file is None) == (digest is None):
        raise click.UsageError("give FILE or --sha256, not both")
    if file is not None:
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
    with obj.store.session() as s:
        if token:
            principal = clients.authenticate(s, f"Bearer {token}")
        else:
            op = s.scalars(select(Organization).where(Organization.kind == "operator")).first()
            principal = clients.Principal(None, op.id if op else None, "auditor",
                                          f"console:{getpass.getuser()}", method="cli")
    try:
        found = transparency.who_sealed(obj.store, principal, digest or "")
    except CAError as exc:
        click.echo(f"error: {exc.detail}", err=True)
        raise SystemExit(1) from None
    for event in found:
        click.echo(json.dumps(event, ensure_ascii=False))


@click.group("org")
def org_group() -> None:
    """Organization registry (bootstrapping; boards use the API)."""


@org_group.command("add")
@click.option("--kind", type=click.Choice(["operator", "board", "school", "school_corporation"]),
              required=True)
@click.option("--name-ja", required=True, help="Japanese name as it appears in the seal.")
@click.option("--name-en", default=None)
@click.option("--local-gov-code", default=None, help="Board: 6-digit local government code.")
@click.option("--corporate-number", default=None, help="13-digit corporate number.")
@click.option("--school-code", default=None, help="School: 13-character MEXT school code.")
@click.option("--board-id", type=int, default=None, help="School: id of the running board.")
@click.option("--prefecture", default=None, help="School corporation: prefecture code.")
@click.pass_obj
def org_add(obj: HasStore, kind: str, name_ja: str, name_en: str | None,
            local_gov_code: str | None, corporate_number: str | None, school_code: str | None,
            board_id: int | None, prefecture: str | None) -> None:
    """Register an organization and print it as JSON."""
    actor = "cli:operator"
    with obj.store.session() as s:
        if kind == "operator":
            org = registry.add_operator(s, name_ja=name_ja, name_en=name_en,
                                        corporate_number=corporate_number, actor=actor)
        elif kind == "board":
            if not local_gov_code:
                raise click.UsageError("--local-gov-code is required for a board")
            org = registry.add_board(s, name_ja=name_ja, name_en=name_en,
                                     local_gov_code=local_gov_code,
                                     corporate_number=corporate_number, actor=actor)
        elif kind == "school":
            if not school_code or board_id is None:
                raise click.UsageError("--school-code and --board-id are required for a school")
            org = registry.add_school(s, name_ja=name_ja, name_en=name_en,
                                      school_code=school_code, board_id=board_id, actor=actor)
        else:
            if not corporate_number or not prefecture:
                raise click.UsageError("--corporate-number and --prefecture are required")
            org = registry.add_school_corporation(s, name_ja=name_ja, name_en=name_en,
                                                  corporate_number=corporate_number,
                                                  prefecture=prefecture, actor=actor)
        click.echo(json.dumps({"id": org.id, "kind": org.kind, "name_ja": org.name_ja,
                               "organization_identifier": registry.organization_identifier(org)},
                              ensure_ascii=False))


@org_group.command("confirm")
@click.argument("org_id", type=int)
@click.pass_obj
def org_confirm(obj: HasStore, org_id: int) -> None:
    """Confirm a school a board registered (pending -> active), after checking it exists."""
    with obj.store.session() as s:
        org = registry.confirm_school(s, org_id, actor="cli:operator")
        click.echo(json.dumps({"id": org.id, "status": org.status, "name_ja": org.name_ja},
                              ensure_ascii=False))


@click.group("registry")
def registry_group() -> None:
    """The operator's school list (after MEXT's 学校コード list)."""


@registry_group.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.pass_obj
def registry_import(obj: HasStore, path: str) -> None:
    """Import a school-list CSV; pending schools that match it become active."""
    with open(path, "rb") as fh:
        data = fh.read(schoollist.MAX_BYTES + 1)
    with obj.store.session() as s:
        result = schoollist.import_list(s, data, actor="cli:operator")
    click.echo(json.dumps({"rows": result.rows, "closed": result.closed,
                           "confirmed": result.confirmed}))


@click.group("token")
def token_group() -> None:
    """API client tokens."""


@token_group.command("create")
@click.option("--org", "org_id", type=int, required=True, help="Organization id.")
@click.option("--role", type=click.Choice(list(clients.ROLES)), required=True)
@click.option("--name", required=True, help="Who or what uses the token (e.g. the vendor system).")
@click.pass_obj
def token_create(obj: HasStore, org_id: int, role: str, name: str) -> None:
    """Create an API client; the token is printed once and stored only as a hash."""
    with obj.store.session() as s:
        client, token = clients.create_client(s, organization_id=org_id, role=role, name=name,
                                              actor="cli:operator")
    click.echo(json.dumps({"client_id": client.id, "organization_id": org_id, "role": role,
                           "token": token}))


@token_group.command("revoke")
@click.argument("client_id", type=int)
@click.pass_obj
def token_revoke(obj: HasStore, client_id: int) -> None:
    """Revoke an API client's token."""
    with obj.store.session() as s:
        clients.revoke_client(s, client_id, actor="cli:operator")
    click.echo(f"client {client_id} revoked")


# The CLI runs with the operator's authority on the machine that holds the HSM.
CLI_OPERATOR = clients.Principal(None, None, "ca-operator", "operator", method="cli")


class HasCA(Protocol):
    @property
    def ca(self) -> CAService: ...


@click.group("cert")
def cert_group() -> None:
    """Certificate status: revoke, suspend, unsuspend, show."""


@cert_group.command("revoke")
@click.argument("serial")
@click.option("--reason", type=click.Choice(list(revocation.REASONS)), required=True,
              help="RFC 5280 reason; certificateHold suspends.")
@click.option("--invalidity-date", default=None,
              help="When the key is known or suspected to have been compromised (ISO 8601).")
@click.pass_obj
def cert_revoke(obj: HasCA, serial: str, reason: str, invalidity_date: str | None) -> None:
    """Revoke (or suspend) a certificate; OCSP and CRLs reflect it at once."""
    when = datetime.fromisoformat(invalidity_date) if invalidity_date else None
    row = revocation.revoke(obj.ca.store, CLI_OPERATOR, serial, reason, when)
    obj.ca.status_changed(row)
    click.echo(f"{row.serial}: {row.status} ({row.revocation_reason})")


@cert_group.command("unsuspend")
@click.argument("serial")
@click.pass_obj
def cert_unsuspend(obj: HasCA, serial: str) -> None:
    """Lift a certificateHold."""
    row = revocation.unsuspend(obj.ca.store, CLI_OPERATOR, serial)
    obj.ca.status_changed(row)
    click.echo(f"{row.serial}: {row.status}")


@cert_group.command("status")
@click.argument("serial")
@click.pass_obj
def cert_status(obj: HasCA, serial: str) -> None:
    """Show a certificate's status as JSON."""
    with obj.ca.store.session() as s:
        row = revocation.find(s, serial)
        click.echo(json.dumps({
            "serial": row.serial, "issuer": row.issuer_name, "kind": row.kind,
            "subject": row.subject, "status": row.status,
            "revocation_reason": row.revocation_reason,
            "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
            "invalidity_date": row.invalidity_date.isoformat() if row.invalidity_date else None,
            "not_before": row.not_before.isoformat(), "not_after": row.not_after.isoformat(),
        }, ensure_ascii=False))
