"""CA commands (click). The composition package passes an object with a ``store``."""

from __future__ import annotations

import json
from typing import Protocol

import click

from ca import audit
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
