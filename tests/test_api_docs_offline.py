"""/docs and /redoc work with the network cut: headless Chromium (Debian's package, driven by
Playwright) loads them from the real served process, every request to anything but the
service is aborted and recorded, and the pages must still show the API's operations."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.servers import serve

CHROMIUM = Path("/usr/bin/chromium")
# Besides aborting requests in the page, the browser cannot resolve any name but loopback.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
TIMEOUT_MS = 60_000
REDOC_BADGE = "https://cdn.redoc.ly/redoc/logo-mini.svg"
OPERATIONS = ("/api/auth/login", "/api/auth/token", "/api/rag/search", "/api/embeddings/generate",
              "/api/rag/index-document", "/api/chat")

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium package at /usr/bin/chromium "
                                "(apt-get install -y chromium); .ci/run installs it")


@pytest.fixture(scope="module")
def docs_server(database: str, embed_model: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("docs-server") / "server.log"
    with serve({**os.environ, "LOG_LEVEL": "WARNING", "ENVIRONMENT": "development", "API_DOCS": "true"},
               log) as (base, _):
        yield base


@pytest.fixture(scope="module")
def offline_page(docs_server: str):
    """`(page, blocked, errors)`: a page whose requests off the service's origin are aborted."""
    from playwright.sync_api import sync_playwright

    origin = urlsplit(docs_server).netloc
    blocked: list[str] = []
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(base_url=docs_server)
        context.set_default_timeout(TIMEOUT_MS)

        def cut(route) -> None:
            if urlsplit(route.request.url).netloc == origin or route.request.url.startswith(("data:", "blob:")):
                route.continue_()
            else:
                blocked.append(route.request.url)
                route.abort("internetdisconnected")

        context.route("**/*", cut)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda message: errors.append(message.text)
                if "Content Security Policy" in message.text else None)
        yield page, blocked, errors
        context.close()
        browser.close()


def test_swagger_ui_shows_the_operations_offline(offline_page) -> None:
    page, blocked, errors = offline_page
    page.goto("/docs")
    page.wait_for_selector(".opblock-summary-path")
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    shown = {path.strip().replace("\u200b", "") for path in paths}
    assert set(OPERATIONS) <= shown, shown
    assert blocked == [] and errors == [], (blocked, errors)


def test_redoc_shows_the_operations_offline(offline_page) -> None:
    page, blocked, errors = offline_page
    page.goto("/redoc")
    page.wait_for_selector("[data-section-id^='tag/']")
    text = page.locator("body").inner_text()
    for operation in OPERATIONS:
        assert operation in text, operation
    # ReDoc's bundle hard-codes one image, the "API docs by Redocly" badge on its CDN; the page's
    # CSP (img-src 'self') stops it before any request is made, and ReDoc then hides the image.
    unexpected = [e for e in errors if REDOC_BADGE not in e]
    assert blocked == [] and unexpected == [], (blocked, unexpected)


def test_docs_pages_name_no_other_origin(docs_server: str) -> None:
    for path in ("/docs", "/redoc"):
        response = httpx.get(docs_server + path)
        assert response.status_code == 200
        assert "cdn." not in response.text and "https://" not in response.text.replace(
            "https://github.com", "")  # ReDoc's page links no script, style or font elsewhere
        csp = response.headers["content-security-policy"]
        assert "http" not in csp and "script-src 'self'" in csp
    assert httpx.get(docs_server + "/docs/assets/swagger-ui-bundle.js").status_code == 200
