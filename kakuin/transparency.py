"""HTTP for issue 15: who sealed this (``/api/v1/audit/seals``) and the public transparency
log (``/transparency/sth``, ``/transparency/proof/*``), plus the scheduled tree-head job.

Composed here (not in ``ca``) because a tree head is timestamped by the TSA, which lives in
``signing``. Nothing served under ``/transparency`` carries a document digest: seal leaves
hold only salted commitments.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives import serialization
from flask import Blueprint, current_app, g, jsonify, request

from ca import transparency
from ca.clients import Principal, authenticate
from ca.errors import InvalidRequest, NotFound
from kakuin import witness
from kakuin.services import Services
from signing import fetch as outbound
from signing import trustlist
from signing.tsa import timestamp_token

bp = Blueprint("transparency", __name__)
log = logging.getLogger(__name__)
_SIZE = re.compile(r"[0-9]{1,15}\Z")


def _services() -> Services:
    svc: Services = current_app.extensions["kakuin"]
    return svc


def _principal() -> Principal:
    with _services().store.session() as s:
        return authenticate(s, request.headers.get("Authorization"))


def _size(name: str, required: bool = False) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        if required:
            raise InvalidRequest(f"'{name}' is required")
        return None
    if not _SIZE.match(raw) or int(raw) < 1:
        raise InvalidRequest(f"'{name}' must be a positive integer")
    return int(raw)


def publish(svc: Services) -> dict[str, Any] | None:
    """Sequence the log and sign (and TSA-timestamp) a new tree head if it grew."""
    return transparency.publish_head(
        svc.store, svc.keys,
        timestamp=lambda data: timestamp_token(svc.signing.tsa, data).dump())


def scheduled(svc: Services) -> dict[str, Any]:
    """The scheduler's share: a new tree head, then witness every trust-list peer's log.
    Failures are logged and summarised, never fatal to the rest of the maintenance run."""
    done: dict[str, Any] = {}
    try:
        head = publish(svc)
        done["tree_size"] = head["tree_size"] if head else 0
    except Exception:
        log.exception("transparency tree head not published")
        done["tree_size"] = "failed"
    try:
        peers = [(item.name, item.trust_list.issuer_url)
                 for item in trustlist.load_imported(svc.settings.home)
                 if item.source_url.startswith(("http://", "https://"))]
        policy = svc.signing.fetch_policy

        def get_json(url: str) -> Any:
            return json.loads(outbound.fetch(url, policy=policy, accept="application/json").data)

        done["witness"] = witness.refresh(svc.settings.home, peers, get_json)
    except Exception:
        log.exception("witnessing failed")
    return done


@bp.get("/api/v1/audit/seals")
def who_sealed() -> Any:
    """Seal events of a document digest, for auditors and board officers (own jurisdiction)."""
    principal = _principal()
    found = transparency.who_sealed(_services().store, principal, request.args.get("sha256", ""),
                                    request_id=g.get("request_id"))
    return jsonify({"sha256": request.args["sha256"].lower(), "seals": found})


@bp.get("/transparency/sth")
def sth() -> Any:
    """Public: the latest signed tree head (or the one of ``tree_size``)."""
    svc = _services()
    head = transparency.latest_head(svc.store, _size("tree_size"), keys=svc.keys)
    if head is None:
        raise NotFound("no signed tree head yet")
    return jsonify(head)


@bp.get("/transparency/proof/inclusion")
def inclusion() -> Any:
    """Public: ``leaf_hash`` or ``commitment`` (a seal receipt), optional ``tree_size``."""
    return jsonify(transparency.inclusion(
        _services().store, leaf_hash=request.args.get("leaf_hash"),
        commitment_hex=request.args.get("commitment"), tree_size=_size("tree_size")))


@bp.get("/transparency/proof/consistency")
def consistency() -> Any:
    """Public: proof that the tree of size ``first`` is a prefix of the one of ``second``."""
    first, second = _size("first", True), _size("second", True)
    assert first is not None and second is not None
    return jsonify(transparency.consistency(_services().store, first, second))


# -- CLI -----------------------------------------------------------------------------------------


def _load(path: Path | None) -> Any:
    return None if path is None else json.loads(path.read_text())


@click.group("transparency")
def transparency_group() -> None:
    """The public transparency log of issuance and seal events (RFC 9162 trees)."""


@transparency_group.command("publish")
@click.pass_obj
def publish_command(obj: Any) -> None:
    """Sequence the log and sign a tree head now (the scheduler does this every period)."""
    head = publish(obj.services)
    click.echo(json.dumps(head, ensure_ascii=False))


_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@transparency_group.command("verify")
@click.option("--sth", "sth_file", type=_FILE, required=True, help="Tree head (JSON).")
@click.option("--inclusion", type=_FILE, help="Inclusion proof (JSON) against --sth.")
@click.option("--old-sth", type=_FILE, help="An earlier tree head (JSON).")
@click.option("--consistency", type=_FILE, help="Consistency proof --old-sth -> --sth.")
@click.option("--file", "document", type=_FILE,
              help="A sealed document's input: its seal event must be the included leaf.")
@click.option("--salt", help="The salt the sealer received (X-Kakuin-Seal-Salt).")
@click.option("--log-key", type=_FILE, help="Pin the log's public key (DER or PEM).")
def verify_command(sth_file: Path, inclusion: Path | None, old_sth: Path | None,
                   consistency: Path | None, document: Path | None, salt: str | None,
                   log_key: Path | None) -> None:
    """Check a tree head and proofs offline; exit 1 on any problem."""
    pinned = None
    if log_key is not None:
        raw = log_key.read_bytes()
        key = (serialization.load_pem_public_key(raw) if raw.startswith(b"-----")
               else serialization.load_der_public_key(raw))
        pinned = key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    if (document is None) != (salt is None) or (document is not None and inclusion is None):
        raise click.UsageError("--file needs --salt and --inclusion")
    problems = transparency.check(
        _load(sth_file), public_key_der=pinned, inclusion_proof=_load(inclusion),
        old_head=_load(old_sth), consistency_proof=_load(consistency), salt=salt,
        document=document.read_bytes() if document is not None else None)
    for problem in problems:
        click.echo(f"FAIL: {problem}", err=True)
    if problems:
        raise SystemExit(1)
    click.echo("OK")


@transparency_group.command("monitor")
@click.option("--org", "organization_id", type=int, required=True, help="Organization id.")
@click.pass_obj
def monitor_command(obj: Any, organization_id: int) -> None:
    """Every certificate ever logged naming the organization, as JSON lines."""
    for event in transparency.certificates_for(obj.store, organization_id):
        click.echo(json.dumps(event, ensure_ascii=False))
