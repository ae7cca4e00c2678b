"""`ils-rag bench soak`, in small: a few clients for a few seconds against a real uvicorn server
on loopback (in this process, on the session database), two fresh companies. The full run
(16 clients, 60 s, its own server with the samples) is `ils-rag bench soak`; this checks the
machinery: every kind runs, answers are checked for the other company, results are written."""

from __future__ import annotations

import json
import os
import threading

import pytest
import uvicorn

from app.main import create_app
from benchmarks.server import free_port, wait_for
from benchmarks.soak import SoakOptions, run, summary_lines


@pytest.fixture
def live_server(app):
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(prepare=False), host="127.0.0.1", port=port,
                                          log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_for(f"{url}/health", timeout=30, interval=0.2)
    yield url
    server.should_exit = True
    thread.join(timeout=30)


def test_soak_mixes_kinds_and_checks_tenancy(live_server, make_company, make_user, index_texts, tmp_path) -> None:
    accounts = []
    for label in ("north", "south"):
        company = make_company(f"{label} practice")
        index_texts(company, [(f"{label}-prices.md", f"{label} practice: varifocal lenses cost £{len(label)}99.",
                               "pricing"),
                              (f"{label}-hours.md", f"{label} practice opening hours are 9 to 5.", "policy")])
        user, _ = make_user(company, "admin", password="soak-password-123")
        accounts.append((label, user.email, "soak-password-123"))
    options = SoakOptions(url=live_server, pid=os.getpid(), duration_s=4, clients=4, warmup_s=0,
                          results_dir=tmp_path, accounts=accounts)
    result = run(options, log=lambda message: None)
    print("\n".join(summary_lines(result)))
    assert result["status_5xx"] == 0 and not result["transport_errors"], result
    assert result["cross_tenant"] == 0, result["cross_tenant_examples"]
    assert result["results_checked"] > 0
    assert all(row["requests"] > 0 for row in result["kinds"].values()), result["kinds"]
    assert result["chat_modes"] and set(result["chat_modes"]) <= {"extractive", "none"}
    assert result["rss_mb"]["start"] and result["rss_mb"]["end"]
    assert json.loads((tmp_path / "soak-latest.json").read_text())["requests"] == result["requests"]
