"""python-pkcs11 backend of :class:`hsm.api.KeyManager`.

Measured on SoftHSM 2.6.1 (design.md): two threads driving two *different* sessions of one
token at once crashed the process, while threads sharing one session were fine. So the pool
defaults to one session and a process never drives more sessions at once than ``sessions``;
raise it only for a module proven safe (real HSMs usually are). Scale with processes.

Log in once per process (a second C_Login raises UserAlreadyLoggedIn); after ``fork`` the
module is initialised again before use (gunicorn workers inherit a dead PKCS#11 state).
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pkcs11
from asn1crypto import core as asn1_core
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11x
from pkcs11.mechanisms import MGF
from pkcs11.util.ec import encode_named_curve_parameters

from hsm.api import HashAlg, KeyAlgorithm, KeyRef, SignScheme, TokenInfo
from hsm.errors import (
    HsmAuthError,
    HsmError,
    HsmKeyExists,
    HsmKeyNotFound,
    HsmRefused,
    HsmUnavailable,
    HsmUnsupported,
)

# DER DigestInfo prefixes (RFC 8017 §9.2 note 1): CKM_RSA_PKCS signs DigestInfo || digest.
_DIGEST_INFO_PREFIX = {
    HashAlg.SHA256: bytes.fromhex("3031300d060960864801650304020105000420"),
    HashAlg.SHA384: bytes.fromhex("3041300d060960864801650304020205000430"),
    HashAlg.SHA512: bytes.fromhex("3051300d060960864801650304020305000440"),
}
_PSS_PARAMS = {
    HashAlg.SHA256: (Mechanism.SHA256, MGF.SHA256),
    HashAlg.SHA384: (Mechanism.SHA384, MGF.SHA384),
    HashAlg.SHA512: (Mechanism.SHA512, MGF.SHA512),
}
_CURVE_OIDS = {
    "1.2.840.10045.3.1.7": KeyAlgorithm.ECDSA_P256,
    "1.3.132.0.34": KeyAlgorithm.ECDSA_P384,
}
_CURVES: dict[KeyAlgorithm, ec.EllipticCurve] = {
    KeyAlgorithm.ECDSA_P256: ec.SECP256R1(),
    KeyAlgorithm.ECDSA_P384: ec.SECP384R1(),
}
# Errors after which a session is discarded and the operation retried once on a new one.
_LOST_SESSION = (
    p11x.SessionHandleInvalid,
    p11x.SessionClosed,
    p11x.DeviceRemoved,
    p11x.TokenNotPresent,
    p11x.UserNotLoggedIn,
)

PinSource = str | Callable[[], str]


class Pkcs11KeyManager:
    """Keys on one token, found by label (SoftHSM slot ids are random)."""

    def __init__(
        self,
        module_path: str,
        token_label: str,
        pin: PinSource,
        *,
        sessions: int = 1,
        acquire_timeout: float = 30.0,
    ) -> None:
        if sessions < 1:
            raise ValueError("sessions must be >= 1")
        self.module_path = module_path
        self.token_label = token_label
        self._pin = pin
        self._size = sessions
        self._timeout = acquire_timeout
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._lib: Any = None
        self._token: Any = None
        # Idle sessions. deque.pop/append are atomic, so the hot path takes no lock; the
        # condition only serves callers waiting for a session when all are busy.
        self._idle: deque[Any] = deque()
        self._returned = threading.Condition(threading.Lock())
        self._waiters = 0
        self._opened = 0
        self._handles: dict[tuple[int, bytes], Any] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def _resolve_pin(self) -> str:
        return self._pin() if callable(self._pin) else self._pin

    def _load(self) -> None:
        """(Re)load the module, find the token and open the first, logged-in session."""
        if not os.path.exists(self.module_path):
            raise HsmUnavailable(f"PKCS#11 module not found: {self.module_path}")
        try:
            lib = pkcs11.lib(self.module_path)
            if self._pid is not None and self._pid != os.getpid():
                # Forked child: the parent's PKCS#11 state is unusable here.
                lib.reinitialize()
            token = lib.get_token(token_label=self.token_label)
        except p11x.NoSuchToken as exc:
            raise HsmUnavailable(f"no token labelled {self.token_label!r}") from exc
        except p11x.MultipleTokensReturned as exc:
            raise HsmUnavailable(f"several tokens labelled {self.token_label!r}") from exc
        except p11x.PKCS11Error as exc:
            raise HsmUnavailable(f"cannot load PKCS#11 module {self.module_path}: {exc}") from exc
        self._lib, self._token = lib, token
        self._handles = {}
        self._idle = deque()
        self._opened = 0
        self._pid = os.getpid()
        self._idle.append(self._open_session())

    def _open_session(self) -> Any:
        try:
            try:
                session = self._token.open(rw=True, user_pin=self._resolve_pin())
            except p11x.UserAlreadyLoggedIn:
                # Login state is per application: another session already logged us in.
                session = self._token.open(rw=True)
        except (
            p11x.PinIncorrect,
            p11x.PinLocked,
            p11x.PinExpired,
            p11x.PinInvalid,
            p11x.PinLenRange,
        ) as exc:
            raise HsmAuthError(
                f"token {self.token_label!r} refused the user PIN ({type(exc).__name__})"
            ) from exc
        except p11x.PKCS11Error as exc:
            raise HsmUnavailable(f"cannot open a session on {self.token_label!r}: {exc!r}") from exc
        self._opened += 1
        return session

    def _ensure_loaded(self) -> None:
        if self._pid == os.getpid() and self._token is not None:
            return
        with self._lock:
            if self._pid != os.getpid() or self._token is None:
                self._load()

    def _acquire(self) -> Any:
        try:
            return self._idle.pop()
        except IndexError:
            pass
        with self._lock:
            if self._opened < self._size:
                return self._open_session()
        deadline = time.monotonic() + self._timeout
        with self._returned:
            self._waiters += 1
            try:
                while True:
                    try:
                        return self._idle.pop()
                    except IndexError:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            raise HsmUnavailable("timed out waiting for an HSM session") from None
                        # Short waits: a release that raced past notify() costs at most this.
                        self._returned.wait(min(remaining, 0.05))
            finally:
                self._waiters -= 1

    def _release(self, session: Any) -> None:
        self._idle.append(session)
        if self._waiters:
            with self._returned:
                self._returned.notify()

    def _discard(self, session: Any) -> None:
        with self._lock:
            self._opened -= 1
            self._forget_handles(lambda k: k[0] == id(session))

    @contextmanager
    def _session(self) -> Iterator[Any]:
        self._ensure_loaded()
        session = self._acquire()
        try:
            yield session
        except _LOST_SESSION:
            self._discard(session)
            raise
        except BaseException:
            self._release(session)
            raise
        self._release(session)

    def _run(self, op: Callable[[Any], Any]) -> Any:
        """Run ``op(session)``; reopen once if the session was lost under us."""
        for attempt in (1, 2):
            try:
                with self._session() as session:
                    return op(session)
            except _LOST_SESSION as exc:
                if attempt == 2:
                    raise HsmUnavailable(f"HSM session lost: {type(exc).__name__}") from exc
                if isinstance(
                    exc, (p11x.UserNotLoggedIn, p11x.TokenNotPresent, p11x.DeviceRemoved)
                ):
                    self._drop_all()
            except HsmError:
                raise
            except p11x.PKCS11Error as exc:
                raise HsmError(f"PKCS#11 operation failed: {type(exc).__name__}") from exc
        raise AssertionError("unreachable")

    def _drop_all(self) -> None:
        """Forget every session; the next use logs in again."""
        with self._lock:
            self._pid = None
            self._token = None

    def close(self) -> None:
        with self._lock:
            while self._idle:
                session = self._idle.pop()
                try:
                    session.close()
                except p11x.PKCS11Error:
                    pass
            self._token = None
            self._pid = None
            self._opened = 0
            self._handles = {}

    # -- keys ------------------------------------------------------------------------------

    def generate(self, algorithm: KeyAlgorithm, label: str, key_id: bytes | None = None) -> KeyRef:
        algorithm = KeyAlgorithm(algorithm)
        key_id = key_id or secrets.token_bytes(16)

        def op(session: Any) -> KeyRef:
            if _find_private(session, key_id=key_id) is not None:
                raise HsmKeyExists(f"a key with id {key_id.hex()} already exists")
            private_template = {
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.SIGN: True,
                Attribute.DECRYPT: False,
                Attribute.UNWRAP: False,
                Attribute.DERIVE: False,
            }
            public_template = {
                Attribute.TOKEN: True,
                Attribute.VERIFY: True,
                Attribute.ENCRYPT: False,
                Attribute.WRAP: False,
            }
            caps = MechanismFlag.SIGN | MechanismFlag.VERIFY
            if algorithm.is_rsa:
                pub, _priv = session.generate_keypair(
                    KeyType.RSA,
                    algorithm.rsa_bits,
                    id=key_id,
                    label=label,
                    store=True,
                    capabilities=caps,
                    public_template=public_template,
                    private_template=private_template,
                )
            else:
                params = session.create_domain_parameters(
                    KeyType.EC,
                    {Attribute.EC_PARAMS: encode_named_curve_parameters(algorithm.curve)},
                    local=True,
                )
                pub, _priv = params.generate_keypair(
                    id=key_id,
                    label=label,
                    store=True,
                    capabilities=caps,
                    public_template=public_template,
                    private_template=private_template,
                )
            return KeyRef(key_id, label, algorithm, _public_key_der(pub, algorithm))

        result: KeyRef = self._run(op)
        return result

    def find(self, *, key_id: bytes | None = None, label: str | None = None) -> KeyRef:
        if key_id is None and label is None:
            raise ValueError("give key_id or label")

        def op(session: Any) -> KeyRef:
            priv = _find_private(session, key_id=key_id, label=label)
            if priv is None:
                what = f"id {key_id.hex()}" if key_id is not None else f"label {label!r}"
                raise HsmKeyNotFound(f"no private key with {what} on token {self.token_label!r}")
            return _key_ref(session, priv)

        result: KeyRef = self._run_refreshing(op)
        return result

    def _run_refreshing(self, op: Callable[[Any], Any]) -> Any:
        """``_run``, and on a key miss once more on fresh sessions before saying "not found".

        Another process (a worker, a node) may just have generated the key: a session opened
        before that may not list it (tokens index their objects per session or per login), so
        a key another node created is visible here at once instead of "briefly not on token".
        """
        try:
            return self._run(op)
        except HsmKeyNotFound:
            self.refresh()
            return self._run(op)

    def refresh(self) -> None:
        """Close the idle sessions so the next operation searches on a new one.

        Sessions in use elsewhere stay open and the session cap holds (SoftHSM must not be
        driven by more sessions than configured). SoftHSM 2.6 re-reads its object store on
        every search anyway (measured: a key generated by another process is found at once);
        network HSMs that cache per session need this.
        """
        closed = []
        with self._lock:
            while self._idle:
                try:
                    closed.append(self._idle.pop())
                except IndexError:
                    break
            self._opened -= len(closed)
            ids = {id(s) for s in closed}
            self._forget_handles(lambda k: k[0] in ids)
        for session in closed:
            try:
                session.close()
            except p11x.PKCS11Error:
                pass

    def keys(self) -> list[KeyRef]:
        def op(session: Any) -> list[KeyRef]:
            refs = []
            # Materialise first: PKCS#11 allows one active search per session.
            for priv in list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})):
                try:
                    refs.append(_key_ref(session, priv))
                except HsmUnsupported:
                    continue
            return sorted(refs, key=lambda r: (r.label, r.key_id))

        result: list[KeyRef] = self._run(op)
        return result

    def destroy(self, key: KeyRef) -> None:
        def op(session: Any) -> None:
            for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                objs = list(session.get_objects({Attribute.CLASS: cls, Attribute.ID: key.key_id}))
                for obj in objs:
                    obj.destroy()

        self._run(op)
        with self._lock:
            self._forget_handles(lambda k: k[1] == key.key_id)

    def _forget_handles(self, predicate: Callable[[tuple[int, bytes]], bool]) -> None:
        for k in [k for k in self._handles if predicate(k)]:
            del self._handles[k]

    def private_key_attributes(self, key: KeyRef) -> dict[str, bool]:
        """CKA_SENSITIVE / CKA_EXTRACTABLE / ... as the token reports them (for audits)."""

        def op(session: Any) -> dict[str, bool]:
            priv = _find_private(session, key_id=key.key_id)
            if priv is None:
                raise HsmKeyNotFound(f"no private key with id {key.key_id_hex}")
            names = (
                "SENSITIVE",
                "EXTRACTABLE",
                "ALWAYS_SENSITIVE",
                "NEVER_EXTRACTABLE",
                "TOKEN",
                "PRIVATE",
            )
            return {n.lower(): bool(priv[getattr(Attribute, n)]) for n in names}

        result: dict[str, bool] = self._run(op)
        return result

    def read_private_value(self, key: KeyRef) -> bytes:
        """Try to read the secret part of a key; a correctly made key makes this raise.

        Exists so tests and ``hsm selftest`` can prove keys are not extractable.
        """

        def op(session: Any) -> bytes:
            priv = _find_private(session, key_id=key.key_id)
            if priv is None:
                raise HsmKeyNotFound(f"no private key with id {key.key_id_hex}")
            attr = Attribute.PRIVATE_EXPONENT if key.algorithm.is_rsa else Attribute.VALUE
            value: bytes = priv[attr]
            return value

        try:
            result: bytes = self._run(op)
        except HsmError as exc:
            if isinstance(exc.__cause__, p11x.AttributeSensitive):
                raise HsmRefused("private key value is sensitive and cannot be read") from exc
            raise
        return result

    # -- signing ---------------------------------------------------------------------------

    def sign_digest(
        self, key: KeyRef, digest: bytes, hash_alg: HashAlg, scheme: SignScheme
    ) -> bytes:
        if type(hash_alg) is not HashAlg:
            hash_alg = HashAlg(hash_alg)
        if type(scheme) is not SignScheme:
            scheme = SignScheme(scheme)
        if len(digest) != hash_alg.digest_size:
            raise HsmUnsupported(
                f"digest is {len(digest)} bytes, {hash_alg.value} needs {hash_alg.digest_size}"
            )
        if key.algorithm.is_rsa != (scheme is not SignScheme.ECDSA):
            raise HsmUnsupported(f"{scheme.value} cannot be used with a {key.algorithm} key")
        if scheme is SignScheme.ECDSA:
            mechanism, param, data = Mechanism.ECDSA, None, digest
        elif scheme is SignScheme.RSA_PKCS1V15:
            mechanism, param, data = (
                Mechanism.RSA_PKCS,
                None,
                _DIGEST_INFO_PREFIX[hash_alg] + digest,
            )
        else:
            hash_mech, mgf = _PSS_PARAMS[hash_alg]
            mechanism, param, data = Mechanism.RSA_PKCS_PSS, (hash_mech, mgf, len(digest)), digest

        raw = self._sign_fast(key.key_id, data, mechanism, param)
        if raw is None:
            raw = self._run_refreshing(
                lambda session: self._sign_op(session, key, data, mechanism, param))
        if scheme is SignScheme.ECDSA:
            half = len(raw) // 2
            return encode_dss_signature(
                int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
            )
        return raw

    def _sign_fast(self, key_id: bytes, data: bytes, mechanism: Any, param: Any) -> bytes | None:
        """The hot path: an idle session whose key handle is cached, no retries, no generator.

        Anything unusual returns None and the caller takes the general path (which reopens
        lost sessions and looks the key up again).
        """
        if self._pid != os.getpid():
            return None
        try:
            session = self._idle.pop()
        except IndexError:
            return None
        try:
            priv = self._handles.get((id(session), key_id))
            if priv is None:
                return None
            sig: bytes = priv.sign(data, mechanism=mechanism, mechanism_param=param)
            return sig
        except p11x.PKCS11Error:
            return None
        finally:
            self._release(session)

    def _sign_op(self, session: Any, key: KeyRef, data: bytes, mechanism: Any, param: Any) -> bytes:
        priv = self._private_handle(session, key)
        try:
            sig: bytes = priv.sign(data, mechanism=mechanism, mechanism_param=param)
        except (p11x.ObjectHandleInvalid, p11x.KeyHandleInvalid):
            self._handles.pop((id(session), key.key_id), None)
            priv = self._private_handle(session, key)
            sig = priv.sign(data, mechanism=mechanism, mechanism_param=param)
        return sig

    def sign(self, key: KeyRef, data: bytes, hash_alg: HashAlg, scheme: SignScheme) -> bytes:
        return self.sign_digest(key, HashAlg(hash_alg).digest(data), hash_alg, scheme)

    def _private_handle(self, session: Any, key: KeyRef) -> Any:
        """The key's object in this session, cached: a C_FindObjects per signature costs."""
        cache_key = (id(session), key.key_id)
        priv = self._handles.get(cache_key)
        if priv is None:
            priv = _find_private(session, key_id=key.key_id)
            if priv is None:
                raise HsmKeyNotFound(f"no private key with id {key.key_id_hex}")
            self._handles[cache_key] = priv
        return priv

    # -- introspection ---------------------------------------------------------------------

    def info(self) -> TokenInfo:
        def op(session: Any) -> TokenInfo:
            token = session.token
            slot = token.slot
            mechs = sorted(
                m.name if isinstance(m, Mechanism) else hex(int(m)) for m in slot.get_mechanisms()
            )
            return TokenInfo(
                module=self.module_path,
                manufacturer=self._lib.manufacturer_id,
                library_description=self._lib.library_description,
                slot_description=slot.slot_description,
                token_label=token.label,
                token_model=token.model,
                token_serial=token.serial.decode()
                if isinstance(token.serial, bytes)
                else str(token.serial),
                mechanisms=tuple(mechs),
            )

        result: TokenInfo = self._run(op)
        return result


def _find_private(session: Any, *, key_id: bytes | None = None, label: str | None = None) -> Any:
    attrs: dict[Attribute, Any] = {Attribute.CLASS: ObjectClass.PRIVATE_KEY}
    if key_id is not None:
        attrs[Attribute.ID] = key_id
    if label is not None:
        attrs[Attribute.LABEL] = label
    found = list(session.get_objects(attrs))
    if len(found) > 1:
        raise HsmKeyExists(f"{len(found)} private keys match; use the key id")
    return found[0] if found else None


def _key_ref(session: Any, priv: Any) -> KeyRef:
    key_id = bytes(priv[Attribute.ID])
    label = str(priv[Attribute.LABEL])
    pubs = list(
        session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: key_id})
    )
    if not pubs:
        raise HsmUnsupported(f"key {key_id.hex()} has no public key object")
    pub = pubs[0]
    key_type = priv[Attribute.KEY_TYPE]
    if key_type == KeyType.RSA:
        bits = int.from_bytes(pub[Attribute.MODULUS], "big").bit_length()
        try:
            algorithm = KeyAlgorithm(f"RSA-{bits}")
        except ValueError as exc:
            raise HsmUnsupported(f"RSA-{bits} is not a supported key size") from exc
    elif key_type == KeyType.EC:
        oid = asn1_core.ObjectIdentifier.load(bytes(pub[Attribute.EC_PARAMS])).dotted
        if oid not in _CURVE_OIDS:
            raise HsmUnsupported(f"curve {oid} is not supported")
        algorithm = _CURVE_OIDS[oid]
    else:
        raise HsmUnsupported(f"key type {key_type} is not supported")
    return KeyRef(key_id, label, algorithm, _public_key_der(pub, algorithm))


def _public_key_der(pub: Any, algorithm: KeyAlgorithm) -> bytes:
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    if algorithm.is_rsa:
        public_key = rsa.RSAPublicNumbers(
            int.from_bytes(pub[Attribute.PUBLIC_EXPONENT], "big"),
            int.from_bytes(pub[Attribute.MODULUS], "big"),
        ).public_key()
    else:
        point = bytes(pub[Attribute.EC_POINT])
        raw_len = 1 + 2 * ((_CURVES[algorithm].key_size + 7) // 8)
        if len(point) != raw_len:
            # Spec-conformant modules wrap the point in a DER OCTET STRING; some do not.
            point = asn1_core.OctetString.load(point).native
        public_key = ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[algorithm], point)
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
