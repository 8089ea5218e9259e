"""Who sealed what, and a public transparency log of issuance and seal events.

Seal events (``seal_events``) are private: document digest, organization, client, the school
system's pseudonymous ``actor``, level, time. Each also enters the public log as a salted
commitment ``SHA-256(salt || digest)``: the salt goes back to the sealer, so the log proves
the event happened without being a lookup table of pupils' documents. Every certificate
enters twice: its pre-signing TBS (``precertificate``) and the issued DER (``certificate``).

Leaves are queued inside the event's transaction and numbered later by :func:`sequence`
(run under the cluster lease), so concurrent commits never fork the tree. Signed tree heads
(RFC 9162 hashing, ``ca.merkle``) carry the audit-log head, are signed by a dedicated HSM
key (label ``kakuin-transparency-log``, made on first use) and timestamped by the TSA.

Limit: proofs rebuild the tree from the stored leaf hashes (O(n) per request); a subtree
cache is the next step once logs reach millions of leaves.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from ca import audit, merkle
from ca.clients import Principal, may_read
from ca.errors import Forbidden, InvalidRequest, NotFound
from ca.models import (
    AuditHead,
    Organization,
    SealEvent,
    TransparencyHead,
    TransparencyLeaf,
    utcnow,
)
from ca.store import Store
from hsm.api import HashAlg, KeyAlgorithm, KeyManager, KeyRef, SignScheme
from hsm.errors import HsmKeyNotFound

LOG_KEY_LABEL = "kakuin-transparency-log"
MAX_ACTOR = 64
HEAD_FIELDS = ("log_id", "tree_size", "root_hash", "timestamp", "audit_head")
_HEX64 = frozenset("0123456789abcdef")


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode()


def check_actor(actor: str | None) -> str | None:
    """The optional staff reference: 1-64 printable ASCII characters, else refused."""
    if actor is None:
        return None
    if not isinstance(actor, str) or not 0 < len(actor) <= MAX_ACTOR or any(
            not 0x20 <= ord(c) <= 0x7E for c in actor):
        raise InvalidRequest(f"'actor' must be 1-{MAX_ACTOR} printable ASCII characters")
    return actor


def actor_from_subject(subject: str) -> str:
    """An OIDC ``sub`` as an actor: itself when it fits, else a digest of it (stable)."""
    try:
        return check_actor(subject) or ""
    except InvalidRequest:
        return "sub:" + hashlib.sha256(subject.encode()).hexdigest()[:56]


def check_sha256(value: str | None, name: str = "sha256") -> str:
    value = (value or "").lower()
    if len(value) != 64 or not set(value) <= _HEX64:
        raise InvalidRequest(f"'{name}' must be 64 hexadecimal characters")
    return value


def commitment(salt: bytes, document_sha256: str) -> str:
    """The public form of a seal event: reveals nothing without the salt."""
    return hashlib.sha256(salt + bytes.fromhex(document_sha256)).hexdigest()


def _queue(session: Session, kind: str, lookup: str, organization_id: int | None,
           body: dict[str, Any]) -> TransparencyLeaf:
    data = canonical(body)
    leaf = TransparencyLeaf(kind=kind, lookup=lookup, organization_id=organization_id,
                            body=data.decode(), leaf_hash=merkle.leaf_hash(data).hex())
    session.add(leaf)
    return leaf


@dataclass(frozen=True)
class SealReceipt:
    """What the sealer gets back: the salt (keep it with the document) and the commitment."""

    salt: str
    commitment: str

    def to_dict(self) -> dict[str, str]:
        return {"salt": self.salt, "commitment": self.commitment}


def record_seal(session: Session, *, principal: Principal, organization_id: int,
                document_sha256: str, kind: str, level: str | None, actor: str | None,
                request_id: str | None) -> SealReceipt:
    """Store the private seal event and queue its public commitment leaf (same transaction)."""
    salt = secrets.token_bytes(32)
    digest = check_sha256(document_sha256, "document_sha256")
    commit = commitment(salt, digest)
    at = utcnow()
    session.add(SealEvent(at=at, organization_id=organization_id, client_id=principal.client_id,
                          client=principal.actor, actor=check_actor(actor), kind=kind,
                          level=level, document_sha256=digest, request_id=request_id,
                          salt=salt.hex(), commitment=commit))
    _queue(session, "seal", commit, None,
           {"type": "seal", "commitment": commit, "time": at.strftime("%Y-%m-%dT%H:%M:%SZ")})
    return SealReceipt(salt.hex(), commit)


def record_certificate(session: Session, *, kind: str, der: bytes, issuer_name: str,
                       serial: str, subject: str, organization_id: int | None) -> None:
    """Queue a certificate event: ``precertificate`` (TBS before signing) or ``certificate``."""
    digest = hashlib.sha256(der).hexdigest()
    _queue(session, kind, digest, organization_id,
           {"type": kind, "issuer": issuer_name, "serial": serial, "subject": subject,
            "organization_id": organization_id, "sha256": digest,
            "der": base64.b64encode(der).decode()})


# -- the log ------------------------------------------------------------------------------------


def sequence(store: Store) -> int:
    """Number queued leaves after the last sequenced one (id order); returns the tree size."""
    with store.session() as s:
        top = s.scalar(select(func.max(TransparencyLeaf.seq)))
        nxt = 0 if top is None else top + 1
        pending = s.scalars(select(TransparencyLeaf.id).where(TransparencyLeaf.seq.is_(None))
                            .order_by(TransparencyLeaf.id)).all()
        for leaf_id in pending:
            s.execute(update(TransparencyLeaf).where(TransparencyLeaf.id == leaf_id)
                      .values(seq=nxt).execution_options(synchronize_session=False))
            nxt += 1
        return nxt


def leaf_hashes(store: Store, size: int | None = None) -> list[bytes]:
    with store.session() as s:
        query = select(TransparencyLeaf.leaf_hash).where(TransparencyLeaf.seq.is_not(None))
        if size is not None:
            query = query.where(TransparencyLeaf.seq < size)
        return [bytes.fromhex(h) for h in s.scalars(query.order_by(TransparencyLeaf.seq))]


def log_key(keys: KeyManager) -> KeyRef:
    """The tree-head signing key: found by label, generated on first use (ECDSA P-256)."""
    try:
        return keys.find(label=LOG_KEY_LABEL)
    except HsmKeyNotFound:
        return keys.generate(KeyAlgorithm.ECDSA_P256, LOG_KEY_LABEL)


def publish_head(store: Store, keys: KeyManager, *,
                 timestamp: Callable[[bytes], bytes] | None = None) -> dict[str, Any] | None:
    """Sequence, then sign a new tree head if the tree grew; returns the latest head.

    When the audit log moved since the last head, its head also enters the tree as an
    ``audit-head`` leaf, so every anchored audit head stays provable, not only the newest."""
    latest = latest_head(store)
    with store.session() as s:
        audit_row = s.get_one(AuditHead, 1)
        current = {"seq": audit_row.last_seq, "hash": audit_row.last_hash}
        if latest is None or latest.get("audit_head") != current:
            _queue(s, "audit-head", audit_row.last_hash, None,
                   {"type": "audit-head", **current})
    size = sequence(store)
    if latest is not None and latest["tree_size"] >= size:
        return latest
    leaves = leaf_hashes(store, size)
    key = log_key(keys)
    with store.session() as s:
        audit = s.get_one(AuditHead, 1)
        audit_head = {"seq": audit.last_seq, "hash": audit.last_hash}
    now = datetime.now(UTC)
    body = {"log_id": key.public_key_sha256, "tree_size": len(leaves),
            "root_hash": merkle.root(leaves).hex(),
            "timestamp": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "audit_head": audit_head}
    signature = keys.sign(key, canonical(body), HashAlg.SHA256, SignScheme.ECDSA)
    token = timestamp(signature) if timestamp is not None else None
    with store.session() as s:
        if s.get(TransparencyHead, len(leaves)) is None:
            s.add(TransparencyHead(tree_size=len(leaves), root_hash=body["root_hash"], at=now,
                                   body=canonical(body).decode(), signature=signature,
                                   timestamp_token=token))
    return latest_head(store, keys=keys)


def _served(row: TransparencyHead, public_key_der: bytes | None) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(row.body)
    out["signature"] = base64.b64encode(row.signature).decode()
    out["timestamp_token"] = (None if row.timestamp_token is None
                              else base64.b64encode(row.timestamp_token).decode())
    if public_key_der is not None:
        out["public_key"] = base64.b64encode(public_key_der).decode()
    return out


def latest_head(store: Store, tree_size: int | None = None, *,
                keys: KeyManager | None = None) -> dict[str, Any] | None:
    """A signed tree head as served (the latest, or the one of ``tree_size``)."""
    with store.session() as s:
        query = select(TransparencyHead)
        if tree_size is not None:
            query = query.where(TransparencyHead.tree_size == tree_size)
        row = s.scalars(query.order_by(TransparencyHead.tree_size.desc()).limit(1)).first()
    if row is None:
        return None
    der = None
    if keys is not None:
        der = log_key(keys).public_key_der
    return _served(row, der)


def verify_head(head: dict[str, Any], public_key_der: bytes | None = None) -> bool:
    """The head's signature over its canonical body, by ``public_key_der`` (pinned) or the
    key the head names (then only self-consistency: pin the key for trust)."""
    try:
        der = public_key_der or base64.b64decode(head["public_key"], validate=True)
        key = serialization.load_der_public_key(der)
        if not isinstance(key, ec.EllipticCurvePublicKey):
            return False
        if hashlib.sha256(der).hexdigest() != head["log_id"]:
            return False
        body = {k: head[k] for k in HEAD_FIELDS}
        key.verify(base64.b64decode(head["signature"], validate=True), canonical(body),
                   ec.ECDSA(hashes.SHA256()))
        return True
    except (KeyError, TypeError, ValueError, InvalidSignature):
        return False


def _size(store: Store, tree_size: int | None) -> int:
    latest = latest_head(store, tree_size)
    if latest is None:
        raise NotFound("no signed tree head" + ("" if tree_size is None
                                                 else f" of size {tree_size}"))
    return int(latest["tree_size"])


def inclusion(store: Store, *, leaf_hash: str | None = None, commitment_hex: str | None = None,
              tree_size: int | None = None) -> dict[str, Any]:
    """An inclusion proof for a leaf (by leaf hash or seal commitment) in a signed tree."""
    size = _size(store, tree_size)
    with store.session() as s:
        query = select(TransparencyLeaf).where(TransparencyLeaf.seq.is_not(None),
                                               TransparencyLeaf.seq < size)
        if commitment_hex is not None:
            query = query.where(TransparencyLeaf.lookup == check_sha256(commitment_hex,
                                                                        "commitment"),
                                TransparencyLeaf.kind == "seal")
        elif leaf_hash is not None:
            query = query.where(TransparencyLeaf.leaf_hash == check_sha256(leaf_hash,
                                                                           "leaf_hash"))
        else:
            raise InvalidRequest("give 'leaf_hash' or 'commitment'")
        leaf = s.scalars(query.order_by(TransparencyLeaf.seq).limit(1)).first()
    if leaf is None or leaf.seq is None:
        raise NotFound("no such leaf in that tree (new leaves appear with the next tree head)")
    path = merkle.inclusion_proof(leaf.seq, leaf_hashes(store, size))
    return {"tree_size": size, "leaf_index": leaf.seq, "leaf_hash": leaf.leaf_hash,
            "leaf": leaf.body, "audit_path": [p.hex() for p in path]}


def consistency(store: Store, first: int, second: int) -> dict[str, Any]:
    """A consistency proof between two signed tree heads."""
    if not 0 < first <= second:
        raise InvalidRequest("need 0 < first <= second")
    _size(store, first)
    _size(store, second)
    proof = merkle.consistency_proof(first, leaf_hashes(store, second))
    return {"first": first, "second": second, "consistency": [p.hex() for p in proof]}


# -- who sealed this? ---------------------------------------------------------------------------


def who_sealed(store: Store, principal: Principal, document_sha256: str, *,
               request_id: str | None = None) -> list[dict[str, Any]]:
    """Seal events for a digest the caller may read (auditors, board officers: own
    jurisdiction). Events elsewhere are left out; none left is a 404, the same answer as
    for a digest never sealed, so nothing leaks across jurisdictions."""
    if principal.role not in ("auditor", "board-officer"):
        raise Forbidden(f"role {principal.role} may not trace seals")
    digest = check_sha256(document_sha256)
    out = []
    with store.session() as s:
        rows = s.scalars(select(SealEvent).where(SealEvent.document_sha256 == digest)
                         .order_by(SealEvent.id)).all()
        for row in rows:
            org = s.get(Organization, row.organization_id)
            if org is None or not may_read(s, principal, org):
                continue
            out.append({"organization_id": row.organization_id, "organization": org.name_ja,
                        "client": row.client, "actor": row.actor,
                        "time": row.at.strftime("%Y-%m-%dT%H:%M:%SZ"), "level": row.level,
                        "kind": row.kind, "request_id": row.request_id,
                        "commitment": row.commitment})
        # Tracing people is itself traced: who asked, about which digest, how many answers.
        audit.record(s, actor=principal.actor, action="seal.traced", object_type="document",
                     digest=digest, request_id=request_id, details={"found": len(out)})
    if not out:
        raise NotFound("no seal of this document within your jurisdiction")
    return out


def certificates_for(store: Store, organization_id: int) -> list[dict[str, Any]]:
    """Monitoring: every certificate event in the log naming ``organization_id`` (so a board
    notices a certificate it did not ask for), oldest first."""
    with store.session() as s:
        rows = s.scalars(select(TransparencyLeaf).where(
            TransparencyLeaf.organization_id == organization_id,
            TransparencyLeaf.kind.in_(("precertificate", "certificate")))
            .order_by(TransparencyLeaf.id)).all()
        out = []
        for row in rows:
            body = json.loads(row.body)
            body.pop("der", None)
            out.append({"seq": row.seq, "leaf_hash": row.leaf_hash, **body})
    return out


# -- verification (what `kakuin transparency verify` and other regions run) ------------------


def _token_imprint(token: bytes) -> bytes | None:
    """The message imprint of an RFC 3161 token (asn1crypto, as pyHanko reads them)."""
    from asn1crypto import cms, tsp

    try:
        content = cms.ContentInfo.load(token)["content"]
        tst = tsp.TSTInfo.load(content["encap_content_info"]["content"].parsed.dump())
        return bytes(tst["message_imprint"]["hashed_message"].native)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def check(head: dict[str, Any], *, public_key_der: bytes | None = None,
          inclusion_proof: dict[str, Any] | None = None,
          old_head: dict[str, Any] | None = None,
          consistency_proof: dict[str, Any] | None = None,
          salt: str | None = None, document: bytes | None = None) -> list[str]:
    """Every problem found (empty: all good): the head's signature and TSA imprint, an
    inclusion proof against it, a consistency proof from an older head, and a document's
    seal event (its digest and salt give the commitment the included leaf must carry)."""
    problems = []
    if not verify_head(head, public_key_der):
        problems.append("tree head signature does not verify")
    token = head.get("timestamp_token")
    if token:
        imprint = _token_imprint(base64.b64decode(token))
        if imprint != hashlib.sha256(base64.b64decode(head.get("signature", ""))).digest():
            problems.append("TSA token does not cover the tree head signature")
    try:
        size, root_hash = int(head["tree_size"]), bytes.fromhex(head["root_hash"])
    except (KeyError, TypeError, ValueError):
        return [*problems, "tree head malformed"]
    if inclusion_proof is not None:
        try:
            leaf = str(inclusion_proof["leaf"]).encode()
            ok = (int(inclusion_proof["tree_size"]) == size
                  and merkle.leaf_hash(leaf).hex() == inclusion_proof["leaf_hash"]
                  and merkle.verify_inclusion(
                      int(inclusion_proof["leaf_index"]), size, merkle.leaf_hash(leaf),
                      [bytes.fromhex(p) for p in inclusion_proof["audit_path"]], root_hash))
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            problems.append("inclusion proof does not verify against the tree head")
        if document is not None and salt is not None:
            try:
                expected = commitment(bytes.fromhex(salt), hashlib.sha256(document).hexdigest())
                if json.loads(leaf).get("commitment") != expected:
                    problems.append("the included leaf is not this document's seal event")
            except (ValueError, AttributeError):
                problems.append("salt or leaf malformed")
    if old_head is not None or consistency_proof is not None:
        try:
            assert old_head is not None and consistency_proof is not None
            if not verify_head(old_head, public_key_der):
                problems.append("older tree head signature does not verify")
            m = int(old_head["tree_size"])
            ok = (int(consistency_proof["first"]) == m
                  and int(consistency_proof["second"]) == size
                  and merkle.verify_consistency(
                      m, size, bytes.fromhex(old_head["root_hash"]), root_hash,
                      [bytes.fromhex(p) for p in consistency_proof["consistency"]]))
        except (AssertionError, KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            problems.append("consistency proof fails: the log rewrote its history")
    return problems


# -- witnessing another region's log -------------------------------------------------------------

INCONSISTENT = "inconsistent"


def witness(base_url: str, previous: dict[str, Any] | None,
            get_json: Callable[[str], Any]) -> tuple[dict[str, Any] | None, str]:
    """One refresh of a peer's log: (head to keep, status). The first head pins the peer's
    log key; later ones must verify under it and be consistent with the kept head, else the
    status starts with ``inconsistent`` (an alarm) and the earlier head is kept as evidence."""
    base = base_url.rstrip("/")
    head = get_json(f"{base}/transparency/sth")
    if not isinstance(head, dict):
        return previous, "bad tree head"
    pinned = None
    if previous is not None:
        pinned = base64.b64decode(previous["public_key"])
    if not verify_head(head, pinned):
        return previous, "tree head signature does not verify under the pinned key"
    if previous is None:
        return head, "pinned"
    m, n = int(previous["tree_size"]), int(head["tree_size"])
    if n < m:
        return previous, f"{INCONSISTENT}: the tree shrank from {m} to {n}"
    if n == m:
        ok = head["root_hash"] == previous["root_hash"]
    else:
        proof = get_json(f"{base}/transparency/proof/consistency?first={m}&second={n}")
        try:
            ok = merkle.verify_consistency(
                m, n, bytes.fromhex(previous["root_hash"]), bytes.fromhex(head["root_hash"]),
                [bytes.fromhex(p) for p in proof["consistency"]])
        except (KeyError, TypeError, ValueError):
            ok = False
    if not ok:
        return previous, f"{INCONSISTENT}: tree {n} does not extend the tree {m} we saw"
    return head, "ok"
