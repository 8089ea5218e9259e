"""Seconds to build and sign a CRL with 100,000 revoked entries, beside ``openssl ca -gencrl``.

Peers, all on the same entries (serials, revocation dates, reasons; an invalidity date on the
keyCompromise ones) in the same run, taking turns round by round:

- ``publish``: ``ca.crl.publish`` end to end: read the rows from SQLite, build, sign in
  SoftHSM (ECDSA P-256), store the CRL and its audit entry.
- ``build_crl``: ``ca.crl.build_crl`` alone, entries already in memory (build + HSM sign).
- ``cryptography``: the same CRL with ``cryptography``'s builders, the whole entry list passed
  at once (the faster of its two ways; see design.md), HSM-signed, DER out.
- ``openssl``: ``openssl ca -gencrl`` (a process: read index.txt, build, sign with an
  in-memory P-256 key, write PEM), the same CRL extensions (CRLNumber, AKI).

The token, database and openssl CA live in a temporary directory.

    .venv/bin/python bench/crl.py [--entries 100000] [--rounds 5] [--json] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from harness import (
    environment,
    logger,
    markdown_table,
    run_rounds,
    scratch_token,
    self_signed,
    write_key_and_certificate,
)
from sqlalchemy import insert

from ca import crl
from ca.models import Certificate, serial_hex
from ca.store import Store, upgrade
from hsm.api import KeyAlgorithm
from hsm.keys import private_key

ISSUER = "bench-ca"
PEERS = ("publish", "build_crl", "cryptography", "openssl")
# (reason stored by kakuin, reason word in openssl's index.txt); None: no reason code.
REASONS = (
    ("keyCompromise", "keyCompromise"),
    ("superseded", "superseded"),
    ("affiliationChanged", "affiliationChanged"),
    ("cessationOfOperation", "cessationOfOperation"),
    (None, None),
)
OPENSSL_CNF = """\
[ ca ]
default_ca = bench
[ bench ]
database = {dir}/index.txt
crlnumber = {dir}/crlnumber
default_md = sha256
default_crl_hours = 24
crl_extensions = crl_ext
[ crl_ext ]
authorityKeyIdentifier = keyid:always
"""


def ca_certificate(key: Any, name: str) -> x509.Certificate:
    cert: x509.Certificate = self_signed(key, name, days=3650, not_before=dt.timedelta(days=1),
                                         extensions=[
        (x509.BasicConstraints(ca=True, path_length=None), True),
        (x509.KeyUsage(False, False, False, False, False, True, True, False, False), True),
        (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
    ])
    return cert


def make_entries(count: int) -> list[crl.Revoked]:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    serials: set[int] = set()
    while len(serials) < count:
        serials.add(secrets.randbits(128) or 1)  # as ca.issuer.random_serial
    entries = []
    for i, serial in enumerate(serials):
        reason = REASONS[i % len(REASONS)][0]
        revoked_at = now - dt.timedelta(seconds=i * 7)
        invalidity = revoked_at - dt.timedelta(days=1) if reason == "keyCompromise" else None
        entries.append(
            crl.Revoked(serial, revoked_at, x509.ReasonFlags(reason) if reason else None,
                        invalidity)
        )
    return entries


def fill_database(store: Store, entries: Sequence[crl.Revoked]) -> None:
    """Bulk insert (SQLAlchemy core, one executemany): the ORM would take a minute."""
    now = dt.datetime.now(dt.UTC)
    rows = [
        {
            "issuer_name": ISSUER,
            "serial": serial_hex(e.serial),
            "kind": "eseal",
            "subject": f"CN=school {i}",
            "not_before": now - dt.timedelta(days=365),
            "not_after": now + dt.timedelta(days=365),
            "status": "revoked",
            "revocation_reason": e.reason.value if e.reason else None,
            "revoked_at": e.revoked_at,
            "invalidity_date": e.invalidity_date,
            "public_key_sha256": "0" * 64,
            "shard": 0,
            "created_at": now,
            "updated_at": e.revoked_at,
        }
        for i, e in enumerate(entries)
    ]
    with store.session() as s:
        s.execute(insert(Certificate), rows)


def write_openssl_ca(directory: Path, entries: Sequence[crl.Revoked]) -> tuple[Path, list[str]]:
    """An ``openssl ca`` directory with the same revoked entries in index.txt."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca_certificate(key, "bench openssl CA")
    write_key_and_certificate(key, cert, directory / "key.pem", directory / "ca.pem")
    expiry = (dt.datetime.now(dt.UTC) + dt.timedelta(days=365)).strftime("%y%m%d%H%M%SZ")
    lines = []
    for e in entries:
        revoked = e.revoked_at.strftime("%y%m%d%H%M%SZ")
        if e.invalidity_date is not None:  # keyCompromise with an invalidity date
            revoked += ",keyTime," + e.invalidity_date.strftime("%Y%m%d%H%M%SZ")
        elif e.reason is not None:
            revoked += f",{e.reason.value}"
        serial = f"{e.serial:X}"
        serial = "0" * (len(serial) % 2) + serial  # openssl wants whole octets
        lines.append(f"R\t{expiry}\t{revoked}\t{serial}\tunknown\t/CN=school\n")
    (directory / "index.txt").write_text("".join(lines))
    (directory / "index.txt.attr").write_text("unique_subject = no\n")
    (directory / "openssl.cnf").write_text(OPENSSL_CNF.format(dir=directory))
    command = [
        shutil.which("openssl") or "openssl", "ca", "-batch", "-gencrl",
        "-config", str(directory / "openssl.cnf"),
        "-keyfile", str(directory / "key.pem"), "-cert", str(directory / "ca.pem"),
        "-out", str(directory / "openssl-crl.pem"),
    ]
    (directory / "crlnumber").write_text("01\n")
    return directory / "openssl-crl.pem", command


def cryptography_crl(cert: x509.Certificate, key: Any, entries: Sequence[crl.Revoked]) -> bytes:
    revoked = []
    for e in entries:
        b = x509.RevokedCertificateBuilder().serial_number(e.serial).revocation_date(e.revoked_at)
        if e.reason is not None:
            b = b.add_extension(x509.CRLReason(e.reason), critical=False)
        if e.invalidity_date is not None:
            b = b.add_extension(x509.InvalidityDate(e.invalidity_date), critical=False)
        revoked.append(b.build())
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    now = dt.datetime.now(dt.UTC)
    built = x509.CertificateRevocationListBuilder(
        cert.subject,
        now,
        now + dt.timedelta(hours=24),
        [
            x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(1)),
            x509.Extension(aki.oid, False, aki),
        ],
        revoked,
    ).sign(key, hashes.SHA256())
    return built.public_bytes(serialization.Encoding.DER)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--entries", type=int, default=100_000, help="revoked entries (100000)")
    p.add_argument("--rounds", type=int, default=5, help="rounds; medians reported (5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--quick", action="store_true", help="a smoke run: --entries 1000 --rounds 2")
    args = p.parse_args(argv)
    if args.quick:
        args.entries, args.rounds = 1000, 2
    if args.entries < 1 or args.rounds < 1:
        p.error("--entries and --rounds must be positive")
    log = logger(args.json)

    with tempfile.TemporaryDirectory(prefix="kakuin-bench-crl-") as tmp:
        directory = Path(tmp)
        manager, _module, _pin = scratch_token(directory, "bench-crl")
        try:
            key = private_key(manager, manager.generate(KeyAlgorithm.ECDSA_P256, "bench-ca"))
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            cert = ca_certificate(key, "bench CA")
            url = f"sqlite:///{directory / 'bench.sqlite3'}"
            upgrade(url)
            store = Store(url)
            entries = make_entries(args.entries)
            log(f"inserting {args.entries:,} revoked certificates ...")
            fill_database(store, entries)
            openssl_out, openssl_cmd = write_openssl_ca(directory, entries)

            def run_openssl() -> None:
                subprocess.run(openssl_cmd, check=True, capture_output=True)

            peers: dict[str, Callable[[], Any]] = {
                "publish": lambda: crl.publish(
                    store, issuer_name=ISSUER, issuer_cert=cert, issuer_key=key
                ),
                "build_crl": lambda: crl.build_crl(
                    cert, key, number=1, this_update=dt.datetime.now(dt.UTC),
                    next_update=dt.datetime.now(dt.UTC) + dt.timedelta(hours=24),
                    entries=entries,
                ),
                "cryptography": lambda: cryptography_crl(cert, key, entries),
                "openssl": run_openssl,
            }
            # Same entries everywhere: compare what each produced once.
            expected = {e.serial for e in entries}
            published = crl.publish(store, issuer_name=ISSUER, issuer_cert=cert, issuer_key=key)
            run_openssl()
            ours = x509.load_der_x509_crl(published.der)
            theirs = x509.load_pem_x509_crl(openssl_out.read_bytes())
            assert {r.serial_number for r in ours} == expected
            assert {r.serial_number for r in theirs} == expected
            assert ours.is_signature_valid(cert.public_key())  # type: ignore[arg-type]
            for parsed in (ours, theirs):
                dated = sum(1 for r in parsed for x in r.extensions
                            if isinstance(x.value, x509.InvalidityDate))
                assert dated == sum(1 for e in entries if e.invalidity_date), dated

            # One CRL per peer and round; the round's rate is 1 / its seconds.
            stats, _ = run_rounds(peers, args.rounds, args.rounds, log, warmup=0)
            seconds = {peer: stats[peer].seconds for peer in PEERS}
            store.dispose(close=True)
        finally:
            manager.close()

    median = {peer: statistics.median(v) for peer, v in seconds.items()}
    result: dict[str, Any] = {
        "environment": environment(
            packages=("cryptography",), tools={"openssl": ["openssl", "version"],
                                               "softhsm": ["softhsm2-util", "--version"]},
            entries=args.entries, rounds=args.rounds),
        "crl_bytes": len(published.der),
        "seconds_median": {k: round(v, 3) for k, v in median.items()},
        "seconds_by_round": {k: [round(x, 3) for x in v] for k, v in seconds.items()},
        "ratio_to_openssl": {k: round(v / median["openssl"], 3) for k, v in median.items()},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    env = result["environment"]
    print(f"\n{env['date']}  {env['cpu']} x{env['nproc']}  Python {env['python']}  "
          f"cryptography {env['cryptography']}  {env['openssl']}  {env['softhsm']}")
    print(f"{args.entries:,} entries, CRL {len(published.der):,} bytes DER, "
          f"median of {args.rounds} rounds")
    print(markdown_table(("peer", "seconds", "/ openssl", "min-max"), [
        (peer, f"{median[peer]:.3f}", f"{median[peer] / median['openssl']:.2f}",
         f"{min(seconds[peer]):.3f}-{max(seconds[peer]):.3f}") for peer in PEERS
    ], left=(0, 3)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
