"""The web page end to end in headless Chromium (Debian's package, driven by Playwright; no
browser download): the real server runs as a subprocess on the test session's database.

Each test makes its own practice. Screenshots for the README are written to docs/screenshots/.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import uuid
import weakref
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageChops

from core.settings import get_settings
from tests.servers import ROOT, serve

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "docs" / "screenshots"
PASSWORD = "correct horse battery"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
BRIGHTSIGHT_SUBSET = ("price-list-2026.pdf", "lens-types-guide.md", "progressive-lens-adaptation.md",
                      "lens-price-table.csv")
CLEARVIEW_SUBSET = ("price-list-2026.md", "spectacle-lens-guide.md")
TIMEOUT_MS = 30_000
# A screenshot is rewritten only when some pixel changed by more than this (0-255 per channel):
# re-running the tests leaves the committed images alone (PNG bytes may differ for the same
# pixels) unless what the page shows changed.
SCREENSHOT_TOLERANCE = 32
CHAT_READY = '#view-chat:not([hidden])[aria-busy="false"]'  # shown, with history and knowledge-base check loaded

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium package at /usr/bin/chromium "
                                "(apt-get install -y chromium); .ci/run installs it")


def _serve(log: Path, **overrides: str) -> Iterator[str]:
    """`ils-rag serve` on a free loopback port, sharing the session's embedded Postgres."""
    with serve({**os.environ, "LOG_LEVEL": "WARNING", **overrides}, log) as (base, _):
        yield base


@pytest.fixture(scope="module")
def server(database: str, embed_model: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """No LLM configured (extractive answers). UPLOAD_INLINE_MAX_KB=0 queues every upload, so
    the page's status polling is exercised."""
    yield from _serve(tmp_path_factory.mktemp("web-server") / "server.log", UPLOAD_INLINE_MAX_KB="0")


@pytest.fixture(scope="module")
def llm_server(database: str, embed_model: object, _fake_openai_server,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The same service with the loopback fake OpenAI server as its LLM."""
    yield from _serve(tmp_path_factory.mktemp("web-llm-server") / "server.log",
                      OPENAI_BASE_URL=_fake_openai_server.base_url, OPENAI_API_KEY="sk-test", LLM_MAX_RETRIES="0",
                      LLM_TIMEOUT_S="10")


@pytest.fixture(scope="module")
def fallback_server(database: str, embed_model: object, _fake_openai_server,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An LLM-backed service told to answer extractively when the LLM is down."""
    yield from _serve(tmp_path_factory.mktemp("web-fallback-server") / "server.log",
                      OPENAI_BASE_URL=_fake_openai_server.base_url, OPENAI_API_KEY="sk-test", LLM_MAX_RETRIES="0",
                      LLM_TIMEOUT_S="10", LLM_FALLBACK_EXTRACTIVE="true")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


# Every console error of a page (a failed request shows up as one too): a normal visit has none.
_CONSOLE_ERRORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def console_errors(page) -> list[str]:
    return _CONSOLE_ERRORS[page]


@pytest.fixture
def open_page(browser):
    """`open_page(base_url, width=1280, touch=False)`: a fresh browser context (no cookies) on
    one of the servers; `touch` gives it a touch screen (and, up to 720 px, a phone's viewport)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    contexts, errors = [], []

    def _open(base_url: str, width: int = 1280, touch: bool = False):
        viewport = {"width": width, "height": 860 if width > 720 else 800}
        context = browser.new_context(base_url=base_url, viewport=viewport, has_touch=touch,
                                      is_mobile=touch and width <= 720)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        seen: list[str] = []
        _CONSOLE_ERRORS[page] = seen
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda message: errors.append(message.text)
                if "Content Security Policy" in message.text else None)
        page.on("console", lambda message: seen.append(f"{message.text} ({message.location.get('url', '')})")
                if message.type == "error" else None)
        return page

    yield _open
    for context in contexts:
        context.close()
    assert errors == [], f"script errors or CSP violations in the page: {errors}"


@pytest.fixture
def page(open_page, server: str):
    return open_page(server)


@pytest.fixture
def practice(make_company, samples_dir: Path, tmp_path: Path):
    """`practice(folder, files)`: a company with a few sample documents ingested."""
    from app.samples import SAMPLE_COMPANIES
    from core.db.tenant_scope import tenant
    from indexing.folder import ingest_folder

    def _make(folder: str | None, files: tuple[str, ...] = ()):
        company = make_company(SAMPLE_COMPANIES.get(folder or "", "Empty practice"))
        if folder:
            subset = tmp_path / folder
            subset.mkdir()
            for name in files:
                shutil.copy(samples_dir / folder / name, subset / name)
            with tenant(company.id):
                report = ingest_folder(subset, company.id, settings=get_settings())
            assert not report.failed and len(report.indexed) == len(files), report.summary()
        return company

    return _make


FULL_NAMES = {"staff": "Sam Patel", "admin": "Alex Morgan"}


@pytest.fixture
def member(database: str):
    """`member(company, role)`: a user with a fixed display name, so the screenshots do not
    change with each run's random email address (the page shows the name when there is one)."""
    from auth.users import create_user
    from core.db.engines import session_scope
    from core.db.tenant_scope import tenant

    def _make(company, role: str = "staff"):
        with tenant(company.id), session_scope() as session:
            return create_user(session, company.id, f"{role}-{uuid.uuid4().hex[:8]}@example.com", PASSWORD, role,
                               full_name=FULL_NAMES[role])

    return _make


def save_screenshot(page, name: str, **options) -> Path:
    """Write docs/screenshots/<name> unless the committed image already shows the same thing
    (same size, no pixel off by more than SCREENSHOT_TOLERANCE)."""
    path = SCREENSHOTS / name
    fresh = page.screenshot(animations="disabled", caret="hide", **options)
    if path.exists():
        with Image.open(path) as old_file, Image.open(io.BytesIO(fresh)) as new_file:
            old, new = old_file.convert("RGB"), new_file.convert("RGB")
            if old.size == new.size:
                _, largest = ImageChops.difference(old, new).convert("L").getextrema()
                if largest <= SCREENSHOT_TOLERANCE:
                    return path
    path.write_bytes(fresh)
    return path


def sign_in(page, email: str) -> None:
    page.goto("/")  # a browser's Accept header is redirected to /app
    assert page.url.endswith("/app")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector(CHAT_READY)


def watch_streaming(page) -> None:
    """Count the times an answer is shown while still streaming (token events rendered before
    the final sources event), however the network happened to chunk the stream."""
    page.evaluate("""() => {
        window.__streamedRenders = 0;
        new MutationObserver((records) => {
            for (const r of records) if (r.attributeName === "data-streaming" && r.oldValue === null) {
                window.__streamedRenders += 1;
            }
        }).observe(document.getElementById("messages"),
                   {subtree: true, attributes: true, attributeFilter: ["data-streaming"], attributeOldValue: true});
    }""")


def streamed_renders(page) -> int:
    return page.evaluate("() => window.__streamedRenders")


def unlabelled_controls(page) -> list[str]:
    """Inputs without a label and buttons without a name (visible or not)."""
    return page.evaluate("""() => Array.from(document.querySelectorAll("input, textarea, select, button"))
        .filter((c) => {
            const aria = (c.getAttribute("aria-label") || "").trim();
            if (c.tagName === "BUTTON") return !aria && !c.textContent.trim();
            return !aria && !(c.labels && Array.from(c.labels).some((l) => l.textContent.trim()));
        })
        .map((c) => c.outerHTML.slice(0, 120))""")


def focused(page) -> str:
    return page.evaluate("() => document.activeElement.id || document.activeElement.className")


def ask(page, question: str):
    """Ask in the open conversation; returns the /api/chat response and this question's answer."""
    done = page.locator(".message.assistant[data-done]")
    before = done.count()
    page.get_by_label("Your question").fill(question)
    with page.expect_response(lambda r: r.url.endswith("/api/chat") and r.status == 200) as response:
        page.get_by_label("Your question").press("Enter")
    page.wait_for_function("(n) => document.querySelectorAll('.message.assistant[data-done]').length > n", arg=before)
    return response.value, done.nth(before)


def api_login(server: str, email: str) -> dict:
    response = httpx.post(f"{server}/api/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return response.json()


def no_horizontal_scroll(page) -> bool:
    return page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")


# --- staff: ask, stream, cite ------------------------------------------------------------------


def test_staff_gets_a_streamed_cited_answer_from_their_own_practice(page, server, practice, member) -> None:
    company = practice("brightsight-optical", BRIGHTSIGHT_SUBSET)
    practice("clearview-eyecare", CLEARVIEW_SUBSET)  # another tenant with conflicting prices
    staff = member(company, "staff")
    sign_in(page, staff.email)
    assert page.locator("#tab-documents").is_hidden()
    assert page.locator("#kb-empty").is_hidden()

    # tokens: nothing in web storage, the refresh token only in an HttpOnly strict cookie
    assert page.evaluate("() => [localStorage.length, sessionStorage.length]") == [0, 0]
    assert page.evaluate("() => document.cookie") == ""
    (cookie,) = page.context.cookies()
    assert cookie["name"] == "ils_refresh" and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/api/auth"

    watch_streaming(page)
    response, answer = ask(page, "what do progressive lenses cost?")
    assert streamed_renders(page) == 1  # shown while streaming, then replaced by the cited answer
    assert response.headers["content-type"].startswith("text/event-stream")
    stream = response.text()
    assert stream.count("event: token") >= 1 and stream.count("event: sources") == 1
    assert stream.index("event: token") < stream.index("event: sources")

    text = answer.inner_text()
    assert "£189" in text and "£249" not in text  # BrightSight's price, never ClearView's
    assert "Offline answer built from your documents" in text  # no LLM configured: labelled extractive
    sources = answer.locator("button.source")
    assert sources.count() >= 1
    names = {sources.nth(i).inner_text().split("] ", 1)[1] for i in range(sources.count())}
    assert names <= set(BRIGHTSIGHT_SUBSET), names
    citations = answer.locator("button.cite")
    assert citations.count() >= 1
    save_screenshot(page, "chat.png")

    # a citation opens its passage; Escape closes it and focus returns to the citation
    first = citations.first
    number = first.get_attribute("data-citation")
    first.click()
    dialog = page.locator("#passage")
    dialog.wait_for(state="visible")
    assert page.locator("#passage-title").inner_text() == f"Source [{number}]"
    assert page.locator("#passage-file").inner_text() in BRIGHTSIGHT_SUBSET
    assert len(page.locator("#passage-text").inner_text()) > 20
    page.keyboard.press("Escape")
    dialog.wait_for(state="hidden")
    assert page.evaluate("() => document.activeElement.dataset.citation") == number

    # history: new chat, reopen the conversation, then delete it
    history = page.locator("#history-list li")
    history.first.wait_for()
    assert "progressive" in history.first.inner_text().lower()
    page.get_by_role("button", name="New chat").click()
    assert page.locator("#messages li").count() == 0
    history.first.locator(".history-open").click()
    page.locator(".message.assistant[data-done]").first.wait_for()
    assert page.locator("#messages .cite").count() >= 1
    page.once("dialog", lambda d: d.accept())
    history.first.get_by_role("button", name="Delete conversation", exact=False).click()
    page.wait_for_selector("#history-empty:not([hidden])")
    assert page.locator("#history-list li").count() == 0

    # phone width: nothing is cut off sideways
    page.set_viewport_size({"width": 375, "height": 800})
    assert no_horizontal_scroll(page)

    # a reload keeps the session through the cookie; signing out ends it for good
    page.reload()
    page.wait_for_selector(CHAT_READY)
    assert page.locator("#who").inner_text() == "Sam Patel (staff)"
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_selector("#view-signin:not([hidden])")
    assert page.context.cookies() == []
    page.reload()
    page.wait_for_selector("#view-signin:not([hidden])")


def test_keyboard_only_sign_in_ask_and_read_a_citation(page, practice, member) -> None:
    """No mouse: sign in, ask, open a cited passage and close it, with every control named."""
    company = practice("brightsight-optical", ("price-list-2026.pdf", "lens-types-guide.md"))
    staff = member(company, "staff")
    page.goto("/app")
    page.wait_for_selector("#view-signin:not([hidden])")
    assert unlabelled_controls(page) == []
    assert focused(page) == "email"  # the sign-in form takes focus
    page.keyboard.type(staff.email)
    page.keyboard.press("Tab")
    assert focused(page) == "password"
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_selector(CHAT_READY)
    assert page.locator("#who").inner_text() == "Sam Patel (staff)"
    assert focused(page) == "question"  # ready to type
    assert unlabelled_controls(page) == []

    page.keyboard.type("what do progressive lenses cost?")
    page.keyboard.press("Enter")
    answer = page.locator(".message.assistant[data-done]").last
    answer.wait_for()
    assert "£189" in answer.inner_text()
    assert focused(page) == "question"  # focus comes back for the next question
    page.keyboard.press("Shift+Tab")  # back from the question box lands on the last source
    assert page.evaluate("() => document.activeElement.classList.contains('source')")
    number = page.evaluate("() => document.activeElement.dataset.citation")
    page.keyboard.press("Enter")
    page.locator("#passage").wait_for(state="visible")
    assert focused(page) == "passage-close"
    assert page.locator("#passage-title").inner_text() == f"Source [{number}]"
    page.keyboard.press("Escape")
    page.locator("#passage").wait_for(state="hidden")
    assert page.evaluate("() => document.activeElement.dataset.citation") == number

    # Shift+Tab walks back through the answer, the history and the header to the skip link
    reached = []
    for _ in range(40):
        page.keyboard.press("Shift+Tab")
        reached.append(page.evaluate("() => document.activeElement.textContent.trim()"))
        if reached[-1] == "Skip to content":
            break
    assert {"Skip to content", "Chat", "Sign out", "New chat", "what do progressive lenses cost?"} <= set(reached)
    page.keyboard.press("Enter")  # the skip link moves focus to the main content
    assert focused(page) == "main"


def test_nothing_relevant_is_shown_as_such(page, practice, member) -> None:
    company = practice("brightsight-optical", ("lens-types-guide.md",))
    staff = member(company, "staff")
    sign_in(page, staff.email)
    _, answer = ask(page, "Which football team won the 1966 World Cup final?")
    assert "Nothing relevant found in your practice's documents" in answer.inner_text()
    assert answer.locator("button.source").count() == 0


def test_sign_in_errors_and_an_email_shared_by_two_practices(page, practice, member) -> None:
    from auth.users import create_user
    from core.db.engines import session_scope
    from core.db.tenant_scope import tenant

    first, second = practice(None), practice(None)
    staff = member(first, "staff")
    with tenant(second.id), session_scope() as session:  # the same person also works at a second practice
        create_user(session, second.id, staff.email, PASSWORD, "admin", full_name="Sam Patel")

    page.goto("/app")
    page.wait_for_selector("#view-signin:not([hidden])")
    page.get_by_role("button", name="Sign in").click()
    assert page.locator("#signin-error").inner_text() == "Enter your email and password."
    page.get_by_label("Email").fill(staff.email)
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_function("() => document.getElementById('signin-error').textContent.length > 0")
    assert page.locator("#signin-error").inner_text() == "Invalid email or password"
    assert page.locator("#view-signin").is_visible()

    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Password").press("Enter")
    practice_field = page.get_by_label("Practice (short name)")
    practice_field.wait_for()  # the page asks which practice, naming the choices
    assert first.slug in page.locator("#signin-error").inner_text()
    assert focused(page) == "company"
    practice_field.fill(second.slug)
    practice_field.press("Enter")
    page.wait_for_selector(CHAT_READY)
    assert page.locator("#who").inner_text() == "Sam Patel (admin)"
    assert page.locator("#tab-documents").is_visible()


# --- admin: documents --------------------------------------------------------------------------


def _drop(page, name: str, content: str) -> None:
    """What a file dropped from the desktop delivers: a drop event carrying a DataTransfer."""
    transfer = page.evaluate_handle("""([name, content]) => {
        const transfer = new DataTransfer();
        transfer.items.add(new File([content], name, {type: "text/markdown"}));
        return transfer;
    }""", [name, content])
    page.dispatch_event("#dropzone", "dragenter", {"dataTransfer": transfer})
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})


def _row(page, filename: str):
    return page.locator("#documents-body tr", has=page.locator(".filename", has_text=filename))


def test_admin_uploads_files_and_sees_them_indexed(page, server, practice, member, tmp_path) -> None:
    company = practice(None)
    admin = member(company, "admin")
    sign_in(page, admin.email)
    # an empty knowledge base is said so, with what an admin can do about it
    assert page.locator("#kb-empty").is_visible() and page.locator("#kb-empty-admin").is_visible()
    page.get_by_role("button", name="Documents").click()
    page.wait_for_selector('#view-documents:not([hidden])[aria-busy="false"]')
    assert page.locator("#documents-empty").is_visible()
    assert unlabelled_controls(page) == []

    # file picker: queued on the server, polled until indexed
    note = tmp_path / "frame-repairs.md"
    note.write_text("# Frame repairs\n\nWe solder broken metal frames in house. A frame repair costs £18 and "
                    "takes five working days. Rimless mounts are re-drilled for £12.\n")
    page.evaluate("""() => {  // record what the progress bar shows (it is hidden again when done)
        window.__progress = {shown: 0, values: []};
        const bar = document.getElementById("upload-progress");
        const setter = Object.getOwnPropertyDescriptor(HTMLProgressElement.prototype, "value").set;
        Object.defineProperty(bar, "value", {configurable: true, get() { return Number(bar.getAttribute("value")); },
            set(v) { window.__progress.values.push(v); setter.call(bar, v); }});
        new MutationObserver((records) => {
            for (const r of records) if (!r.target.hidden) window.__progress.shown += 1;
        }).observe(document.getElementById("upload-progress-row"), {attributes: true, attributeFilter: ["hidden"]});
    }""")
    page.set_input_files("#file-input", str(note))
    row = _row(page, "frame-repairs.md")
    row.wait_for()
    progress = page.evaluate("() => window.__progress")
    assert progress["shown"] == 1 and progress["values"][0] == 0 and progress["values"][-1] == 100, progress
    page.wait_for_selector('#documents-body tr[data-status="indexed"]')
    assert int(row.locator(".chunks-cell").inner_text()) >= 1
    assert row.locator(".active-cell").inner_text() == "Yes"

    # drag and drop
    _drop(page, "opening-hours.md", "# Opening hours\n\nThe practice opens Monday to Friday 9:00 to 17:30 and "
          "Saturday 9:00 to 13:00. We are closed on Sundays and bank holidays.\n")
    dropped = _row(page, "opening-hours.md")
    dropped.wait_for()
    page.wait_for_function("() => document.querySelectorAll('#documents-body tr[data-status=\"indexed\"]').length == 2")

    # a file that cannot be read fails in the background; the row shows why
    broken = tmp_path / "broken-scan.pdf"
    broken.write_bytes(b"%PDF-1.4\nthis is not really a PDF\n")
    page.set_input_files("#file-input", str(broken))
    failed = _row(page, "broken-scan.pdf")
    failed.wait_for()
    page.wait_for_selector('#documents-body tr[data-status="failed"]')
    assert failed.locator(".reason").inner_text().strip()

    # a file refused up front (empty) says so straight away
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    page.set_input_files("#file-input", str(empty))
    refused = page.locator("#upload-results .result.failed", has_text="empty.txt")
    refused.wait_for()
    assert "empty" in refused.inner_text().lower()

    # the upload list keeps every file's result, each followed to its end (newest first)
    results = page.locator("#upload-results .result")
    page.locator("#upload-results .result.failed", has_text="broken-scan.pdf").wait_for()
    assert [results.nth(i).locator(".filename").inner_text() for i in range(results.count())] == [
        "empty.txt", "broken-scan.pdf", "opening-hours.md", "frame-repairs.md"]
    assert [results.nth(i).get_attribute("class") for i in range(results.count())] == [
        "result failed", "result failed", "result indexed", "result indexed"]
    assert re.search(r"indexed \((?:1 chunk|(?:[02-9]|\d\d+) chunks)\)", results.nth(3).inner_text())
    save_screenshot(page, "documents.png", full_page=True)

    # deactivate and activate again (the API agrees)
    token = api_login(server, admin.email)["token"]
    row_id = row.get_attribute("data-id")
    row.get_by_role("button", name="Deactivate frame-repairs.md").click()
    page.wait_for_selector(f'#documents-body tr[data-id="{row_id}"].inactive')
    assert row.locator(".active-cell").inner_text() == "No"
    document = httpx.get(f"{server}/api/documents/{row_id}", headers={"Authorization": f"Bearer {token}"}).json()
    assert document["is_active"] is False
    row.get_by_role("button", name="Activate frame-repairs.md").click()
    page.wait_for_selector(f'#documents-body tr[data-id="{row_id}"]:not(.inactive)')

    # delete after confirming
    page.once("dialog", lambda d: d.accept())
    failed.get_by_role("button", name="Delete broken-scan.pdf").click()
    failed.wait_for(state="detached")
    listing = httpx.get(f"{server}/api/documents", headers={"Authorization": f"Bearer {token}"}).json()
    assert sorted(item["filename"] for item in listing["items"]) == ["frame-repairs.md", "opening-hours.md"]

    page.set_viewport_size({"width": 375, "height": 800})
    assert no_horizontal_scroll(page)


# --- staff: no admin controls, and the API agrees ----------------------------------------------


def test_staff_sees_no_admin_controls_and_is_refused_by_the_api(page, server, practice, member) -> None:
    company = practice("brightsight-optical", ("lens-types-guide.md",))
    staff = member(company, "staff")
    sign_in(page, staff.email)
    assert page.locator("#tab-documents").is_hidden()
    assert page.locator("#kb-empty").is_hidden()
    page.goto("/app#documents")  # a hand-typed address does not open the admin view
    page.wait_for_function("() => location.hash === '#chat'")
    page.reload()  # nor does loading the page at it
    page.wait_for_selector(CHAT_READY)
    assert page.url.endswith("/app#chat")
    assert page.locator("#view-documents").is_hidden()
    assert page.locator("#dropzone").is_hidden() and page.locator("#documents-body button").count() == 0

    headers = {"Authorization": f"Bearer {api_login(server, staff.email)['token']}"}
    upload = httpx.post(f"{server}/api/documents", headers=headers,
                        files={"files": ("sneaky.md", b"# Sneaky\n\nstaff may not upload", "text/markdown")})
    assert upload.status_code == 403 and upload.json()["code"] == "FORBIDDEN"
    listing = httpx.get(f"{server}/api/documents", headers=headers).json()
    document_id = listing["items"][0]["document_id"]
    patch = httpx.patch(f"{server}/api/documents/{document_id}", headers=headers, json={"is_active": False})
    delete = httpx.delete(f"{server}/api/documents/{document_id}", headers=headers)
    assert patch.status_code == 403 and delete.status_code == 403


# --- TOKEN_EXPIRED: one refresh, one retry -----------------------------------------------------


def _expired_token(user, company_id: str) -> str:
    """A genuine token of this user, signed with the server's secret, that expired 5 minutes ago."""
    from auth.permissions import permissions_for
    from auth.tokens import issue_access_token
    from core.settings import Settings

    token, _ = issue_access_token(user_id=user.id, company_id=company_id, email=user.email, role=user.role,
                                  permissions=permissions_for(user.role),
                                  # model_copy skips validation: settings refuse a negative lifetime
                                  settings=Settings().model_copy(update={"access_token_minutes": -5}))
    return token


def test_an_expired_token_is_refreshed_once_and_the_call_retried(page, server, practice, member) -> None:
    company = practice("brightsight-optical", BRIGHTSIGHT_SUBSET)
    staff = member(company, "staff")
    sign_in(page, staff.email)
    expired = _expired_token(staff, company.id)
    seen: list[tuple[str, int]] = []
    page.on("response", lambda r: seen.append((r.url.split("/api/", 1)[-1], r.status)) if "/api/" in r.url else None)

    swapped = []

    def expire_first_chat(route, request) -> None:
        if not swapped:  # the page's first try carries an access token the server finds expired
            swapped.append(True)
            route.continue_(headers={**request.headers, "authorization": f"Bearer {expired}"})
        else:
            route.continue_()

    page.route("**/api/chat", expire_first_chat)
    _, answer = ask(page, "what do progressive lenses cost?")
    assert "£189" in answer.inner_text()
    chat_calls = [status for path, status in seen if path == "chat"]
    assert chat_calls == [401, 200]
    assert [status for path, status in seen if path == "auth/refresh"] == [200]
    page.unroute("**/api/chat")

    # if the refreshed token is refused too, the page does not loop: one refresh, then sign-in
    seen.clear()
    page.route("**/api/chat", lambda route, request: route.continue_(
        headers={**request.headers, "authorization": f"Bearer {expired}"}))
    page.get_by_label("Your question").fill("and single vision lenses?")
    page.get_by_label("Your question").press("Enter")
    page.wait_for_selector("#view-signin:not([hidden])")
    assert "session has ended" in page.locator("#signin-error").inner_text()
    assert [status for path, status in seen if path == "chat"] == [401, 401]
    assert [status for path, status in seen if path == "auth/refresh"] == [200]


# --- with a language model ---------------------------------------------------------------------


def test_llm_answers_stream_token_by_token_and_llm_failures_are_shown(open_page, llm_server, fake_openai, practice,
                                                                     member) -> None:
    company = practice("brightsight-optical", BRIGHTSIGHT_SUBSET)
    practice("clearview-eyecare", CLEARVIEW_SUBSET)
    staff = member(company, "staff")
    fake_openai.reply = ("Progressive lenses start at £189 per pair [1]. Allow a couple of weeks to adapt to "
                         "them [2].")
    page = open_page(llm_server)
    sign_in(page, staff.email)
    watch_streaming(page)
    response, answer = ask(page, "what do progressive lenses cost?")
    assert streamed_renders(page) == 1
    assert response.text().count("event: token") >= 10  # the model's words arrive one by one
    prompt = fake_openai.prompt_text(fake_openai.requests[-1])
    assert "£189" in prompt and "£249" not in prompt  # the model only saw this practice's passages
    text = answer.inner_text()
    assert "£189" in text and "Offline answer" not in text
    assert answer.locator("button.cite").count() == 2

    # the LLM goes down: the service's own JSON error is shown, in the answer and the alert
    fake_openai.fail_status = 503
    page.get_by_label("Your question").fill("and bifocals?")
    page.get_by_label("Your question").press("Enter")
    failed = page.locator(".message.assistant.failed")
    failed.wait_for()
    assert "language model service failed" in failed.inner_text()
    assert "language model service failed" in page.locator("#alert").inner_text()
    assert page.get_by_label("Your question").is_enabled()


def test_llm_outage_falls_back_to_a_labelled_extractive_answer(open_page, fallback_server, fake_openai, practice,
                                                              member) -> None:
    company = practice("brightsight-optical", BRIGHTSIGHT_SUBSET)
    staff = member(company, "staff")
    fake_openai.fail_status = 503
    page = open_page(fallback_server)
    sign_in(page, staff.email)
    _, answer = ask(page, "what do progressive lenses cost?")
    assert fake_openai.requests  # the LLM was asked and failed
    text = answer.inner_text()
    assert "The AI service is unavailable: offline answer built from your documents" in text
    assert "£189" in text and answer.locator("button.cite").count() >= 1
    assert page.locator("#alert").is_hidden()  # an answer, not an error


# --- every width, touch, reload, console -------------------------------------------------------

WIDTHS = (320, 390, 1280)
# a title and a word longer than a phone is wide: they must wrap or be cut, never widen the page
LONG_QUESTION = ("what is the price of the brightsight-optical-premium-varifocal-progressive-lens-with-blue-light-"
                 "filter-and-anti-reflective-coating-for-computer-work please?")
# what reaches a finger: buttons, the file picker's label, links (the skip link serves keyboards:
# it is off-screen until focused)
TAPPABLE = "button:visible, label.button:visible, a[href]:visible:not(.skip-link)"


def overflowing(page) -> list[str]:
    """Whatever sticks out sideways: the page scrolling horizontally, or a visible control or
    bubble whose right edge is past the viewport (or left edge before it)."""
    return page.evaluate("""() => {
        const width = window.innerWidth;
        const out = [];
        if (document.documentElement.scrollWidth > width) out.push(`page ${document.documentElement.scrollWidth}px`);
        for (const node of document.querySelectorAll("button, input, textarea, label.button, .bubble, th, td, h1, p")) {
            const box = node.getBoundingClientRect();
            if (!box.width || getComputedStyle(node).visibility === "hidden") continue;
            if (node.closest(".visually-hidden, dialog:not([open])")) continue;
            if (box.left < -0.5 || box.right > width + 0.5) {
                const name = `${node.tagName.toLowerCase()}#${node.id}.${node.className}`;
                out.push(`${name} ${Math.round(box.left)}..${Math.round(box.right)}`);
            }
        }
        return out;
    }""")


def tap_targets(page, scope: str = "body") -> int:
    """Every visible button (and file-picker label, link) under `scope` takes a touch tap: in
    view after scrolling, enabled, and not covered by anything (Playwright's actionability
    checks, without the tap's effect). Returns how many were checked."""
    targets = page.locator(scope).locator(TAPPABLE)
    count = targets.count()
    for i in range(count):
        target = targets.nth(i)
        if target.is_disabled():
            continue
        target.tap(trial=True, timeout=5_000)
    return count


def drawer_settled(page, is_open: bool) -> None:
    """Wait for the conversation drawer's slide to end (it is hidden only once it is out of view)."""
    page.wait_for_function("""(open) => {
        const drawer = document.getElementById("history");
        const box = drawer.getBoundingClientRect();
        return open ? box.left >= 0 : getComputedStyle(drawer).visibility === "hidden";
    }""", arg=is_open)


def _history_for(server: str, email: str, questions: tuple[str, ...]) -> None:
    headers = {"Authorization": f"Bearer {api_login(server, email)['token']}"}
    for question in questions:
        response = httpx.post(f"{server}/api/chat", json={"message": question}, headers=headers, timeout=60)
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("width", WIDTHS)
def test_every_width_fits_and_every_button_takes_a_tap(open_page, server, practice, member, width) -> None:
    company = practice("brightsight-optical", BRIGHTSIGHT_SUBSET)
    admin = member(company, "admin")
    _history_for(server, admin.email, ("how long does it take to get used to varifocals?", LONG_QUESTION))
    narrow = width <= 720
    page = open_page(server, width=width, touch=True)

    page.goto("/app")
    page.wait_for_selector("#view-signin:not([hidden])")
    assert overflowing(page) == [], "sign-in"
    assert tap_targets(page) >= 1
    page.get_by_label("Email").fill(admin.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").tap()
    page.wait_for_selector(CHAT_READY)

    # chat with history: on a phone the list is a drawer, closed until asked for
    assert overflowing(page) == [], "chat with history"
    history = page.locator("#history")
    if narrow:
        assert not history.is_visible() or history.bounding_box()["x"] + history.bounding_box()["width"] <= 0
        toggle = page.get_by_role("button", name="Conversations")
        assert toggle.get_attribute("aria-expanded") == "false"
        toggle.tap()
        drawer_settled(page, True)
        assert toggle.get_attribute("aria-expanded") == "true"
        assert overflowing(page) == [], "open drawer"
        assert tap_targets(page, "#history") >= 5  # new chat, close, two conversations with their delete buttons
        if width == 390:
            save_screenshot(page, "conversations-phone.png")
        page.get_by_role("button", name="Close the conversation list").tap()
        drawer_settled(page, False)
        assert page.evaluate("() => document.activeElement.id") == "history-toggle"
        toggle.tap()
        drawer_settled(page, True)
    else:
        assert page.locator("#history-toggle").is_hidden() and history.is_visible()
    opener = page.locator(".history-open", has_text="brightsight-optical-premium")
    opener.tap()
    page.locator(".message.assistant[data-done]").first.wait_for()
    if narrow:
        drawer_settled(page, False)  # choosing a conversation closes the drawer
    assert overflowing(page) == [], "reopened conversation with a long title"

    # a long answer with citations, asked by tapping Ask
    page.get_by_label("Your question").fill("what do progressive lenses cost and how long does adapting to them take?")
    ask_button = page.get_by_role("button", name="Ask", exact=True)
    with page.expect_response(lambda r: r.url.endswith("/api/chat") and r.status == 200):
        ask_button.tap()
    answer = page.locator(".message.assistant[data-done]").last
    answer.wait_for()
    assert answer.locator("button.cite").count() >= 2
    assert overflowing(page) == [], "long answer with citations"
    assert tap_targets(page, "#view-chat") >= 4
    assert tap_targets(page, ".topbar") >= 3  # chat, documents, sign out
    citation = answer.locator("button.cite").last
    citation.tap()
    dialog = page.locator("#passage")
    dialog.wait_for(state="visible")
    box = dialog.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= width, box
    assert tap_targets(page, "#passage") == 1
    page.get_by_role("button", name="Close").tap()
    dialog.wait_for(state="hidden")
    if width == 390:
        page.evaluate("() => window.scrollTo(0, 0)")
        save_screenshot(page, "chat-phone.png", full_page=True)

    # documents
    documents_tab = page.get_by_role("button", name="Documents")
    documents_tab.tap()
    page.wait_for_selector('#view-documents:not([hidden])[aria-busy="false"]')
    assert page.locator("#documents-body tr").count() == len(BRIGHTSIGHT_SUBSET)
    assert overflowing(page) == [], "documents"
    assert tap_targets(page, "#view-documents") >= 1 + 2 * len(BRIGHTSIGHT_SUBSET)
    if width == 390:
        save_screenshot(page, "documents-phone.png", full_page=True)
    # a layout that fits can still fail underneath (a refused request, a script error at this width)
    assert console_errors(page) == [], f"console errors at {width} px"


def test_reload_returns_to_the_open_conversation_with_its_labels(page, practice, member) -> None:
    company = practice("brightsight-optical", BRIGHTSIGHT_SUBSET)
    staff = member(company, "staff")
    sign_in(page, staff.email)
    ask(page, "what do progressive lenses cost?")
    ask(page, "how long does it take to get used to varifocals?")
    address = page.evaluate("() => location.hash")
    assert re.fullmatch(r"#chat/[A-Za-z0-9_-]+", address), address

    def check_labels() -> None:
        answers = page.locator(".message.assistant[data-done]")
        assert answers.count() == 2
        for i in range(2):
            text = answers.nth(i).inner_text()
            # the label once, and no answer line repeating it
            assert text.count("Offline answer") == 1 and "no language model" not in text, text
            assert answers.nth(i).locator("button.cite").count() >= 1
        assert "£189" in answers.nth(0).inner_text()

    check_labels()
    page.reload()
    page.wait_for_selector(CHAT_READY)
    page.wait_for_function("() => document.querySelectorAll('.message.assistant[data-done]').length === 2")
    assert page.evaluate("() => location.hash") == address
    assert page.locator("#messages .message.user").count() == 2
    check_labels()
    assert page.locator('.history-open[aria-current="true"]').inner_text().startswith("what do progressive")

    # New chat forgets it, and a reload then shows an empty conversation
    page.get_by_role("button", name="New chat").click()
    assert page.evaluate("() => location.hash") == "#chat"
    page.reload()
    page.wait_for_selector(CHAT_READY)
    assert page.locator("#messages li").count() == 0


def test_a_normal_visit_logs_no_console_error(open_page, server, practice, member) -> None:
    company = practice("brightsight-optical", BRIGHTSIGHT_SUBSET)
    admin = member(company, "admin")
    page = open_page(server)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url.split(server, 1)[-1]))
    sign_in(page, admin.email)  # a first visit: no refresh cookie, so no refresh is tried
    assert "/api/auth/refresh" not in requests
    _, answer = ask(page, "what do progressive lenses cost?")
    answer.locator("button.cite").first.click()
    page.locator("#passage").wait_for(state="visible")
    page.keyboard.press("Escape")
    page.get_by_role("button", name="Documents").click()
    page.wait_for_selector('#view-documents:not([hidden])[aria-busy="false"]')
    page.reload()  # the cookie restores the session
    page.wait_for_selector('#view-documents:not([hidden])[aria-busy="false"]')
    assert requests.count("/api/auth/refresh") == 1
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_selector("#view-signin:not([hidden])")
    page.reload()  # signed out: back to the form without a refused refresh
    page.wait_for_selector("#view-signin:not([hidden])")
    assert requests.count("/api/auth/refresh") == 1
    assert console_errors(page) == []
    # headless Chromium fetches no icon by itself: the two the page names (and browsers' default) must exist
    icon = httpx.get(f"{server}/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
    assert icon.content[:4] == b"\x00\x00\x01\x00"  # an ICO file
    svg = httpx.get(f"{server}/app/static/favicon.svg")
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")


def _text_before(page, button) -> tuple[str, bool]:
    """What a citation stands after on its line of the answer (markers and bullet removed), and
    whether another citation of the same line comes before it (`fact [1][3]`: passage 3 states
    the fact of passage 1's sentence in its own words, merged onto one line)."""
    raw = button.evaluate("""(button) => {
        let text = "";
        for (let node = button.previousSibling; node; node = node.previousSibling) {
            const part = node.textContent;
            const newline = part.lastIndexOf("\\n");
            if (newline !== -1) return part.slice(newline + 1) + text;
            text = part + text;
        }
        return text;
    }""")
    merged = bool(re.search(r"\]\s*$", raw))
    raw = re.sub(r"\[\d+\]", "", raw)
    raw = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s+", "", raw)
    return " ".join(raw.split()), merged


def _amounts(text: str) -> list[str]:
    return sorted(re.findall(r"£\s?\d[\d,.]*\d|£\s?\d", text))


def test_every_citation_opens_its_passage_with_the_cited_sentence_marked(page, practice, member) -> None:
    company = practice("brightsight-optical", BRIGHTSIGHT_SUBSET)
    staff = member(company, "staff")
    sign_in(page, staff.email)
    checked = merged_checked = 0
    for question in ("what do progressive lenses cost?", "how long does it take to adapt to progressive lenses?",
                     "what lens types do we offer?", "how much is an eye test?"):
        _, answer = ask(page, question)
        citations = answer.locator("button.cite")
        assert citations.count() >= 1, question
        for i in range(citations.count()):
            citation = citations.nth(i)
            cited, merged = _text_before(page, citation)
            citation.click()
            page.locator("#passage").wait_for(state="visible")
            marks = page.locator("#passage-text mark")
            assert marks.count() >= 1, (question, cited)
            current = page.locator("#passage-text mark.current")
            shown = " ".join(current.inner_text().split())
            if merged:  # the same fact in this passage's words: the same amounts, a statement marked
                assert shown and _amounts(shown) == _amounts(cited), (question, cited, shown)
                merged_checked += 1
            else:
                assert shown == cited, (question, cited)
            # scrolled into view inside the passage box
            mark_box, text_box = current.bounding_box(), page.locator("#passage-text").bounding_box()
            assert text_box["y"] <= mark_box["y"] and mark_box["y"] + mark_box["height"] <= text_box["y"] + text_box[
                "height"] + 1, (mark_box, text_box)
            page.keyboard.press("Escape")
            page.locator("#passage").wait_for(state="hidden")
            checked += 1
    assert checked - merged_checked >= 6
