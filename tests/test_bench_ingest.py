"""`ils-rag bench ingest` keeps what it measured when a later run fails (no database, no model:
the measured steps are stood in for)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

import benchmarks.ingest as ingest
from core.settings import get_settings


class _Model:
    """Embeds nothing, instantly: the bare-model side of the comparison."""

    def get_text_embedding_batch(self, texts: list[str]) -> list[list[float]]:
        return [[0.0] for _ in texts]


@pytest.fixture
def no_model(monkeypatch):
    monkeypatch.setattr(ingest, "get_embed_model", _Model)
    monkeypatch.setattr(ingest, "_embed_texts", lambda files, settings: ["a chunk"] * 40)
    monkeypatch.setattr(ingest, "_upload_bytes", lambda kb, n, settings: b"an upload")
    monkeypatch.setattr(ingest, "embedding_info", lambda model: SimpleNamespace(name="m", dimensions=1))
    monkeypatch.setattr(ingest, "chunk_plan", lambda model: SimpleNamespace(chunk_size=256))


def test_a_failed_queue_run_keeps_the_runs_measured_before_it(tmp_path, monkeypatch, no_model) -> None:
    def drain(count, files, settings):
        if count == 2:
            raise RuntimeError("1 queued upload(s) did not index")
        return 2.0, 80, [30.0, 40.0]

    monkeypatch.setattr(ingest, "_drain", drain)
    output = tmp_path / "ingest-queue.json"
    with pytest.raises(RuntimeError, match="did not index"):
        ingest.run_queue_bench(get_settings(), (1, 2), uploads=2, output=output)
    kept = json.loads(output.read_text())
    assert [run["workers"] for run in kept["runs"]] == [1]
    assert kept["runs"][0]["drain_chunks_per_s"] == 40.0 and kept["runs"][0]["job_chunks_per_s_median"] == 35.0
    assert kept["failed"]["stage"] == "2 worker(s)"
    assert kept["failed"]["error"] == "RuntimeError: 1 queued upload(s) did not index"


def test_a_failed_pipeline_round_keeps_the_rounds_before_it(tmp_path, monkeypatch, no_model) -> None:
    rounds = iter([(2.0, 40)])

    def one_round(folders, settings):
        found = next(rounds, None)
        if found is None:
            raise RuntimeError("bench ingest of practice failed")
        return found

    monkeypatch.setattr(ingest, "_ingest_round", one_round)
    output = tmp_path / "ingest.json"
    with pytest.raises(RuntimeError, match="practice failed"):
        ingest.run_ingest_bench(get_settings(), output, repeat=3, folders=[tmp_path])
    kept = json.loads(output.read_text())
    assert kept["pipeline_chunks"] == 40 and kept["pipeline_chunks_per_s"] == 20.0 and kept["repeat"] == 1
    assert kept["failed"]["stage"] == "round 2 of 3"
