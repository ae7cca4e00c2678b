"""The web page's server side: the page and its assets with a strict CSP, `/` for browsers,
and the refresh-token cookie on login, refresh and logout."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.routes.auth import REFRESH_COOKIE
from app.routes.web import WEB_DIR

LOGIN, REFRESH, LOGOUT, ME = "/api/auth/login", "/api/auth/refresh", "/api/auth/logout", "/api/auth/me"
PASSWORD = "correct horse battery"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


@pytest.fixture
def browser_client(app) -> TestClient:
    """Its own cookie jar, so cookies never leak between tests through the shared client."""
    return TestClient(app)


def _set_cookie(response) -> str:
    cookies = [v for k, v in response.headers.multi_items() if k.lower() == "set-cookie"]
    assert len(cookies) == 1, cookies
    return cookies[0]


def _login(client: TestClient, email: str, **headers: str):
    response = client.post(LOGIN, json={"email": email, "password": PASSWORD}, headers=headers)
    assert response.status_code == 200, response.text
    return response


# --- the page -----------------------------------------------------------------------------


class _Inline(HTMLParser):
    """Collects what a `default-src 'self'` policy would block: inline script, handlers, style."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag == "script":
            self._in_script = True
            if not names.get("src"):
                self.problems.append("inline <script>")
            else:
                self.scripts.append(names["src"] or "")
        if tag == "style":
            self.problems.append("<style> element")
        for name, _ in attrs:
            if name.startswith("on") or name == "style":
                self.problems.append(f"{tag}[{name}]")
        for name in ("src", "href"):
            value = names.get(name) or ""
            if value.startswith(("http:", "https:", "//")):
                self.problems.append(f"external {name}={value}")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append("inline script text")


def test_page_is_served_with_a_strict_csp_and_no_inline_code(browser_client: TestClient) -> None:
    response = browser_client.get("/app")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    parser = _Inline()
    parser.feed(response.text)
    assert parser.problems == []
    assert parser.scripts == ["/app/static/app.js"]


@pytest.mark.parametrize("name", sorted(p.name for p in WEB_DIR.iterdir() if p.suffix in (".js", ".css")))
def test_assets_are_served_with_security_headers_and_no_external_resources(browser_client: TestClient,
                                                                          name: str) -> None:
    response = browser_client.get(f"/app/static/{name}")
    assert response.status_code == 200
    expected = "javascript" if name.endswith(".js") else "text/css"
    assert expected in response.headers["content-type"]
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    text = response.text
    assert not re.search(r"https?://", text), "the page loads nothing from other origins"
    assert not re.search(r"(local|session)Storage\s*[.\[]|document\.cookie|indexedDB\.", text), "tokens stay in memory"
    assert not re.search(r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|\beval\(|new Function", text)


def test_every_module_import_resolves(browser_client: TestClient) -> None:
    for path in WEB_DIR.glob("*.js"):
        for target in re.findall(r'from "\./([\w.-]+)"', path.read_text()):
            assert browser_client.get(f"/app/static/{target}").status_code == 200, (path.name, target)


def test_static_files_refuse_traversal_and_unknown_files(browser_client: TestClient) -> None:
    for path in ("/app/static/../routes/web.py", "/app/static/%2e%2e/routes/web.py", "/app/static/nope.js"):
        response = browser_client.get(path)
        assert response.status_code == 404, path
        assert response.json()["code"] == "NOT_FOUND"


def test_root_sends_browsers_to_the_page_and_keeps_json_for_api_clients(browser_client: TestClient) -> None:
    browser = browser_client.get("/", headers={"Accept": BROWSER_ACCEPT}, follow_redirects=False)
    assert browser.status_code == 307 and browser.headers["location"] == "/app"
    for accept in ("*/*", "application/json", "application/json, text/html;q=0.5", ""):
        response = browser_client.get("/", headers={"Accept": accept}, follow_redirects=False)
        assert response.status_code == 200, accept
        assert response.json()["service"] == "ILS RAG"
        assert "GET /app" in response.json()["endpoints"]


# --- the refresh cookie -------------------------------------------------------------------


def test_login_sets_an_httponly_strict_cookie_scoped_to_the_auth_path(browser_client, company, make_user) -> None:
    user, _ = make_user(company, "staff")
    response = _login(browser_client, user.email)
    body = response.json()
    cookie = _set_cookie(response)
    assert cookie.startswith(f"{REFRESH_COOKIE}={body['refresh_token']};")
    lowered = cookie.lower()
    assert "httponly" in lowered and "samesite=strict" in lowered and "path=/api/auth" in lowered
    assert "secure" not in lowered.replace("samesite", "")  # plain HTTP: a Secure cookie would never come back
    assert "max-age=1209600" in lowered  # REFRESH_TOKEN_DAYS=14


def test_cookie_is_secure_behind_an_https_proxy(browser_client, company, make_user) -> None:
    user, _ = make_user(company, "staff")
    cookie = _set_cookie(_login(browser_client, user.email, **{"X-Forwarded-Proto": "https"})).lower()
    assert "; secure" in cookie and "samesite=strict" in cookie


def test_refresh_from_the_cookie_alone_rotates_it(browser_client, company, make_user) -> None:
    user, _ = make_user(company, "staff")
    first = _login(browser_client, user.email).json()
    refreshed = browser_client.post(REFRESH)  # no body: the cookie carries the token
    assert refreshed.status_code == 200, refreshed.text
    second = refreshed.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert browser_client.cookies.get(REFRESH_COOKIE) == second["refresh_token"]
    assert browser_client.get(ME, headers={"Authorization": f"Bearer {second['token']}"}).json()["id"] == user.id
    # the spent token, replayed from the JSON body, is re-use: the whole sign-in is revoked
    assert browser_client.post(REFRESH, json={"refresh_token": first["refresh_token"]}).status_code == 401
    dead = browser_client.post(REFRESH)
    assert dead.status_code == 401
    assert f'{REFRESH_COOKIE}=""' in _set_cookie(dead) and REFRESH_COOKIE not in browser_client.cookies


def test_the_json_body_wins_over_the_cookie(browser_client, company, make_user, make_company) -> None:
    user, _ = make_user(company, "staff")
    _login(browser_client, user.email)
    other, _ = make_user(make_company(), "admin")
    other_pair = TestClient(browser_client.app).post(LOGIN, json={"email": other.email, "password": PASSWORD}).json()
    response = browser_client.post(REFRESH, json={"refresh_token": other_pair["refresh_token"]})
    assert response.status_code == 200
    assert response.json()["user"]["id"] == other.id
    refused = browser_client.post(REFRESH, json={"refresh_token": "nonsense"})
    assert refused.status_code == 401  # the (valid) cookie is not a fallback for a bad body token
    assert browser_client.post(REFRESH).status_code == 200  # and was not touched


def test_refresh_and_logout_without_any_token_are_401(browser_client: TestClient) -> None:
    for path in (REFRESH, LOGOUT):
        response = browser_client.post(path)
        assert response.status_code == 401
        assert response.json()["code"] == "NOT_AUTHENTICATED"
    too_long = browser_client.post(REFRESH, cookies={REFRESH_COOKIE: "x" * 600})
    assert too_long.status_code == 401


def test_logout_with_the_cookie_revokes_and_clears_it(browser_client, company, make_user) -> None:
    user, _ = make_user(company, "staff")
    token = _login(browser_client, user.email).json()["refresh_token"]
    response = browser_client.post(LOGOUT)
    assert response.status_code == 200 and response.json() == {"status": "logged_out"}
    assert f'{REFRESH_COOKIE}=""' in _set_cookie(response)
    assert REFRESH_COOKIE not in browser_client.cookies
    assert browser_client.post(REFRESH, json={"refresh_token": token}).status_code == 401
    # a bad cookie is refused, and still cleared
    bad = browser_client.post(LOGOUT, cookies={REFRESH_COOKIE: "nonsense"})
    assert bad.status_code == 401 and f'{REFRESH_COOKIE}=""' in _set_cookie(bad)


def test_the_page_can_ask_whether_a_sign_in_is_worth_restoring(browser_client, company, make_user) -> None:
    """GET /api/auth/session: whether the browser sent a refresh cookie, so a first visit does
    not try (and fail, with a 401 in the console) to refresh a session it never had."""
    session = "/api/auth/session"
    first = browser_client.get(session)
    assert first.status_code == 200 and first.json() == {"signed_in": False}
    assert first.headers["cache-control"] == "no-store"
    user, _ = make_user(company, "staff")
    _login(browser_client, user.email)
    assert browser_client.get(session).json() == {"signed_in": True}
    browser_client.post(LOGOUT)
    assert browser_client.get(session).json() == {"signed_in": False}


def test_favicon(browser_client: TestClient) -> None:
    icon = browser_client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
    assert icon.content[:4] == b"\x00\x00\x01\x00" and "default-src 'self'" in icon.headers["content-security-policy"]


def test_screenshots_in_the_readme_exist() -> None:
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    for name in ("chat.png", "documents.png", "chat-phone.png", "conversations-phone.png", "documents-phone.png"):
        assert f"docs/screenshots/{name}" in readme
        assert (root / "docs" / "screenshots" / name).stat().st_size > 10_000
