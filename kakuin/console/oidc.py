"""OpenID Connect login (authorization code + PKCE S256, state, nonce) with Authlib, and
the mapping from a person's claims to a :class:`ca.clients.Principal`.

The id_token is checked against the provider's JWKS (signature, ``iss`` exactly the issuer of
discovery, ``aud``/``azp`` this client, ``exp``/``iat`` with a small leeway, ``nonce`` of this
login); userinfo must name the same ``sub``. The gBizID profile maps the userinfo claim
``corporate_number`` to the board, school corporation or operator registered with that
法人番号, and ``account_type`` (1 Entry, 2 Prime, 3 Member) to a role by the settings' rules.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from ca.clients import Principal
from kakuin.console.config import ConsoleSettings, ProviderSettings

# Asymmetric algorithms only: never "none", never HS* keyed with the client secret.
ALGORITHMS = ("RS256", "PS256", "ES256", "ES384", "EdDSA")
_CACHE_SECONDS = 3600
_REFRESH_SECONDS = 60
_TIMEOUT = 10


class LoginRefused(Exception):
    """The login cannot go on; ``reason`` is a stable code shown (translated) to the person."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class PersonPrincipal(Principal):
    """A person logged in through OpenID Connect; audit entries name them by issuer-scoped
    ``sub`` (pseudonymous at gBizID) and display name."""

    @property
    def actor(self) -> str:
        sub = (self.subject or "").rsplit("#", 1)[-1]
        return f"person:{sub}:{self.name}"[:128]


@dataclass(frozen=True)
class LoginStart:
    url: str
    state: str
    nonce: str
    code_verifier: str


class Provider:
    """One configured provider; discovery and JWKS are cached for an hour per process."""

    def __init__(self, conf: ProviderSettings) -> None:
        self.conf = conf
        self._lock = threading.Lock()
        self._meta: tuple[float, dict[str, Any]] | None = None
        self._jwks: tuple[float, dict[str, Any]] | None = None

    def _get_json(self, url: str) -> dict[str, Any]:
        try:
            resp = requests.get(url, timeout=_TIMEOUT, headers={"Accept": "application/json"})
            resp.raise_for_status()
            data = resp.json()
        except (requests.RequestException, ValueError) as exc:
            raise LoginRefused("provider-unreachable", f"{url}: {exc}") from exc
        if not isinstance(data, dict):
            raise LoginRefused("provider-unreachable", f"{url}: not a JSON object")
        return data

    def metadata(self) -> dict[str, Any]:
        with self._lock:
            if self._meta and time.monotonic() - self._meta[0] < _CACHE_SECONDS:
                return self._meta[1]
        meta = self._get_json(self.conf.issuer + "/.well-known/openid-configuration")
        if meta.get("issuer") != self.conf.issuer:  # OIDC Discovery §4.3
            raise LoginRefused("wrong-issuer", f"discovery names {meta.get('issuer')!r}")
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(meta.get(key), str):
                raise LoginRefused("provider-unreachable", f"discovery lacks {key}")
        with self._lock:
            self._meta = (time.monotonic(), meta)
        return meta

    def keys(self, refresh: bool = False) -> KeySet:
        """The provider's JWKS; ``refresh`` (a token the cached keys do not verify: maybe a
        rotation) refetches, at most once a minute so bad tokens cannot hammer the provider."""
        with self._lock:
            cached = self._jwks
        age = time.monotonic() - cached[0] if cached else None
        if cached is None or age is None or age >= _CACHE_SECONDS or (
                refresh and age >= _REFRESH_SECONDS):
            cached = (time.monotonic(), self._get_json(self.metadata()["jwks_uri"]))
            with self._lock:
                self._jwks = cached
        return KeySet.import_key_set(cached[1])  # type: ignore[arg-type]

    def _client(self, redirect_uri: str) -> OAuth2Session:
        return OAuth2Session(
            client_id=self.conf.client_id,
            client_secret=os.environ.get(self.conf.client_secret_env, ""),
            scope=self.conf.scopes, redirect_uri=redirect_uri,
            code_challenge_method="S256",
            token_endpoint_auth_method="client_secret_basic")  # noqa: S106 (a method name)

    def start(self, redirect_uri: str) -> LoginStart:
        state, nonce, verifier = generate_token(32), generate_token(32), generate_token(64)
        url, _ = self._client(redirect_uri).create_authorization_url(
            self.metadata()["authorization_endpoint"], state=state, nonce=nonce,
            code_verifier=verifier)
        return LoginStart(url, state, nonce, verifier)

    def finish(self, redirect_uri: str, code: str, code_verifier: str, nonce: str
               ) -> dict[str, Any]:
        """Exchange the code (with the PKCE verifier), check the id_token, fetch userinfo;
        returns the merged claims (id_token claims win over userinfo for ``sub``)."""
        meta = self.metadata()
        client = self._client(redirect_uri)
        try:
            token = client.fetch_token(meta["token_endpoint"], code=code,
                                       code_verifier=code_verifier, timeout=_TIMEOUT)
        except Exception as exc:  # Authlib raises OAuthError, requests its own
            raise LoginRefused("token-exchange-failed", str(exc)[:300]) from exc
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise LoginRefused("bad-id-token", "no id_token in the token response")
        claims = self.validate_id_token(id_token, nonce)
        info: dict[str, Any] = {}
        if meta.get("userinfo_endpoint"):
            try:
                resp = client.get(meta["userinfo_endpoint"], timeout=_TIMEOUT)
                resp.raise_for_status()
                info = resp.json()
            except (requests.RequestException, ValueError) as exc:
                raise LoginRefused("userinfo-failed", str(exc)[:300]) from exc
            if not isinstance(info, dict) or info.get("sub") != claims["sub"]:
                raise LoginRefused("bad-id-token", "userinfo names another sub")  # §5.3.2
        return {**info, **claims}

    def validate_id_token(self, id_token: str, nonce: str, now: int | None = None
                          ) -> dict[str, Any]:
        """The id_token's claims after OIDC Core §3.1.3.7; ``LoginRefused`` otherwise."""
        meta = self.metadata()
        offered = meta.get("id_token_signing_alg_values_supported") or ["RS256"]
        algorithms = [a for a in ALGORITHMS if a in offered]
        try:
            try:
                token = jwt.decode(id_token, self.keys(), algorithms=algorithms)
            except (JoseError, ValueError):  # maybe rotated keys: fetch the JWKS again
                token = jwt.decode(id_token, self.keys(refresh=True), algorithms=algorithms)
        except (JoseError, ValueError) as exc:
            raise LoginRefused("bad-id-token", f"signature: {exc}") from exc
        claims = dict(token.claims)
        registry = jwt.JWTClaimsRegistry(
            now=now, leeway=self.conf.leeway_seconds,
            iss={"essential": True, "value": self.conf.issuer},
            sub={"essential": True},
            aud={"essential": True, "value": self.conf.client_id},
            exp={"essential": True}, iat={"essential": True},
            nonce={"essential": True, "value": nonce})
        try:
            registry.validate(claims)
        except JoseError as exc:
            claim = getattr(exc, "claim", "") or ""
            reason = {"iss": "wrong-issuer", "aud": "wrong-audience", "nonce": "wrong-nonce",
                      "exp": "expired"}.get(claim, "bad-id-token")
            if "expired" in str(exc).lower():
                reason = "expired"
            raise LoginRefused(reason, str(exc)) from exc
        aud = claims["aud"]
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != self.conf.client_id:
            raise LoginRefused("wrong-audience", "several audiences and azp is not this client")
        return claims


@dataclass(frozen=True)
class Person:
    issuer: str
    sub: str
    name: str
    organization_claim: str
    account_type: str


def person_of(conf: ProviderSettings, claims: dict[str, Any]) -> Person:
    name = claims.get(conf.name_claim) or claims.get("name") or claims["sub"]
    return Person(conf.issuer, str(claims["sub"]), str(name)[:64],
                  str(claims.get(conf.organization_claim) or ""),
                  str(claims.get(conf.account_type_claim) or ""))


def role_for(console: ConsoleSettings, person: Person, org_kind: str) -> str | None:
    """The role by the rules (account type per organization kind), or by a per-person grant."""
    granted = console.grants.get(f"{person.issuer} {person.sub}")
    role = granted or console.rules.get(org_kind, {}).get(person.account_type)
    return None if role in (None, "none") else role


def principal_for(person: Person, organization_id: int, role: str) -> PersonPrincipal:
    # ``subject`` is issuer-scoped: the same ``sub`` at two providers is two people.
    return PersonPrincipal(client_id=None, organization_id=organization_id, role=role,
                           name=person.name, method="oidc",
                           subject=f"{person.issuer}#{person.sub}")
