"""Property-based fuzzing of EVERY endpoint of the Flask url_map over real HTTP: random
paths, methods, tokens, query strings, JSON, form and raw bodies. No answer may be a 5xx.

The endpoints are enumerated from the app's own url_map, so a new endpoint is fuzzed (and
swept with fixed hostile requests) without anyone remembering to add it here. Bounded:
``max_examples`` and the sweep keep the module well under two minutes for both databases.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
import uuid
from typing import Any
from urllib.parse import quote, urlencode

from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from werkzeug.routing import Rule

from ca.models import Certificate
from kakuin.app import create_app
from tests.cafixtures import Env
from tests.fixtures_pdf import minimal_pdf

EXAMPLES = 250  # per database; about 20 s each on this machine
PROTOCOL_TYPES = {"/ocsp": "application/ocsp-response", "/tsa": "application/timestamp-reply"}
JSON_KEYS = [
    "kind", "name_ja", "name_en", "school_code", "board_id", "local_gov_code",
    "corporate_number", "prefecture", "organization_id", "csr", "key", "hosted", "algorithm",
    "profile", "replaces_serial", "reason", "invalidity_date", "records", "credentialID",
    "SAD", "hashes", "hash", "hashAlgorithmOID", "hashAlgo", "numSignatures", "signAlgo",
    "signAlgoParams", "operationMode", "credentialInfo", "certInfo", "certificates", "lang",
]
FORM_KEYS = ["level", "visible", "page", "box", "field", "reason", "location",
             "organization_id", "detached", "name", "lang"]
HOSTILE_TEXT = ["", "\x00", "\ud800", "\u202e", "0,0,0.0001,0.0001", "1e400", "NaN",
                str(2**63), str(10**30), "-1", "B-LTA", "true", "x" * 5000, "../../etc/passwd"]


def _app_rules(env: Env) -> list[Rule]:
    assert env.services is not None
    app: Flask = create_app(env.services.settings, env.services)
    return sorted(app.url_map.iter_rules(), key=lambda r: r.rule)


def _methods(rule: Rule) -> list[str]:
    return sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})


def _send(env: Env, method: str, path: str, body: bytes | None, ctype: str | None,
          token: str | None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": ctype} if ctype else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(env.url + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _check(env: Env, method: str, path: str, code: int, headers: dict[str, str],
           raw: bytes) -> None:
    assert code < 500, f"{method} {path[:200]} -> {code}: {raw[:400]!r}"
    bare = path.split("?", 1)[0]
    if bare in PROTOCOL_TYPES and method == "POST":  # protocol errors, not HTTP ones
        assert code == 200 and headers["Content-Type"] == PROTOCOL_TYPES[bare], (path, code)


def _fill(rule: Rule, values: dict[str, str]) -> str:
    """The rule's path with each ``<converter:name>`` replaced by its (quoted) value."""
    return re.sub(r"<([^>]+)>",
                  lambda m: quote(values[m.group(1).rsplit(":", 1)[-1]], safe="",
                                    errors="surrogatepass"), rule.rule)


def _converter(rule: Rule, arg: str) -> str:
    converter = rule._converters[arg]  # where werkzeug keeps it
    return type(converter).__name__


# -- a fixed sweep: every rule x method, a few hostile requests each --------------------------


def test_every_endpoint_survives_a_hostile_sweep(sealer: Env) -> None:
    rules = _app_rules(sealer)
    assert len(rules) > 20  # sanity: the whole app, not a blueprint
    deep = b"[" * 10_000 + b"]" * 10_000
    bodies: list[tuple[bytes | None, str | None]] = [
        (None, None), (deep, "application/json"), (b'{"a":1,"a":2}', "application/json"),
        (b"\xff\xfe\x00garbage", "application/octet-stream"),
        (b"%PDF-1.7\n" + b"\x00" * 64, "application/pdf"),
    ]
    for rule in rules:
        values = {}
        for arg in rule.arguments:
            kind = _converter(rule, arg)
            values[arg] = {"IntegerConverter": str(10**30), "AnyConverter": "v2"}.get(
                kind, "\x00" + "x" * 300)
        path = _fill(rule, values)
        for method in _methods(rule):
            for token in (None, "bad-token", sealer.school, sealer.operator):
                for body, ctype in bodies if method != "GET" else bodies[:1]:
                    code, headers, raw = _send(sealer, method, path, body, ctype, token)
                    _check(sealer, method, path, code, headers, raw)


# -- random requests -----------------------------------------------------------------------


def _json_values(known: list[Any]) -> st.SearchStrategy[Any]:
    """Any JSON, often with real ids (so handlers get past their lookups) or hostile text."""
    scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
               | st.floats(allow_nan=False, allow_infinity=False)
               | st.text(max_size=40) | st.sampled_from(HOSTILE_TEXT) | st.sampled_from(known))
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(JSON_KEYS) | st.text(max_size=8), inner, max_size=5),
        max_leaves=12,
    )


@st.composite
def requests(draw: st.DrawFn, rules: list[Rule], env: Env, known: dict[str, Any],
             ) -> tuple[str, str, bytes | None, str | None, str | None]:
    rule = draw(st.sampled_from(rules))
    method = draw(st.sampled_from(_methods(rule)))
    real = {"serial": known["serial"], "uuid": known["request"]}
    values = {}
    for arg in rule.arguments:
        kind = _converter(rule, arg)
        if kind == "IntegerConverter":
            values[arg] = str(draw(st.sampled_from([env.school_id, env.board_a, 1])
                                   | st.integers(min_value=0, max_value=10**40)))
        elif kind == "AnyConverter":
            values[arg] = draw(st.sampled_from(["v1", "v2"]))
        else:
            values[arg] = draw(st.sampled_from([real["serial"], real["uuid"], "kakuin-root-ca",
                                                "kakuin-issuing-ca", "verify.css"])
                               | st.text(min_size=1, max_size=60)
                               | st.sampled_from([t for t in HOSTILE_TEXT if t]))
    path = _fill(rule, values)
    query = draw(st.dictionaries(st.sampled_from(FORM_KEYS),
                                 st.text(max_size=30) | st.sampled_from(HOSTILE_TEXT),
                                 max_size=3))
    if query:
        path += "?" + urlencode(query, encoding="utf-8", errors="surrogatepass")
    token = draw(st.sampled_from([None, "bad", env.school, env.officer_a, env.officer_b,
                                  env.operator]))
    if method == "GET":
        return method, path, None, None, token
    kind = draw(st.sampled_from(["json", "json-text", "bytes", "form", "multipart", "none"]))
    if kind == "json":
        body = json.dumps(draw(_json_values(list(known.values()))),
                          ensure_ascii=draw(st.booleans())).encode(
            "utf-8", "surrogatepass")
        return method, path, body, "application/json", token
    if kind == "json-text":
        return method, path, draw(st.text(max_size=200)).encode("utf-8", "surrogatepass"), \
            "application/json", token
    if kind == "bytes":
        ctype = draw(st.sampled_from(["application/octet-stream", "application/pdf",
                                      "application/ocsp-request", "application/timestamp-query",
                                      "application/json", "text/plain"]))
        return method, path, draw(st.binary(max_size=300)), ctype, token
    if kind == "form":
        form = draw(st.dictionaries(st.sampled_from(FORM_KEYS), st.text(max_size=30),
                                    max_size=4))
        return method, path, urlencode(form, errors="surrogatepass").encode(), \
            "application/x-www-form-urlencoded", token
    if kind == "multipart":
        boundary = uuid.uuid4().hex
        form = draw(st.dictionaries(st.sampled_from(FORM_KEYS),
                                    st.text(max_size=30) | st.sampled_from(HOSTILE_TEXT),
                                    max_size=4))
        file = draw(st.sampled_from([minimal_pdf(), b"", b"%PDF-1.4\n%%EOF"])
                    | st.binary(max_size=200))
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n'
                 .encode() + v.encode("utf-8", "surrogatepass") + b"\r\n"
                 for k, v in form.items()]
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                     f'filename="f.pdf"\r\nContent-Type: application/pdf\r\n\r\n'.encode()
                     + file + b"\r\n" + f"--{boundary}--\r\n".encode())
        return method, path, b"".join(parts), f"multipart/form-data; boundary={boundary}", token
    return method, path, None, None, token


def test_random_requests_never_get_a_5xx(sealer: Env) -> None:
    rules = _app_rules(sealer)
    known = _known(sealer)
    started = time.monotonic()

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=False, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        method, path, body, ctype, token = data.draw(requests(rules, sealer, known))
        code, headers, raw = _send(sealer, method, path, body, ctype, token)
        _check(sealer, method, path, code, headers, raw)

    run()
    assert time.monotonic() - started < 90, "fuzzing exceeded its time budget"


def _known(env: Env) -> dict[str, Any]:
    """Ids that exist in this database: the school's seal, its CSC credential, a request."""
    with env.store.session() as s:
        cert = s.execute(select(Certificate.serial, Certificate.seal_request_id)
                         .where(Certificate.kind == "eseal")).first()
    assert cert is not None
    return {"serial": cert.serial, "credential": f"{env.school_id}-{cert.serial}",
            "request": cert.seal_request_id, "school": env.school_id, "board": env.board_a}
