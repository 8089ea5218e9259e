"""hsm/ as several nodes use it: keys made elsewhere found at once, lost sessions reopened."""

from __future__ import annotations

import multiprocessing

from hsm.api import HashAlg, KeyAlgorithm, SignScheme
from hsm.pkcs11 import Pkcs11KeyManager


def _generate_elsewhere(module: str, label: str, pin: str, key_label: str, queue) -> None:
    try:
        other = Pkcs11KeyManager(module, label, pin)
        queue.put(other.generate(KeyAlgorithm.ECDSA_P256, key_label).key_id)
        other.close()
    except BaseException as exc:  # report, don't hang the parent
        queue.put(repr(exc))


def test_key_generated_by_another_process_is_found_and_used_at_once(token):
    node = Pkcs11KeyManager(token.module, token.label, token.pin)
    node.keys()  # this node already has an open, logged-in session
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_generate_elsewhere,
                        args=(token.module, token.label, token.pin, "made-by-node-2", queue))
    child.start()
    key_id = queue.get(timeout=120)
    child.join(60)
    assert isinstance(key_id, bytes), key_id
    ref = node.find(label="made-by-node-2")
    assert ref.key_id == key_id
    assert node.sign(ref, b"x", HashAlg.SHA256, SignScheme.ECDSA)
    node.close()


def test_lost_session_is_reopened_without_failing_the_request(token):
    node = Pkcs11KeyManager(token.module, token.label, token.pin)
    ref = node.generate(KeyAlgorithm.ECDSA_P256, "session-loss")
    node.sign(ref, b"warm", HashAlg.SHA256, SignScheme.ECDSA)  # handle cached, fast path
    for session in list(node._idle):  # the HSM (or the network to it) drops our session
        session.close()
    sig = node.sign(ref, b"after loss", HashAlg.SHA256, SignScheme.ECDSA)
    assert sig
    node.refresh()  # closes idle sessions only: the cap of one session still holds
    assert node._opened == 0
    node.sign(ref, b"after refresh", HashAlg.SHA256, SignScheme.ECDSA)
    assert node._opened == 1
    node.close()
