"""`ils-rag eval` refuses bad input with a clear message (before touching the database)."""

from __future__ import annotations

from typer.testing import CliRunner

from app.cli import app as cli


def _run(*args: str):
    return CliRunner().invoke(cli, ["eval", *args])


def test_unknown_retriever_is_refused() -> None:
    result = _run("--retrievers", "vector,bm42")
    assert result.exit_code == 1
    assert "unknown retriever(s) bm42" in result.output


def test_missing_dataset_is_refused(tmp_path) -> None:
    result = _run("--dataset", str(tmp_path / "nope"))
    assert result.exit_code == 1
    assert "does not exist" in result.output


def test_unknown_runtime_is_refused() -> None:
    result = _run("--runtime", "tpu")
    assert result.exit_code == 2
