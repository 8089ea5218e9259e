"""Signatures per second through ``hsm/``, beside raw python-pkcs11 and in-memory ``cryptography``.

For RSA-2048, RSA-3072, P-256 and P-384, at 1 and 2 threads, three peers sign the same 64-byte
message in the same process and the same run:

- ``hsm``: ``Pkcs11KeyManager.sign`` (hash in Python, sign the digest in SoftHSM, DER-encode
  ECDSA signatures), with its default single session.
- ``raw``: python-pkcs11 directly on the same token and key: the key object is looked up once,
  then each signature hashes with hashlib and calls ``C_Sign`` with CKM_ECDSA (and DER-encodes
  the r||s result, as ``hsm/`` does) or CKM_RSA_PKCS over DigestInfo || digest. At 2 threads
  both threads share ONE session: SoftHSM 2.6.1 crashed with two sessions signing at once.
- ``cryptography``: an in-memory key of the same kind, ``key.sign(msg, ...)``.

Every cell is split into rounds and the peers take turns (order reversed every other round), so
slow drift on a shared machine hits all peers alike. Figures are only comparable with the peers
of the same run. The token is a throwaway SoftHSM token in a temporary directory.

    .venv/bin/python bench/hsm_sign.py [--seconds 2] [--threads 1,2] [--rounds 10] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pkcs11
from cryptography.hazmat.backends.openssl.backend import backend as openssl_backend
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from harness import environment, markdown_table, print_environment, scratch_token
from pkcs11 import Mechanism, ObjectClass
from pkcs11 import exceptions as p11x

from hsm.api import KeyAlgorithm, KeyRef, SignScheme
from hsm.pkcs11 import Pkcs11KeyManager

SignFn = Callable[[bytes], bytes]

PEERS = ("hsm", "raw", "cryptography")
ALGORITHMS = (
    KeyAlgorithm.RSA_2048,
    KeyAlgorithm.RSA_3072,
    KeyAlgorithm.ECDSA_P256,
    KeyAlgorithm.ECDSA_P384,
)
BENCH_LABEL = "kakuin-bench"  # a throwaway token in a temporary directory
MESSAGE_SIZE = 64
WARMUP_OPS = 20

# DER DigestInfo prefixes (RFC 8017 §9.2 note 1), written out again so the raw peer owes
# nothing to hsm/.
DIGEST_INFO = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
}
CRYPTO_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
}


@dataclass
class Cell:
    algorithm: str
    threads: int
    ops_per_s: dict[str, float]
    ops: dict[str, int]
    seconds: dict[str, float]
    # hsm/raw per round: its spread says how much of the ratio is noise.
    hsm_raw_by_round: list[float] = field(default_factory=list)

    @property
    def hsm_raw(self) -> float:
        return self.ops_per_s["hsm"] / self.ops_per_s["raw"]

    @property
    def hsm_cryptography(self) -> float:
        return self.ops_per_s["hsm"] / self.ops_per_s["cryptography"]


# -- peers -------------------------------------------------------------------------------------


def hsm_signer(manager: Pkcs11KeyManager, ref: KeyRef) -> SignFn:
    hash_alg = ref.algorithm.default_hash
    scheme = SignScheme.RSA_PKCS1V15 if ref.algorithm.is_rsa else SignScheme.ECDSA

    def sign(msg: bytes) -> bytes:
        return manager.sign(ref, msg, hash_alg, scheme)

    return sign


def raw_signer(session: Any, ref: KeyRef) -> SignFn:
    """The same work as hsm/ per signature, with nothing around it."""
    priv = session.get_key(object_class=ObjectClass.PRIVATE_KEY, id=ref.key_id)
    hash_name = ref.algorithm.default_hash.value
    new_hash = getattr(hashlib, hash_name)

    if ref.algorithm.is_rsa:
        prefix = DIGEST_INFO[hash_name]

        def sign_rsa(msg: bytes) -> bytes:
            sig: bytes = priv.sign(prefix + new_hash(msg).digest(), mechanism=Mechanism.RSA_PKCS)
            return sig

        return sign_rsa

    def sign_ec(msg: bytes) -> bytes:
        rs: bytes = priv.sign(new_hash(msg).digest(), mechanism=Mechanism.ECDSA)
        half = len(rs) // 2
        return encode_dss_signature(
            int.from_bytes(rs[:half], "big"), int.from_bytes(rs[half:], "big")
        )

    return sign_ec


def cryptography_signer(algorithm: KeyAlgorithm) -> tuple[SignFn, Any]:
    """An in-memory key of the same kind; returns the signer and its public key."""
    hash_obj = CRYPTO_HASHES[algorithm.default_hash.value]()
    if algorithm.is_rsa:
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=algorithm.rsa_bits)
        pkcs1 = padding.PKCS1v15()

        def sign_rsa(msg: bytes) -> bytes:
            return rsa_key.sign(msg, pkcs1, hash_obj)

        return sign_rsa, rsa_key.public_key()

    ec_key = ec.generate_private_key(
        ec.SECP256R1() if algorithm.curve == "secp256r1" else ec.SECP384R1()
    )
    ecdsa = ec.ECDSA(hash_obj)

    def sign_ec(msg: bytes) -> bytes:
        return ec_key.sign(msg, ecdsa)

    return sign_ec, ec_key.public_key()


def check(public_key: Any, algorithm: KeyAlgorithm, sig: bytes, msg: bytes) -> None:
    """Each peer must produce a signature that verifies, or the comparison means nothing."""
    hash_obj = CRYPTO_HASHES[algorithm.default_hash.value]()
    if algorithm.is_rsa:
        public_key.verify(sig, msg, padding.PKCS1v15(), hash_obj)
    else:
        public_key.verify(sig, msg, ec.ECDSA(hash_obj))


# -- measurement -------------------------------------------------------------------------------


def measure(fn: SignFn, msg: bytes, threads: int, seconds: float) -> tuple[int, float]:
    """Run ``fn`` on ``threads`` threads for ``seconds``; return (operations, elapsed)."""
    barrier = threading.Barrier(threads)
    counts = [0] * threads
    spans: list[tuple[float, float]] = [(0.0, 0.0)] * threads
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait()
            clock = time.perf_counter
            start = clock()
            deadline = start + seconds
            n = 0
            now = start
            while now < deadline:
                fn(msg)
                n += 1
                now = clock()
            counts[i] = n
            spans[i] = (start, now)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise errors[0]
    elapsed = max(end for _, end in spans) - min(start for start, _ in spans)
    return sum(counts), elapsed


def run_cell(
    algorithm: KeyAlgorithm,
    signers: dict[str, SignFn],
    msg: bytes,
    threads: int,
    seconds: float,
    rounds: int,
) -> Cell:
    ops = dict.fromkeys(PEERS, 0)
    spent = dict.fromkeys(PEERS, 0.0)
    by_round: list[float] = []
    for r in range(rounds):
        order = PEERS if r % 2 == 0 else tuple(reversed(PEERS))
        rates: dict[str, float] = {}
        for peer in order:
            n, elapsed = measure(signers[peer], msg, threads, seconds / rounds)
            ops[peer] += n
            spent[peer] += elapsed
            rates[peer] = n / elapsed
        by_round.append(rates["hsm"] / rates["raw"])
    return Cell(
        algorithm=algorithm.value,
        threads=threads,
        ops_per_s={p: round(ops[p] / spent[p], 1) for p in PEERS},
        ops=ops,
        seconds={p: round(spent[p], 3) for p in PEERS},
        hsm_raw_by_round=[round(x, 3) for x in by_round],
    )


# -- environment -------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench_environment(args: argparse.Namespace) -> dict[str, Any]:
    return environment(
        packages=("cryptography", "python-pkcs11"),
        cpu=cpu_model(),
        cryptography_openssl=openssl_backend.openssl_version_text(),
        # The system libcrypto, which python's ssl and SoftHSM (libcrypto.so.3) both load.
        system_openssl=ssl.OPENSSL_VERSION,
        seconds_per_cell=args.seconds,
        rounds=args.rounds,
        message_bytes=MESSAGE_SIZE,
    )


# -- output ------------------------------------------------------------------------------------


def table(cells: Sequence[Cell]) -> str:
    head = (
        "algorithm",
        "threads",
        "hsm/ ops/s",
        "raw p11 ops/s",
        "crypto ops/s",
        "hsm/raw",
        "hsm/crypto",
        "hsm/raw min-max of rounds",
    )
    rows = [
        (
            c.algorithm,
            str(c.threads),
            f"{c.ops_per_s['hsm']:,.0f}",
            f"{c.ops_per_s['raw']:,.0f}",
            f"{c.ops_per_s['cryptography']:,.0f}",
            f"{c.hsm_raw:.3f}",
            f"{c.hsm_cryptography:.3f}",
            f"{min(c.hsm_raw_by_round):.2f}-{max(c.hsm_raw_by_round):.2f}",
        )
        for c in cells
    ]
    return markdown_table(head, rows, left=(0, 7))


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument(
        "--seconds", type=float, default=2.0, help="measuring time per peer and cell (default 2)"
    )
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument(
        "--rounds",
        type=int,
        default=10,
        help="split each cell into this many alternating rounds (default 10)",
    )
    p.add_argument(
        "--algorithms",
        default=",".join(a.value for a in ALGORITHMS),
        help="comma-separated subset of " + ",".join(a.value for a in ALGORITHMS),
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: --seconds 0.2 --rounds 2 --threads 1 --algorithms ECDSA-P256")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds, args.threads = 0.2, 2, "1"
        args.algorithms = KeyAlgorithm.ECDSA_P256.value
    args.thread_counts = [int(t) for t in args.threads.split(",") if t.strip()]
    args.algs = [KeyAlgorithm(a.strip()) for a in args.algorithms.split(",") if a.strip()]
    if (
        args.seconds <= 0
        or args.rounds < 1
        or not args.thread_counts
        or min(args.thread_counts) < 1
    ):
        p.error("--seconds must be > 0, --rounds >= 1, --threads positive integers")
    return args


def open_raw_session(module: str, pin: str) -> Any:
    """Our own session on the token; login is per process, hsm/ has already logged in."""
    token = pkcs11.lib(module).get_token(token_label=BENCH_LABEL)
    try:
        return token.open(user_pin=pin)
    except p11x.UserAlreadyLoggedIn:
        return token.open()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def log(line: str) -> None:  # progress on stderr; stdout holds only the result
        print(line, file=sys.stderr, flush=True)

    env = bench_environment(args)
    msg = os.urandom(MESSAGE_SIZE)

    with tempfile.TemporaryDirectory(prefix="kakuin-bench-") as tmp:
        manager, module, pin = scratch_token(Path(tmp), BENCH_LABEL)  # default: one session
        refs = {alg: manager.generate(alg, f"bench-{alg.value}") for alg in args.algs}
        session = open_raw_session(module, pin)
        cells: list[Cell] = []
        try:
            for alg, ref in refs.items():
                crypto_fn, crypto_pub = cryptography_signer(alg)
                signers = {
                    "hsm": hsm_signer(manager, ref),
                    "raw": raw_signer(session, ref),
                    "cryptography": crypto_fn,
                }
                hsm_pub = serialization.load_der_public_key(ref.public_key_der)
                for peer, fn in signers.items():
                    for _ in range(WARMUP_OPS):
                        fn(msg)
                    check(crypto_pub if peer == "cryptography" else hsm_pub, alg, fn(msg), msg)
                for threads in args.thread_counts:
                    cell = run_cell(alg, signers, msg, threads, args.seconds, args.rounds)
                    cells.append(cell)
                    log(
                        f"{cell.algorithm:<10} threads={threads}  hsm {cell.ops_per_s['hsm']:9,.0f}"
                        f"  raw {cell.ops_per_s['raw']:9,.0f}"
                        f"  crypto {cell.ops_per_s['cryptography']:9,.0f}"
                        f"  hsm/raw {cell.hsm_raw:.3f}"
                    )
        finally:
            session.close()
            manager.close()

    if args.json:
        out = {
            "environment": env,
            "cells": [
                {
                    **asdict(c),
                    "ratio_hsm_raw": round(c.hsm_raw, 4),
                    "ratio_hsm_cryptography": round(c.hsm_cryptography, 4),
                }
                for c in cells
            ],
        }
        print(json.dumps(out, indent=2))
    else:
        print()
        print_environment(env, ("date", "command", "nproc", "cpu", "python", "cryptography",
                                "cryptography_openssl", "system_openssl", "python-pkcs11",
                                "softhsm"))
        print()
        print(table(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
