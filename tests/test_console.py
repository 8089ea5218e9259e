"""The console (/console) and landing page (/) with real parts: a real OpenID Connect provider
(panva/oidc-provider on Node.js, gBizID-like claims) on 127.0.0.1, the real app on a socket
over a fresh SQLite database of the session CA, and headless Chromium through WebDriver.

Chromium logs two board officers in, approves a request needing two people (dual control),
revokes the certificate and finds the person named in the audit trail; screenshots of every
screen land in docs/images/. Refusals (wrong iss/aud/nonce, expired or tampered id_token, an
unregistered corporate number, a Member approving, a missing CSRF token, the same person
approving twice) go over plain HTTP.
"""

from __future__ import annotations

import dataclasses
import http.cookiejar
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from ca import audit, clients, registry
from ca.store import Store, upgrade
from kakuin.app import create_app
from kakuin.console.config import ConsoleSettings, ProviderSettings
from kakuin.console.oidc import LoginRefused, Provider
from kakuin.services import Services
from tests.cafixtures import _call, _copy_ca_rows, _corporate

ROOT = Path(__file__).resolve().parent.parent
OIDC_DIR = Path(__file__).resolve().parent / "oidc"
IMAGES = ROOT / "docs" / "images"
SECRET = "kakuin-console-test-secret"  # the provider's and the app's, for this test only
BOARD_CN = _corporate("131041")
OPERATOR_CN = _corporate("999991")
UNKNOWN_CN = _corporate("555555")
ACCOUNTS = {
    "yamada": {"sub": "g-0001", "name": "山田 花子", "account_type": "2",
               "corporate_number": BOARD_CN},
    "sato": {"sub": "g-0002", "name": "佐藤 一郎", "account_type": "2",
             "corporate_number": BOARD_CN},
    "suzuki": {"sub": "g-0003", "name": "鈴木 次郎", "account_type": "3",
               "corporate_number": BOARD_CN},
    "tanaka": {"sub": "g-0004", "name": "田中 四郎", "account_type": "3",
               "corporate_number": BOARD_CN},  # a Member granted board-officer by settings
    "ops": {"sub": "g-0009", "name": "運用 太郎", "account_type": "2",
            "corporate_number": OPERATOR_CN},
    "stranger": {"sub": "g-0666", "name": "無所属 三郎", "account_type": "2",
                 "corporate_number": UNKNOWN_CN},
}


class _LateApp:
    """The socket exists before the app: the provider needs our redirect URI, we its issuer."""

    app: Any = None

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.app(environ, start_response)


@dataclass
class World:
    url: str
    issuer: str
    store: Store
    school: str  # the school system's API token
    provider: Provider
    sessions: Path
    settings: Any
    services: Services


def _node_provider(redirect_uri: str) -> tuple[subprocess.Popen[str], str]:
    if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=OIDC_DIR, check=True,
                       capture_output=True, timeout=300)
    config = {
        "clients": [
            {"client_id": "kakuin", "client_secret": SECRET, "redirect_uris": [redirect_uri]},
            {"client_id": "other", "client_secret": SECRET, "redirect_uris": [redirect_uri]},
        ],
        "accounts": ACCOUNTS,
    }
    proc = subprocess.Popen(["node", "provider.mjs"], cwd=OIDC_DIR, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OIDC_TEST_CONFIG": json.dumps(config)})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, "the OpenID Connect provider did not start"
    return proc, json.loads(line)["issuer"]


@pytest.fixture(scope="module")
def world(settings: Any, services: Services, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("console")
    url = f"sqlite:///{tmp / 'kakuin.db'}"
    upgrade(url)
    store = Store(url)
    _copy_ca_rows(services.store, store)
    profiles = dict(services.profiles)
    profiles["eseal"] = dataclasses.replace(profiles["eseal"], approvals_required=2)
    late = _LateApp()
    server = make_server("127.0.0.1", 0, late, threaded=True)
    base = f"http://127.0.0.1:{server.server_port}"
    proc, issuer = _node_provider(f"{base}/console/callback")
    os.environ["KAKUIN_TEST_OIDC_SECRET"] = SECRET
    conf = ProviderSettings(name="gbizid", title="GビズID", issuer=issuer, client_id="kakuin",
                            client_secret_env="KAKUIN_TEST_OIDC_SECRET", leeway_seconds=5)
    console = ConsoleSettings(secure_cookies=False, session_dir=str(tmp / "sessions"),
                              providers=(conf,), grants={f"{issuer} g-0004": "board-officer"})
    app_settings = dataclasses.replace(settings, console=console)
    svc = Services(app_settings, store, services.keys, profiles)
    svc.ca.maintain()
    late.app = create_app(app_settings, svc)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with store.session() as s:
            registry.add_operator(s, name_ja="kakuin 運用者", actor="test",
                                  corporate_number=OPERATOR_CN)
            board = registry.add_board(s, name_ja="新宿区教育委員会", local_gov_code="131041",
                                       corporate_number=BOARD_CN, actor="test")
            school = registry.add_school(s, name_ja="新宿区立第一中学校",
                                         school_code="C113210000010", board_id=board.id,
                                         actor="test")
            _, school_token = clients.create_client(
                s, organization_id=school.id, role="school-system", name="校務支援システム",
                actor="test")
        yield World(base, issuer, store, school_token, Provider(conf), tmp / "sessions",
                    app_settings, svc)
    finally:
        server.shutdown()
        proc.terminate()
        proc.wait(timeout=10)
        store.dispose(close=True)
        os.environ.pop("KAKUIN_TEST_OIDC_SECRET", None)


# -- a browserless person: cookies, redirects, the provider's login and consent forms ---------


class Person:
    def __init__(self, world: World, *handlers: Any) -> None:
        self.world = world
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar),
                                                  *handlers)

    def open(self, url: str, form: dict[str, str] | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, str, str]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        req = urllib.request.Request(url, data=data, headers=headers or {})
        try:
            with self.opener.open(req, timeout=60) as resp:
                return resp.status, resp.url, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.url, err.read().decode()

    def login(self, account: str) -> tuple[int, str]:
        status, url, html = self.open(f"{self.world.url}/console/login/gbizid")
        for _ in range(4):
            if not url.startswith(self.world.issuer):
                return status, html
            status, url, html = _submit_provider_form(self, url, html, account)
        raise AssertionError(f"the login did not come back: {url}")

    def csrf(self, path: str = "/console/") -> str:
        _, _, html = self.open(self.world.url + path)
        found = re.search(r'name="csrf" value="([^"]+)"', html)
        assert found, html[:500]
        return found.group(1)


def _submit_provider_form(person: Person, url: str, html: str, account: str
                          ) -> tuple[int, str, str]:
    action = re.search(r'<form[^>]*action="([^"]+)"', html)
    prompt = re.search(r'name="prompt" value="(\w+)"', html)
    assert action and prompt, html[:800]
    form = {"prompt": prompt.group(1)}
    if form["prompt"] == "login":
        form.update(login=account, password="any")
    return person.open(urllib.parse.urljoin(url, action.group(1)), form)


def _code_for(world: World, client_id: str, account: str) -> tuple[str, str, str]:
    """A real authorization code for ``client_id`` (state, nonce, PKCE verifier kept here)."""
    from authlib.common.security import generate_token
    from authlib.integrations.requests_client import OAuth2Session

    redirect_uri = f"{world.url}/console/callback"
    client = OAuth2Session(client_id, SECRET, scope="openid profile", redirect_uri=redirect_uri,
                           code_challenge_method="S256")
    nonce, verifier = generate_token(20), generate_token(48)
    auth_url, _ = client.create_authorization_url(f"{world.issuer}/auth", nonce=nonce,
                                                  code_verifier=verifier)

    class Stop(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
            if newurl.startswith(redirect_uri):
                raise _Arrived(newurl)
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    person = Person(world, Stop())
    try:
        _, url, html = person.open(auth_url)
        for _ in range(4):
            _, url, html = _submit_provider_form(person, url, html, account)
    except _Arrived as arrived:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(arrived.url).query)
        token = client.fetch_token(f"{world.issuer}/token", code=query["code"][0],
                                   code_verifier=verifier)
        return token["id_token"], nonce, token["access_token"]
    raise AssertionError("no code came back")


class _Arrived(Exception):
    def __init__(self, url: str) -> None:
        self.url = url


# -- landing page ------------------------------------------------------------------------------


def test_landing_page(world: World) -> None:
    person = Person(world)
    status, _, html = person.open(world.url + "/")
    assert status == 200 and '<html lang="ja">' in html
    for link in ('href="/verify"', 'href="/console/"', 'href="/api/v1/openapi.json"',
                 'href="/trust-list"', 'href="/pki/'):
        assert link in html, link
    assert "電子印の確認" in html
    assert "http://" not in html and "https://" not in html  # nothing from outside
    with person.opener.open(world.url + "/") as resp:
        csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert "frame-ancestors 'none'" in csp
    pki = re.search(r'href="(/pki/[^"]+\.crt)"', html)
    assert pki
    with person.opener.open(world.url + pki.group(1)) as resp:
        assert resp.headers["Content-Type"] == "application/pkix-cert"
    _, _, html = person.open(world.url + "/?lang=en")
    assert '<html lang="en">' in html and "Check a sealed document" in html


# -- id_token checks against the real provider's JWKS ------------------------------------------


def test_id_token_checks(world: World) -> None:
    id_token, nonce, _ = _code_for(world, "kakuin", "yamada")
    claims = world.provider.validate_id_token(id_token, nonce)
    assert claims["sub"] == "g-0001" and claims["aud"] == "kakuin"

    def refused(token: str, nonce: str, provider: Provider = world.provider,
                now: int | None = None) -> str:
        with pytest.raises(LoginRefused) as caught:
            provider.validate_id_token(token, nonce, now=now)
        return caught.value.reason

    assert refused(id_token, "another-nonce") == "wrong-nonce"
    assert refused(id_token, nonce, now=int(claims["exp"]) + 60) == "expired"
    head, body, sig = id_token.split(".")
    flipped = sig[:-4] + ("AAAA" if sig[-4:] != "AAAA" else "BBBB")
    assert refused(f"{head}.{body}.{flipped}", nonce) == "bad-id-token"
    other_token, other_nonce, _ = _code_for(world, "other", "yamada")  # issued to another client
    assert refused(other_token, other_nonce) == "wrong-audience"
    # A provider configured with another issuer name: discovery (and so every token) refused.
    wrong = Provider(dataclasses.replace(world.provider.conf,
                                         issuer=world.issuer.replace("127.0.0.1", "localhost")))
    assert refused(id_token, nonce, provider=wrong) == "wrong-issuer"
    down = Provider(dataclasses.replace(world.provider.conf, issuer="http://127.0.0.1:9"))
    assert refused(id_token, nonce, provider=down) == "provider-unreachable"


# -- login refusals over HTTP -------------------------------------------------------------------


def test_login_refusals(world: World) -> None:
    status, html = Person(world).login("stranger")
    assert status == 403 and "法人番号" in html and "unknown-organization" in html
    status, _, html = Person(world).open(f"{world.url}/console/callback?code=x&state=forged")
    assert status == 403 and "bad-state" in html
    with world.store.session() as s:
        refusals = [e for e in audit.entries(s, 0, 1000) if e.action == "console.login-refused"]
    assert any("g-0666" in e.actor and "無所属" in e.actor for e in refusals)


# -- the browser walk: two people approve, one revokes; refusals in between ---------------------


def _driver() -> Any:
    if shutil.which("chromedriver") is None:
        pytest.fail("chromedriver missing: apt-get install chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                "--lang=ja"):
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    driver.implicitly_wait(10)  # find_element waits for the page a click navigated to
    return driver


def _browser_login(driver: Any, world: World, account: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.delete_all_cookies()
    driver.get(world.url + "/console/")
    driver.find_element(By.PARTIAL_LINK_TEXT, "GビズID").click()
    driver.find_element(By.NAME, "login").send_keys(account)
    driver.find_element(By.NAME, "password").send_keys("any")
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    driver.find_element(By.CSS_SELECTOR, "input[name=prompt][value=consent]")  # waits
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(driver, 20).until(lambda d: d.current_url.startswith(world.url + "/console/"))


def _sees(driver: Any, *texts: str) -> bool:
    """Wait (up to 20 s) until the page shows every text: a click's navigation may lag."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, 20).until(lambda d: all(t in d.page_source for t in texts))
    except TimeoutException:
        return False
    return True


def _shot(driver: Any, name: str) -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(700, min(int(height) + 160, 2400)))
    path = IMAGES / f"console-{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 5000


def test_console_in_chromium(world: World) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    status, req = _call(world.url, "POST", "/api/v1/seal-requests", world.school,
                        {"key": {"hosted": True, "algorithm": "ECDSA-P256"}})
    assert status == 201 and req["approvals_required"] == 2, req
    rid = req["id"]

    driver = _driver()
    try:
        driver.get(world.url + "/")
        _shot(driver, "landing")
        driver.get(world.url + "/console/")
        _shot(driver, "login")
        _browser_login(driver, world, "yamada")
        assert _sees(driver, "山田 花子", "新宿区教育委員会")
        _shot(driver, "home")
        driver.get(world.url + "/console/requests")
        assert "新宿区立第一中学校" in driver.page_source
        _shot(driver, "requests")
        driver.find_element(By.ID, f"approve-{rid}").send_keys(Keys.ENTER)  # by keyboard
        assert _sees(driver, "別の担当者の承認が必要です")  # 1 of 2

        # Refusals over HTTP, while the request waits for a second person.
        yamada = Person(world)
        assert yamada.login("yamada")[0] == 200
        path = f"{world.url}/console/requests/{rid}/approve"
        status, _, html = yamada.open(path, {"csrf": yamada.csrf()})
        assert status == 403 and "already approved" in html  # the same person, a new session
        status, _, html = yamada.open(path, {})
        assert status == 400 and "CSRF" in html  # no token, no action
        suzuki = Person(world)
        status, html = suzuki.login("suzuki")  # a Member: read only
        assert status == 200 and "閲覧のみ" in html
        status, _, html = suzuki.open(path, {"csrf": suzuki.csrf()})
        assert status == 403
        with world.store.session() as s:
            denied = [e for e in audit.entries(s, 0, 1000) if e.action == "access.denied"]
        assert any("鈴木 次郎" in e.actor for e in denied)

        # My schools: register one (pending until the operator confirms).
        driver.get(world.url + "/console/schools")
        driver.find_element(By.ID, "name_ja").send_keys("新宿区立第二中学校")
        driver.find_element(By.ID, "school_code").send_keys("C113210000029")
        driver.find_element(By.CSS_SELECTOR, "form.stack button").click()
        assert _sees(driver, "登録しました", "新宿区立第二中学校")
        _shot(driver, "schools")

        # The second person approves: the certificate is issued.
        _browser_login(driver, world, "sato")
        driver.get(world.url + "/console/requests")
        driver.find_element(By.ID, f"approve-{rid}").click()
        assert _sees(driver, "証明書を発行しました")
        driver.get(world.url + "/console/certificates")
        _shot(driver, "certificates")
        serial = driver.find_element(By.CSS_SELECTOR, "td code").text
        Select(driver.find_element(By.ID, f"why-{serial}")).select_by_value("keyCompromise")
        driver.find_element(By.ID, f"revoke-{serial}").click()
        assert _sees(driver, "失効させました", "鍵の危殆化")
        status, cert = _call(world.url, "GET", f"/api/v1/certificates/{serial}", None)
        assert cert["status"] == "revoked" and cert["revocation_reason"] == "keyCompromise"

        driver.get(world.url + "/console/audit")
        rows = driver.find_elements(By.CSS_SELECTOR, "tbody tr")
        revoked = [r.text for r in rows if "certificate.revoked" in r.text]
        assert revoked and "佐藤 一郎" in revoked[0] and "g-0002" in revoked[0]
        assert "証明書の失効" in revoked[0]
        approved = [r.text for r in rows if "seal-request.approved" in r.text]
        assert approved and "佐藤 一郎" in approved[0]
        assert any("山田 花子" in r.text and "approval-recorded" in r.text for r in rows)
        _shot(driver, "audit")
        driver.get(world.url + "/console/certificates?lang=en")
        assert "Key compromise" in driver.page_source

        # The operator: organizations, pending confirmations, health, API clients.
        _browser_login(driver, world, "ops")
        driver.get(world.url + "/console/organizations?lang=ja")
        assert "新宿区立第二中学校" in driver.page_source
        _shot(driver, "organizations")
        driver.get(world.url + "/console/health")
        assert driver.page_source.count('class="good"') >= 4, driver.page_source
        _shot(driver, "health")
        driver.get(world.url + "/console/clients")
        driver.find_element(By.ID, "c-name").send_keys("新しい校務システム")
        Select(driver.find_element(By.ID, "c-role")).select_by_value("board-officer")
        Select(driver.find_element(By.ID, "c-org")).select_by_visible_text(
            "新宿区教育委員会（board）")
        driver.find_element(By.CSS_SELECTOR, "form.stack button").click()
        token = driver.find_element(By.ID, "new-token").text  # (implicit wait)
        assert token.startswith("kkn_")
        _shot(driver, "clients")
        with world.store.session() as s:
            from ca import directory

            board = directory.by_corporate_number(s, BOARD_CN)
            assert board is not None
            board_id = board.id
        status, org = _call(world.url, "GET", f"/api/v1/organizations/{board_id}", token)
        assert status == 200 and org["name_ja"] == "新宿区教育委員会"  # the new token works

        # Logout ends the server-side session: the old cookie opens nothing.
        cookie = driver.get_cookie("kakuin_console")
        assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Lax"
        driver.find_element(By.CSS_SELECTOR, "form.logout button").click()
        assert _sees(driver, "GビズID でログイン")
        with world.store.session() as s:
            assert any(e.action == "console.logout" and "運用 太郎" in e.actor
                       for e in audit.entries(s, 0, 1000))
        replay = Person(world)
        replay.jar.set_cookie(http.cookiejar.Cookie(
            0, "kakuin_console", cookie["value"], None, False, "127.0.0.1", False, False, "/",
            True, False, None, False, None, None, {}))
        status, _, html = replay.open(world.url + "/console/requests")
        assert "GビズID でログイン" in html
    finally:
        driver.quit()


def test_grant_and_secure_cookies(world: World) -> None:
    tanaka = Person(world)
    status, html = tanaka.login("tanaka")  # a Member, granted by [console.grants]
    assert status == 200 and "田中 四郎（教育委員会 担当者）" in html
    form = {"csrf": tanaka.csrf(), "name_ja": "新宿区立第三中学校", "school_code": "C113210000038"}
    status, _, html = tanaka.open(world.url + "/console/schools", form,
                                  {"Origin": "http://evil.example"})
    assert status == 403 and "別のサイト" in html  # a cross-site form post, even with the token
    status, _, html = tanaka.open(world.url + "/console/schools", form, {"Origin": world.url})
    assert status == 200 and "新宿区立第三中学校" in html
    secure = dataclasses.replace(world.settings, console=dataclasses.replace(
        world.settings.console, secure_cookies=True))
    server = make_server("127.0.0.1", 0, create_app(secure, world.services), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any) -> None:  # type: ignore[override]
                return None

        opener = urllib.request.build_opener(NoRedirect())
        with pytest.raises(urllib.error.HTTPError) as caught:
            opener.open(f"http://127.0.0.1:{server.server_port}/console/login/gbizid")
        assert caught.value.code == 302
        assert caught.value.headers["Location"].startswith(world.issuer + "/auth?")
        for part in ("code_challenge_method=S256", "nonce=", "state=", "code_challenge="):
            assert part in caught.value.headers["Location"], part
        cookie = caught.value.headers["Set-Cookie"]
        assert cookie.startswith("__Host-kakuin=")
        for attribute in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/"):
            assert attribute in cookie, attribute
        assert "Domain" not in cookie
    finally:
        server.shutdown()
    off = dataclasses.replace(world.settings, console=dataclasses.replace(
        world.settings.console, enabled=False))
    server = make_server("127.0.0.1", 0, create_app(off, world.services), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:  # console off: the landing page stays, the console's pages are gone
        base = f"http://127.0.0.1:{server.server_port}"
        assert Person(world).open(base + "/")[0] == 200
        assert Person(world).open(base + "/console/")[0] == 404
        assert Person(world).open(base + "/console/login/gbizid")[0] == 404
    finally:
        server.shutdown()


def test_idle_timeout(world: World) -> None:
    person = Person(world)
    assert person.login("yamada")[0] == 200
    for path in world.sessions.glob("*.json"):  # age every session past the idle limit
        data = json.loads(path.read_text())
        data["seen"] = time.time() - 31 * 60
        path.write_text(json.dumps(data))
    _, _, html = person.open(world.url + "/console/requests")
    assert "GビズID でログイン" in html


def test_console_settings() -> None:
    from kakuin.console.config import ConsoleSettingsError, console_settings

    parsed = console_settings({"console": {
        "secure_cookies": "0",
        "providers": {"gbizid": {"issuer": "https://idp.example/", "client_id": "c"}},
        "rules": {"board": {"3": "board-officer"}}, "grants": {"https://idp.example s": "none"}}})
    assert not parsed.secure_cookies and parsed.providers[0].issuer == "https://idp.example"
    assert parsed.providers[0].client_secret_env == "KAKUIN_OIDC_GBIZID_SECRET"
    assert parsed.rules["board"] == {"3": "board-officer"}
    assert parsed.rules["operator"]["2"] == "ca-operator"  # defaults kept for other kinds
    for bad in ({"providers": {"x": {"client_secret": "s"}}},
                {"providers": {"x": {"isuer": "typo"}}},
                {"rules": {"board": {"2": "root"}}},
                {"rules": {"school": {"2": "board-officer"}}}):
        with pytest.raises(ConsoleSettingsError):
            console_settings({"console": bad})


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_directory_queries(kind: str, tmp_path: Path) -> None:
    """The console's listings (ca/directory.py) run on both databases, within jurisdiction."""
    from ca import directory
    from ca.clients import Principal
    from tests.dbutil import database

    with database(kind, tmp_path) as url:
        upgrade(url)
        store = Store(url)
        try:
            with store.session() as s:
                op = registry.add_operator(s, name_ja="運用者", actor="t",
                                           corporate_number=OPERATOR_CN)
                a = registry.add_board(s, name_ja="新宿区教育委員会", local_gov_code="131041",
                                       corporate_number=BOARD_CN, actor="t")
                b = registry.add_board(s, name_ja="札幌市教育委員会", local_gov_code="011002",
                                       actor="t")
                registry.add_school(s, name_ja="新宿区立第一中学校", school_code="C113210000010",
                                    board_id=a.id, actor="t")
                registry.add_school(s, name_ja="新宿区立第二中学校", school_code="C113210000029",
                                    board_id=a.id, actor="t", confirmed=False)
                _, _ = clients.create_client(s, organization_id=b.id, role="board-officer",
                                             name="b", actor="t")
                ids = (op.id, a.id, b.id)
            officer = Principal(None, ids[1], "board-officer", "x", subject="s")
            operator = Principal(None, ids[0], "ca-operator", "y", subject="o")
            with store.session() as s:
                found = directory.by_corporate_number(s, BOARD_CN)
                assert found is not None and found.id == ids[1]
                assert directory.by_corporate_number(s, UNKNOWN_CN) is None
                assert directory.by_corporate_number(s, "1' OR '1'='1") is None
                assert directory.jurisdiction(s, operator) is None
                assert len(directory.jurisdiction(s, officer) or []) == 3  # board + 2 schools
                mine = directory.schools(s, officer)
                assert [o.status for o in mine] == ["pending", "active"]
                assert len(directory.schools(s, operator)) == 2
                pending = [o.name_ja for o, _ in directory.pending_schools(s)]
                assert pending == ["新宿区立第二中学校"]
                assert directory.pending_requests(s, officer) == []
                assert directory.certificates(s, officer) == []
                trail = directory.audit_trail(s, officer)
                seen = directory.jurisdiction(s, officer) or []
                assert trail and all(e.organization_id in seen for e in trail)
                assert len(directory.audit_trail(s, operator)) > len(trail)
                assert [c.name for c, _ in directory.api_clients(s)] == ["b"]
                assert [f.what for f in directory.status_freshness(s)] == [
                    "OCSP", "TSA", "trust list"]
        finally:
            store.dispose(close=True)
