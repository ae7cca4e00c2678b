"""Prometheus metrics: `ils-rag serve --workers 2` with METRICS_PORT (the session's `fleet`) serves /metrics on its own
loopback listener (never on the API's port), adding up both workers' samples; after real
traffic the request, search, embedding and rate-limit series have moved, labelled by route
template (not by path) and by mode. LLM time and errors are checked in this process against
the fake OpenAI-compatible server."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FLEET_SEARCH_BUDGET, Fleet

pytestmark = pytest.mark.timeout(600)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def _value(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels` (0 when none)."""
    wanted = set(labels.items())
    return sum(value for (sample, keys), value in samples.items() if sample == name and wanted <= keys)


def test_metrics_move_after_traffic_across_workers(fleet: Fleet, company, make_user) -> None:
    base, metrics_url = fleet.workers, fleet.metrics_url
    _, headers = make_user(company, "staff")
    before = _scrape(metrics_url)
    search = f"{base}/api/rag/search"
    with httpx.Client(timeout=60) as client:
        for mode in ("vector", "vector", "hybrid", "text"):  # distinct queries: each one really embeds
            query = f"frames {mode} {uuid.uuid4().hex[:8]}"
            assert client.post(search, json={"query": query, "mode": mode}, headers=headers).status_code == 200
        assert client.post(search, json={"query": "one too many"}, headers=headers).status_code == 429
        assert client.get(f"{base}/api/documents/{uuid.uuid4()}", headers=headers).status_code == 404
        assert client.get(f"{base}/no/such/{uuid.uuid4().hex}").status_code == 404
    # Fresh connections: the kernel hands them to either worker, and both workers' files count.
    for _ in range(6):
        with httpx.Client(timeout=10) as fresh:
            assert fresh.get(f"{base}/health").status_code == 200
    after = _scrape(metrics_url)

    def moved(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    requests = "ils_http_request_duration_seconds_count"
    assert moved(requests, method="POST", route="/api/rag/search", status="200") == FLEET_SEARCH_BUDGET
    assert moved(requests, method="POST", route="/api/rag/search", status="429") == 1
    assert moved(requests, method="GET", route="/api/documents/{document_id}", status="404") == 1
    assert moved(requests, route="unmatched", status="404") == 1
    assert moved(requests, route="/health", status="200") >= 6
    assert not any("/no/such/" in dict(keys).get("route", "") for (_, keys) in after)  # never the raw path
    assert moved("ils_search_duration_seconds_count", mode="vector") == 2
    assert moved("ils_search_duration_seconds_count", mode="hybrid") == 1
    assert moved("ils_search_duration_seconds_count", mode="text") == 1
    assert moved("ils_search_duration_seconds_sum", mode="vector") > 0
    assert moved("ils_embedding_duration_seconds_count", kind="query") >= FLEET_SEARCH_BUDGET
    assert moved("ils_rate_limit_refusals_total", scope="search") == 1
    roles = {dict(keys).get("role") for (name, keys) in after if name == "ils_db_connections_in_use"}
    assert "ils_app" in roles and "ils_auth" in roles, roles  # requests used both pools
    # The serving parent's own ingestion worker reads the queue's depth while idle: its samples
    # reach /metrics too (the parent records in multi-process mode like its workers).
    states = {dict(keys).get("state") for (name, keys) in after if name == "ils_ingest_queue_depth"}
    assert {"queued", "running"} <= states, states


def test_metrics_are_not_on_the_api_port(fleet: Fleet) -> None:
    assert httpx.get(f"{fleet.workers}/metrics", timeout=10).status_code == 404
    assert httpx.get(f"{fleet.single}/metrics", timeout=10).status_code == 404


def test_llm_time_and_errors_are_recorded(fake_openai) -> None:
    from llama_index.core.llms import ChatMessage

    from core.settings import get_settings
    from retrieval.llm import build_llm

    llm = build_llm(get_settings().model_copy(update={"openai_base_url": fake_openai.base_url, "llm_max_retries": 0}))
    assert llm is not None

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    ok, errors = value("ils_llm_duration_seconds_count", outcome="ok"), value("ils_llm_errors_total",
                                                                            reason="LLM_UNAVAILABLE")
    llm.chat([ChatMessage(role="user", content="hello")])
    assert value("ils_llm_duration_seconds_count", outcome="ok") == ok + 1
    fake_openai.fail_status = 503
    with pytest.raises(Exception):  # noqa: B017 - the SDK's own error type; the metric is the point
        llm.chat([ChatMessage(role="user", content="hello")])
    assert value("ils_llm_errors_total", reason="LLM_UNAVAILABLE") == errors + 1
    assert value("ils_llm_duration_seconds_count", outcome="error") >= 1
    fake_openai.fail_status = None
    assert "".join(chunk.delta or "" for chunk in llm.stream_chat([ChatMessage(role="user", content="hi")]))
    assert value("ils_llm_duration_seconds_count", outcome="ok") == ok + 2


def test_unmatched_paths_and_methods_share_one_label(client) -> None:
    def count(**labels: str) -> float:
        return REGISTRY.get_sample_value("ils_http_request_duration_seconds_count", labels) or 0.0

    before = count(method="GET", route="unmatched", status="404")
    for i in range(3):
        assert client.get(f"/scanner/{uuid.uuid4().hex}/{i}").status_code == 404
    assert count(method="GET", route="unmatched", status="404") == before + 3


def test_metrics_listener_off_by_default(tmp_path: Path) -> None:
    from core.settings import Settings

    assert Settings().metrics_port == 0 and Settings().metrics_host == "127.0.0.1"
