"""The landing page (/) and the console (/console): parse, authorise, call a plain function
of ``ca``, render. HTML only, no script, nothing from outside (strict CSP), Japanese first."""

from __future__ import annotations

import hmac
import logging
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    g,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.exceptions import HTTPException

from ca import audit, clients, directory, enrollment, registry, revocation
from ca.errors import CAError
from ca.service import CAService
from kakuin.console.config import ConsoleSettings
from kakuin.console.oidc import LoginRefused, PersonPrincipal, Provider, person_of, principal_for
from kakuin.console.oidc import role_for as _role_for
from kakuin.console.sessions import SessionStore

log = logging.getLogger("kakuin.console")
bp = Blueprint("console", __name__, template_folder="templates", static_folder="static",
               static_url_path="/console/static")

CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")

# RFC 5280 reasons in plain words, in the order a board officer meets them.
REASONS = (
    ("keyCompromise", "鍵の危殆化（鍵が漏れた・盗まれた・紛失した）",
     "Key compromise (the key leaked, was stolen or lost)"),
    ("cessationOfOperation", "廃校・統合（学校がなくなった）",
     "School closed or merged"),
    ("affiliationChanged", "所属の変更（設置者・名称が変わった）",
     "Affiliation changed (new founder or name)"),
    ("superseded", "新しい証明書に置き換えた", "Replaced by a new certificate"),
    ("privilegeWithdrawn", "利用資格の取消し", "Privilege withdrawn"),
    ("certificateHold", "一時停止（あとで再開できる）", "Suspend (can be lifted later)"),
    ("unspecified", "その他", "Other"),
)

# Audit actions in plain words (unknown ones are shown as their code).
ACTIONS = {
    "console.login": ("ログイン", "logged in"),
    "console.login-refused": ("ログイン拒否", "login refused"),
    "console.logout": ("ログアウト", "logged out"),
    "seal-request.submitted": ("電子印の申請", "seal requested"),
    "seal-request.approval-recorded": ("承認（1 人目）", "approval recorded"),
    "seal-request.approved": ("承認", "approved"),
    "seal-request.rejected": ("却下", "rejected"),
    "seal-request.issued": ("発行", "issued"),
    "certificate.signing": ("証明書の署名開始", "signing a certificate"),
    "certificate.issued": ("証明書の発行", "certificate issued"),
    "certificate.revoked": ("証明書の失効", "certificate revoked"),
    "certificate.suspended": ("証明書の一時停止", "certificate suspended"),
    "access.denied": ("権限がなく拒否", "access denied"),
    "organization.created": ("組織の登録", "organization registered"),
    "client.created": ("API クライアント作成", "API client created"),
    "client.revoked": ("API クライアント無効化", "API client revoked"),
}

# Why a login was refused, for the person (the detail goes to the log).
REFUSALS = {
    "wrong-issuer": ("発行者（iss）が設定と一致しません。", "The issuer (iss) does not match."),
    "wrong-audience": ("このシステム宛てのトークンではありません（aud）。",
                       "The token is not meant for this system (aud)."),
    "wrong-nonce": ("ログインの照合値（nonce）が一致しません。もう一度ログインしてください。",
                    "The login check value (nonce) does not match. Please log in again."),
    "expired": ("トークンの有効期限が切れています。", "The token has expired."),
    "bad-id-token": ("ID トークンを確認できませんでした。", "The ID token could not be verified."),
    "unknown-organization": ("この法人番号の組織は登録されていません。運用者に連絡してください。",
                             "No organization is registered with this corporate number."),
    "no-role": ("このアカウントには権限がありません。", "This account has no access."),
    "bad-state": ("ログインの状態が確認できません。もう一度ログインしてください。",
                  "The login state is unknown. Please log in again."),
    "provider-unreachable": ("ID プロバイダーに接続できません。しばらくしてから試してください。",
                             "The identity provider cannot be reached. Try again later."),
    "token-exchange-failed": ("ID プロバイダーからトークンを受け取れませんでした。",
                              "No token could be obtained from the identity provider."),
    "userinfo-failed": ("利用者情報を受け取れませんでした。",
                        "The user information could not be obtained."),
    "provider-error": ("ID プロバイダーがログインを拒否しました。",
                       "The identity provider refused the login."),
}


class Console:
    """Per-app state: settings, providers, the session store."""

    def __init__(self, settings: ConsoleSettings, home: Path) -> None:
        self.settings = settings
        self.providers = {p.name: Provider(p) for p in settings.providers if p.enabled}
        self.sessions = SessionStore(home / settings.session_dir, settings.idle_minutes * 60,
                                     settings.absolute_hours * 3600)
        self.cookie = "__Host-kakuin" if settings.secure_cookies else "kakuin_console"


def init_app(app: Flask, settings: ConsoleSettings, home: Path) -> None:
    """The landing page always; the console's pages only when ``[console] enabled``."""
    app.extensions["console"] = Console(settings, home)
    app.register_blueprint(bp)


def _console() -> Console:
    con: Console = current_app.extensions["console"]
    return con


def _ca() -> CAService:
    svc: CAService = current_app.extensions["ca"]
    return svc


def _rid() -> str | None:
    return g.get("request_id")


# -- language, session, CSRF -----------------------------------------------------------------


def _lang() -> str:
    lang = request.args.get("lang") or request.cookies.get("kakuin_lang") or "ja"
    return "en" if lang == "en" else "ja"


def _t(ja: str, en: str) -> str:
    return en if g.get("lang") == "en" else ja


@bp.before_app_request
def _load() -> None:
    g.lang = _lang()


@bp.before_request
def _session() -> Any:
    con = _console()
    if not con.settings.enabled and request.endpoint not in ("console.landing",
                                                             "console.static"):
        abort(404)
    g.sid = request.cookies.get(con.cookie)
    g.session = con.sessions.load(g.sid)
    g.principal = None
    if g.session and g.session.get("user"):
        u = g.session["user"]
        with _ca().store.session() as s:
            org = registry.get(s, u["org"])
            active = org.status == "active"
        if active:
            g.principal = PersonPrincipal(client_id=None, organization_id=u["org"],
                                          role=u["role"], name=u["name"], method="oidc",
                                          subject=u["subject"])
        else:  # the organization closed or merged since login: the session ends
            con.sessions.delete(g.sid)
            g.sid, g.session = None, None
    if request.method == "POST":
        ours = {request.host_url.rstrip("/"), con.settings.public_url}
        origin = request.headers.get("Origin")
        if origin and origin != "null" and origin.rstrip("/") not in ours:
            return _error(403, _t("別のサイトからの送信は受け付けません。",
                                  "Requests from another site are refused."))
        token = request.form.get("csrf", "")
        expected = (g.session or {}).get("csrf", "")
        if not token or not expected or not hmac.compare_digest(token, expected):
            return _error(400, _t("フォームの確認値（CSRF トークン）がありません。"
                                  "ページを開き直してください。",
                                  "The form's check value (CSRF token) is missing. "
                                  "Reload the page."))
    return None


@bp.after_app_request
def _headers(response: Response) -> Response:
    if request.path == "/" or request.path.startswith("/console"):
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Content-Type-Options"] = "nosniff"
        if request.path.startswith("/console") and not request.path.startswith(
                "/console/static"):
            response.headers["Cache-Control"] = "no-store"
        if "lang" in request.args and request.args["lang"] in ("ja", "en"):
            response.set_cookie("kakuin_lang", request.args["lang"], max_age=365 * 86400,
                                samesite="Lax", secure=_secure(), httponly=True)
    if (g.get("sid") and g.get("session") is not None and request.path.startswith("/console")
            and request.endpoint != "console.static"):
        _console().sessions.save(g.sid, g.session)  # sliding idle timeout
    return response


def _secure() -> bool:
    con = current_app.extensions.get("console")
    return bool(con and con.settings.secure_cookies)


def _set_session_cookie(response: Any, sid: str) -> None:
    con = _console()
    response.set_cookie(con.cookie, sid, path="/", httponly=True, samesite="Lax",
                        secure=con.settings.secure_cookies,
                        max_age=int(con.settings.absolute_hours * 3600))


def _render(template: str, status: int = 200, **ctx: Any) -> Any:
    lang = g.get("lang", "ja")
    other = "en" if lang == "ja" else "ja"
    return render_template(template, lang=lang, other=other, t=_t, me=g.get("principal"),
                           csrf=(g.get("session") or {}).get("csrf", ""), **ctx), status


def _error(status: int, message: str) -> Any:
    return _render("console_error.html", status, message=message)


def _require(*roles: str) -> PersonPrincipal:
    me: PersonPrincipal | None = g.get("principal")
    if me is None:
        abort(redirect(url_for("console.home")))
    if roles and me.role not in roles:
        abort(make_response(_error(403, _t("この操作の権限がありません。",
                                           "You may not do this."))))
    return me


@bp.errorhandler(CAError)
def _ca_error(exc: CAError) -> Any:
    return _error(exc.status, exc.detail or exc.title)


@bp.errorhandler(LoginRefused)
def _refused(exc: LoginRefused) -> Any:
    log.warning("console login refused", extra={"request_id": _rid(), "reason": exc.reason,
                                                "detail": exc.detail})
    ja, en = REFUSALS.get(exc.reason, REFUSALS["bad-id-token"])
    return _render("console_error.html", 403, message=_t(ja, en), reason=exc.reason)


# -- landing page ----------------------------------------------------------------------------


@bp.get("/")
def landing() -> Any:
    settings = current_app.extensions["kakuin"].settings
    pki = Path(current_app.config["KAKUIN_PKI_DIR"])
    certs = sorted(p.name for p in pki.glob("*.crt")) if pki.is_dir() else []
    return _render("landing.html", region=settings.trust.region, certs=certs,
                   ca_name=settings.ca.organization)


# -- login -----------------------------------------------------------------------------------


@bp.get("/console/")
def home() -> Any:
    me = g.get("principal")
    if me is None:
        return _render("console_login.html", providers=list(_console().providers.values()))
    with _ca().store.session() as s:
        org = registry.get(s, me.organization_id)
        pending = len(directory.pending_requests(s, me))
        org_name = org.name_ja
    return _render("console_home.html", org_name=org_name, pending=pending)


def _redirect_uri() -> str:
    public = _console().settings.public_url
    if public:
        return public + url_for("console.callback")
    return url_for("console.callback", _external=True)


@bp.get("/console/login/<name>")
def login(name: str) -> Any:
    provider = _console().providers.get(name)
    if provider is None:
        abort(404)
    start = provider.start(_redirect_uri())
    con = _console()
    # A fresh anonymous session holds the login's secrets; the old one (if any) ends.
    if g.sid:
        con.sessions.delete(g.sid)
    sid = con.sessions.create({"login": {"provider": name, "state": start.state,
                                         "nonce": start.nonce, "verifier": start.code_verifier},
                               "lang": g.lang})
    g.sid, g.session = None, None
    response = redirect(start.url, 302)
    _set_session_cookie(response, sid)
    return response


@bp.get("/console/callback")
def callback() -> Any:
    con = _console()
    pending = (g.session or {}).get("login")
    state = request.args.get("state", "")
    if not pending or not state or not hmac.compare_digest(state, pending["state"]):
        raise LoginRefused("bad-state")
    if g.sid:
        con.sessions.delete(g.sid)  # single use, whatever happens next
        g.sid, g.session = None, None
    if "error" in request.args:
        raise LoginRefused("provider-error", request.args.get("error", "")[:100])
    provider = con.providers[pending["provider"]]
    if request.args.get("iss", provider.conf.issuer) != provider.conf.issuer:  # RFC 9207
        raise LoginRefused("wrong-issuer", "the authorization response names another issuer")
    claims = provider.finish(_redirect_uri(), request.args.get("code", ""), pending["verifier"],
                             pending["nonce"])
    person = person_of(provider.conf, claims)
    with _ca().store.session() as s:
        org = directory.by_corporate_number(s, person.organization_claim)
        org_id, org_kind = (org.id, org.kind) if org else (None, None)
    if org_id is None or org_kind is None:
        _audit_login(person.sub, person.name, None, "console.login-refused",
                     {"why": "unknown-organization"})
        raise LoginRefused("unknown-organization", person.organization_claim)
    role = _role_for(con.settings, person, org_kind)
    if role is None:
        _audit_login(person.sub, person.name, org_id, "console.login-refused",
                     {"why": "no-role", "account_type": person.account_type})
        raise LoginRefused("no-role", person.account_type)
    me = principal_for(person, org_id, role)
    sid = con.sessions.create({"user": {"org": org_id, "role": role, "name": person.name,
                                        "subject": me.subject}, "lang": g.lang})
    _audit_login(person.sub, person.name, org_id, "console.login",
                 {"role": role, "account_type": person.account_type,
                  "provider": provider.conf.name}, actor=me.actor)
    response = redirect(url_for("console.home"), 303)
    _set_session_cookie(response, sid)
    return response


def _audit_login(sub: str, name: str, org_id: int | None, action: str, details: dict[str, Any],
                 actor: str | None = None) -> None:
    with _ca().store.session() as s:
        audit.record(s, actor=actor or f"person:{sub}:{name}"[:128], action=action,
                     organization_id=org_id, object_type="person", object_id=sub[:128],
                     request_id=_rid(), details=details)


@bp.post("/console/logout")
def logout() -> Any:
    me = g.get("principal")
    if me is not None:
        sub = (me.subject or "").rsplit("#", 1)[-1]
        _audit_login(sub, me.name, me.organization_id, "console.logout", {}, actor=me.actor)
    if g.sid:
        _console().sessions.delete(g.sid)
    g.sid, g.session = None, None
    response = redirect(url_for("console.home"), 303)
    response.delete_cookie(_console().cookie, path="/", secure=_secure(), httponly=True,
                           samesite="Lax")
    return response


# -- seal requests ---------------------------------------------------------------------------


@bp.get("/console/requests")
def requests_page() -> Any:
    me = _require()
    with _ca().store.session() as s:
        pending = [(r.id, o.name_ja, r.key_algorithm, r.created_at, r.approvals_required)
                   for r, o in directory.pending_requests(s, me)]
    rows = [(*p, len(enrollment.approvals_of(_ca().store, p[0]))) for p in pending]
    return _render("console_requests.html", rows=rows, done=request.args.get("done"))


@bp.post("/console/requests/<request_uuid>/approve")
def approve(request_uuid: str) -> Any:
    me = _require()
    svc = _ca()
    _row, cert = enrollment.approve(svc.store, svc.keys, svc.authority(), svc.profiles, me,
                                   request_uuid, request_id=_rid(),
                                   lint_before_signing=svc.lint_before_signing)
    return redirect(url_for("console.requests_page",
                            done="issued" if cert is not None else "recorded"), 303)


@bp.post("/console/requests/<request_uuid>/reject")
def reject(request_uuid: str) -> Any:
    me = _require()
    svc = _ca()
    reason = (request.form.get("reason") or "").strip()[:1000] or None
    enrollment.reject(svc.store, svc.keys, me, request_uuid, reason, request_id=_rid())
    return redirect(url_for("console.requests_page", done="rejected"), 303)


# -- schools ---------------------------------------------------------------------------------


@bp.get("/console/schools")
def schools_page() -> Any:
    me = _require()
    with _ca().store.session() as s:
        rows = [(o.name_ja, o.school_code, o.status) for o in directory.schools(s, me)]
    return _render("console_schools.html", rows=rows, done=request.args.get("done"))


@bp.post("/console/schools")
def register_school() -> Any:
    me = _require("board-officer")
    assert me.organization_id is not None
    with _ca().store.session() as s:
        registry.add_school(s, name_ja=request.form.get("name_ja", ""),
                            school_code=request.form.get("school_code", "").strip(),
                            board_id=me.organization_id,
                            name_en=request.form.get("name_en") or None, actor=me.actor,
                            request_id=_rid(), confirmed=False)
    return redirect(url_for("console.schools_page", done="registered"), 303)


# -- certificates ----------------------------------------------------------------------------


@bp.get("/console/certificates")
def certificates_page() -> Any:
    me = _require()
    with _ca().store.session() as s:
        rows = [(c.serial, o.name_ja, c.not_before, c.not_after, c.status,
                 c.revocation_reason) for c, o in directory.certificates(s, me)]
    return _render("console_certificates.html", rows=rows, reasons=REASONS,
                   done=request.args.get("done"))


@bp.get("/console/certificates/<serial>.pem")
def download(serial: str) -> Any:
    _require()
    with _ca().store.session() as s:
        cert = revocation.find(s, serial)
        der, name = cert.der, cert.serial
    assert der is not None
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    return Response(pem, mimetype="application/x-pem-file",
                    headers={"Content-Disposition": f'attachment; filename="{name}.pem"'})


@bp.post("/console/certificates/<serial>/revoke")
def revoke(serial: str) -> Any:
    me = _require()
    reason = request.form.get("reason", "")
    if reason not in {r[0] for r in REASONS}:
        return _error(400, _t("理由を選んでください。", "Choose a reason."))
    svc = _ca()
    row = revocation.revoke(svc.store, me, serial, reason, request_id=_rid())
    svc.status_changed(row)
    return redirect(url_for("console.certificates_page", done=row.status), 303)


# -- audit -----------------------------------------------------------------------------------


@bp.get("/console/audit")
def audit_page() -> Any:
    me = _require()
    with _ca().store.session() as s:
        rows = [(e.seq, e.at, e.actor, e.action, e.object_type, e.object_id, e.digest)
                for e in directory.audit_trail(s, me)]
    return _render("console_audit.html", rows=rows, actions=ACTIONS)


# -- operator --------------------------------------------------------------------------------


@bp.get("/console/organizations")
def organizations_page() -> Any:
    _require("ca-operator", "auditor")
    with _ca().store.session() as s:
        orgs = [(o.id, o.kind, o.name_ja, o.corporate_number, o.local_gov_code, o.status)
                for o in directory.organizations(s, "board", "school_corporation")]
        pending = [(o.id, o.name_ja, o.school_code, b.name_ja if b else "")
                   for o, b in directory.pending_schools(s)]
    return _render("console_organizations.html", orgs=orgs, pending=pending,
                   done=request.args.get("done"))


@bp.post("/console/organizations/<int:org_id>/confirm")
def confirm(org_id: int) -> Any:
    me = _require("ca-operator")
    with _ca().store.session() as s:
        registry.confirm_school(s, org_id, actor=me.actor, request_id=_rid())
    return redirect(url_for("console.organizations_page", done="confirmed"), 303)


@bp.get("/console/health")
def health_page() -> Any:
    _require("ca-operator", "auditor")
    from kakuin.app import _check_database, _check_hsm  # the /healthz checks themselves

    with _ca().store.session() as s:
        fresh = directory.status_freshness(s)
    return _render("console_health.html", db=_check_database(), hsm=_check_hsm(), fresh=fresh)


@bp.get("/console/clients")
def clients_page() -> Any:
    _require("ca-operator")
    return _clients_page()


def _clients_page(**ctx: Any) -> Any:
    with _ca().store.session() as s:
        rows = [(c.id, c.name, c.role, o.name_ja, c.created_at, c.revoked_at)
                for c, o in directory.api_clients(s)]
        orgs = [(o.id, o.kind, o.name_ja) for o in directory.organizations(
            s, "board", "school", "school_corporation", "operator") if o.status == "active"]
    return _render("console_clients.html", rows=rows, orgs=orgs, roles=clients.ROLES, **ctx)


@bp.post("/console/clients")
def create_client() -> Any:
    me = _require("ca-operator")
    try:
        org_id = int(request.form.get("organization_id", ""))
    except ValueError:
        return _error(400, _t("組織を選んでください。", "Choose an organization."))
    with _ca().store.session() as s:
        client, token = clients.create_client(
            s, organization_id=org_id, role=request.form.get("role", ""),
            name=request.form.get("name", "").strip(), actor=me.actor, request_id=_rid())
        made = client.name
    return _clients_page(token=token, made=made)


@bp.post("/console/clients/<int:client_id>/revoke")
def revoke_client(client_id: int) -> Any:
    me = _require("ca-operator")
    with _ca().store.session() as s:
        clients.revoke_client(s, client_id, actor=me.actor, request_id=_rid())
    return redirect(url_for("console.clients_page"), 303)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Any:
    return _error(exc.code or 500, exc.description or "")

