"""Soak test (`ils-rag bench soak`): N concurrent clients mixing search, chat and uploads against a
running server on loopback for a fixed time, checking every answer for another company's data.

Each client signs in as a sample practice's admin (half per company) and knows its company's
document ids (listed before the run, plus its colleagues' uploads as they happen) and the
marker its company's uploads carry. A search result or chat source naming a document id of
the other company, or showing the other company's marker, counts as cross-tenant.

By default the command starts `ils-rag serve --load-samples` itself on an embedded database in
a fresh DATA_DIR (extractive chat: no LLM key; per-user rate limits raised, since 16 clients
share 2 sign-ins), warms it up, and reads the server process's RSS before and after the run.
`--url` points it at a server that is already running instead (`--pid` for its memory).
Results go to benchmarks/results/soak-latest.json, also when a phase fails (with what it
measured by then and the phase named).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks import RESULTS_DIR
from benchmarks.processes import pid_listening_on, postmaster_pid, rss_bytes, stop_postgres
from benchmarks.server import running_server, serve_command
from evals.metrics import percentile

QUERIES = [
    "How much do varifocal lenses cost?", "What are your opening hours?", "contact lens aftercare",
    "Can I cancel my appointment?", "children's eye examination", "anti-reflective coating price",
    "frame repair and adjustment policy", "dry eye treatment", "glaucoma referral", "insurance and billing",
    "soak note lens cleaning cloth price",
]
MIX = (("search", 0.55), ("chat", 0.30), ("upload", 0.15))


@dataclass
class SoakOptions:
    duration_s: float = 60.0
    clients: int = 16
    warmup_s: float = 10.0
    url: str | None = None
    pid: int | None = None
    data_dir: Path | None = None
    results_dir: Path = RESULTS_DIR
    seed: int = 8
    server_workers: int = 1  # `ils-rag serve --workers N`: N API processes on one port
    ingest_workers: int = 0  # `ils-rag worker` processes; then every upload is a queued job, none in-process
    # (label, email, password) of one admin for each of the two companies: the caller knows them
    # (`ils-rag bench soak` passes the sample practices' admins, which its server loads)
    accounts: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass
class Tally:
    latencies_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    transport_errors: Counter[str] = field(default_factory=Counter)
    cross_tenant: list[str] = field(default_factory=list)
    chat_modes: Counter[str] = field(default_factory=Counter)
    results_checked: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


# --- the clients ----------------------------------------------------------------------------


@dataclass
class Company:
    slug: str
    document_ids: set[str]
    marker: str  # in every soak upload's text; another company's answers must never show it


def sign_in(url: str, email: str, password: str) -> dict[str, str]:
    r = httpx.post(f"{url}/api/auth/login", json={"email": email, "password": password}, timeout=60)
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['token']}"}


def known_documents(url: str, headers: dict[str, str]) -> set[str]:
    ids: set[str] = set()
    page = 1
    while True:
        r = httpx.get(f"{url}/api/documents", params={"page": page, "page_size": 100}, headers=headers, timeout=60)
        r.raise_for_status()
        items = r.json()["items"]
        ids.update(item["document_id"] for item in items)
        if len(items) < 100:
            return ids
        page += 1


class Client(threading.Thread):
    def __init__(self, number: int, url: str, headers: dict[str, str], own: Company, other: Company,
                 tally: Tally, lock: threading.Lock, stop_at: float, seed: int) -> None:
        super().__init__(daemon=True, name=f"soak-{number}")
        self.number, self.url, self.headers = number, url, headers
        self.own, self.other, self.tally, self.ids_lock = own, other, tally, lock
        self.stop_at = stop_at
        self.random = random.Random(seed + number)
        self.uploads = 0

    def _check(self, kind: str, items: list[dict[str, Any]], text_of: Callable[[dict[str, Any]], str]) -> None:
        with self.ids_lock:
            foreign = self.other.document_ids.copy()
        with self.tally.lock:
            for item in items:
                self.tally.results_checked += 1
                if item.get("document_id") in foreign or self.other.marker in text_of(item):
                    self.tally.cross_tenant.append(f"{kind} by {self.own.slug}: {item.get('document_id')} "
                                                   f"{item.get('filename')}")

    def _request(self, client: httpx.Client, kind: str, send: Callable[[], httpx.Response]) -> httpx.Response | None:
        started = time.perf_counter()
        try:
            response = send()
        except httpx.HTTPError as exc:
            with self.tally.lock:
                self.tally.transport_errors[f"{kind}: {type(exc).__name__}"] += 1
            return None
        elapsed = (time.perf_counter() - started) * 1000
        with self.tally.lock:
            self.tally.statuses[kind][response.status_code] += 1
            if response.is_success:
                self.tally.latencies_ms[kind].append(elapsed)
        return response if response.is_success else None

    def run(self) -> None:
        kinds, weights = zip(*MIX, strict=True)
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=120) as client:
            while time.monotonic() < self.stop_at:
                kind = self.random.choices(kinds, weights)[0]
                if kind == "search":
                    body = {"query": self.random.choice(QUERIES), "limit": 5}
                    r = self._request(client, kind, lambda b=body: client.post("/api/rag/search", json=b))
                    if r is not None:
                        self._check(kind, r.json()["results"], lambda item: item.get("content") or "")
                elif kind == "chat":
                    body = {"message": self.random.choice(QUERIES)}
                    r = self._request(client, kind, lambda b=body: client.post("/api/chat", json=b))
                    if r is not None:
                        answer = r.json()
                        with self.tally.lock:
                            self.tally.chat_modes[answer["metadata"]["mode"]] += 1
                        self._check(kind, answer["sources"], lambda item: item.get("snippet") or "")
                        if self.other.marker in answer["answer"]:
                            with self.tally.lock:
                                self.tally.cross_tenant.append(f"chat answer for {self.own.slug} shows "
                                                               f"{self.other.marker}")
                else:
                    self.uploads += 1
                    name = f"soak-{self.number}-{self.uploads}-{uuid.uuid4().hex[:6]}.md"
                    text = (f"# Soak note\n\n{self.own.marker}: the lens cleaning cloth costs "
                            f"£{self.random.randint(2, 9)}.{self.random.randint(10, 99)} at this practice.\n")
                    files = {"files": (name, text.encode(), "text/markdown")}
                    r = self._request(client, kind, lambda f=files: client.post("/api/documents", files=f))
                    if r is not None:
                        document = r.json()["results"][0]["document"]
                        with self.ids_lock:
                            self.own.document_ids.add(document["document_id"])


def _load(url: str, companies: list[tuple[Company, Company, dict[str, str]]], clients: int, seconds: float,
          seed: int) -> tuple[Tally, float]:
    tally, lock = Tally(), threading.Lock()
    stop_at = time.monotonic() + seconds
    threads = [Client(i, url, companies[i % len(companies)][2], companies[i % len(companies)][0],
                      companies[i % len(companies)][1], tally, lock, stop_at, seed) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return tally, time.monotonic() - started


def _server_environment(data_dir: Path, ingest_workers: int = 0) -> dict[str, str]:
    """The embedded database in `data_dir`, extractive chat (no LLM key), and per-user rate
    limits raised: 16 clients share 2 sign-ins. With ingestion workers, every upload goes
    through the queue (inline limit 0) and the API runs no worker of its own."""
    env = {**os.environ, "DATA_DIR": str(data_dir), "SEARCH_RATE_PER_MINUTE": "1000000",
           "CHAT_RATE_PER_MINUTE": "1000000", "LOG_FORMAT": "json", "LOG_LEVEL": "INFO"}
    if ingest_workers:
        env.update(UPLOAD_INLINE_MAX_KB="0", INGEST_IN_PROCESS_WORKER="false")
    for name in ("DATABASE_URL", "APP_DATABASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        env.pop(name, None)
    return env


@contextmanager
def _ingest_worker(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """One `ils-rag worker` on the server's database, stopped (SIGTERM) when the soak ends."""
    with log.open("ab") as handle:
        process = subprocess.Popen([sys.executable, "-m", "app", "worker"], env=env, stdout=handle,
                                   stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()


def _upload_outcomes(url: str, headers: list[dict[str, str]], timeout_s: float = 300) -> dict[str, int]:
    """Wait for the queue to finish the soak's uploads; count how they ended (both companies)."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts: Counter[str] = Counter()
        for auth in headers:
            page = 1
            while True:
                body = httpx.get(f"{url}/api/documents", params={"page": page, "page_size": 100}, headers=auth,
                                 timeout=30).json()
                counts.update(d["status"] for d in body["items"] if d["filename"].startswith("soak-"))
                if page * 100 >= body["total"]:
                    break
                page += 1
        pending = counts["queued"] + counts["indexing"]
        if not pending or time.monotonic() > deadline:
            return {"indexed": counts["indexed"], "failed": counts["failed"], "pending": pending}
        time.sleep(1)


def _ms(values: list[float], pct: float) -> float | None:
    return round(percentile(values, pct), 1) if values else None


def run(options: SoakOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    if len(options.accounts) != 2:  # before any work
        raise ValueError("the soak needs exactly two companies")
    result: dict[str, Any] = {
        "options": {**asdict(options), "data_dir": str(options.data_dir) if options.data_dir else None,
                    "results_dir": str(options.results_dir),
                    "accounts": [label for label, _, _ in options.accounts]},
        "url": options.url}
    phase = "server start"
    try:
        with ExitStack() as stack:
            url, pid = options.url, options.pid
            if url is None:
                data_dir = options.data_dir or Path(tempfile.mkdtemp(prefix="ils-soak-"))
                pgdata = data_dir.resolve() / "pg"
                if postmaster_pid(pgdata) is None:  # never stop one somebody else runs; ours stops last
                    stack.callback(stop_postgres, pgdata)
                log(f"starting server with samples ({options.server_workers} API process(es), "
                    f"{options.ingest_workers} ingestion worker(s)), DATA_DIR={data_dir}")
                env = _server_environment(data_dir, options.ingest_workers)
                extra = ["--workers", str(options.server_workers)] if options.server_workers > 1 else []
                url, process = stack.enter_context(running_server(
                    env, data_dir / "soak-server.log",
                    lambda port: serve_command(port, "--load-samples", *extra), timeout=900, interval=1,
                    stop_timeout=60))
                pid = process.pid
                log(f"server (pid {pid}) on {url}")
                for n in range(options.ingest_workers):
                    stack.enter_context(_ingest_worker(env, data_dir / f"soak-worker-{n}.log"))
            elif pid is None:
                pid = pid_listening_on(url)
            result.update(url=url, server_pid=pid)
            rss_boot = rss_bytes(pid) if pid else None
            phase = "sign-in"
            signed = {label: sign_in(url, email, password) for label, email, password in options.accounts}
            a, b = (Company(label, known_documents(url, signed[label]), f"soak-marker-{label}")
                    for label, _, _ in options.accounts)
            pairs = [(a, b, signed[a.slug]), (b, a, signed[b.slug])]
            log(f"documents before the run: {a.slug} {len(a.document_ids)}, {b.slug} {len(b.document_ids)}")
            if options.warmup_s > 0:
                phase = "warm-up"
                log(f"warm-up: {options.warmup_s:.0f} s (not counted)")
                _load(url, pairs, options.clients, options.warmup_s, options.seed + 1000)
            phase = "soak"
            rss_start = rss_bytes(pid) if pid else None
            log(f"soak: {options.clients} clients for {options.duration_s:.0f} s against {url}")
            tally, elapsed = _load(url, pairs, options.clients, options.duration_s, options.seed)
            rss_end = rss_bytes(pid) if pid else None
            phase = "queue drain"
            uploads = _upload_outcomes(url, [signed[a.slug], signed[b.slug]]) if options.ingest_workers else None
            phase = "server stop"
        result.update(_figures(tally, elapsed, pid, rss_boot, rss_start, rss_end))
        if uploads is not None:
            result["queued_uploads"] = uploads
            result["targets"]["queued_uploads_indexed"] = uploads["failed"] == 0 and uploads["pending"] == 0
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        result["failed"] = {"phase": phase, "error": error.splitlines()[0], "detail": error}
        raise
    finally:
        options.results_dir.mkdir(parents=True, exist_ok=True)
        (options.results_dir / "soak-latest.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _figures(tally: Tally, elapsed: float, pid: int | None, rss_boot: int | None, rss_start: int | None,
             rss_end: int | None) -> dict[str, Any]:
    kinds = {}
    for kind, _ in MIX:
        statuses = tally.statuses.get(kind, Counter())
        latencies = tally.latencies_ms.get(kind, [])
        kinds[kind] = {"requests": sum(statuses.values()), "ok": len(latencies),
                       "per_s": round(sum(statuses.values()) / elapsed, 2),
                       "p50_ms": _ms(latencies, 50), "p95_ms": _ms(latencies, 95),
                       "statuses": {str(code): n for code, n in sorted(statuses.items())}}
    all_statuses: Counter[int] = Counter()
    for statuses in tally.statuses.values():
        all_statuses.update(statuses)
    growth = (rss_end - rss_start) / rss_start * 100 if rss_start and rss_end else None
    figures = {
        "elapsed_s": round(elapsed, 1), "kinds": kinds,
        "requests": sum(all_statuses.values()),
        "errors": sum(n for code, n in all_statuses.items() if code >= 400) + sum(tally.transport_errors.values()),
        "status_5xx": sum(n for code, n in all_statuses.items() if code >= 500),
        "status_429": all_statuses.get(429, 0),
        "transport_errors": dict(tally.transport_errors),
        "cross_tenant": len(tally.cross_tenant), "cross_tenant_examples": tally.cross_tenant[:10],
        "results_checked": tally.results_checked, "chat_modes": dict(tally.chat_modes),
        "server_pid": pid, "rss_mb": {"after_boot": _mb(rss_boot), "start": _mb(rss_start), "end": _mb(rss_end)},
        "rss_growth_pct": round(growth, 1) if growth is not None else None,
    }
    figures["targets"] = {"zero_5xx": figures["status_5xx"] == 0, "zero_cross_tenant": figures["cross_tenant"] == 0,
                          "rss_growth_under_10pct": growth is not None and growth < 10}
    return figures


def _mb(value: int | None) -> float | None:
    return round(value / 1024 / 1024, 1) if value is not None else None


def summary_lines(result: dict[str, Any]) -> list[str]:
    lines = [f"{'kind':7} {'requests':>8} {'ok':>6} {'req/s':>6} {'p50 ms':>8} {'p95 ms':>8}  statuses"]
    for kind, row in result["kinds"].items():
        lines.append(f"{kind:7} {row['requests']:>8} {row['ok']:>6} {row['per_s']:>6} {row['p50_ms']!s:>8} "
                     f"{row['p95_ms']!s:>8}  {row['statuses']}")
    rss = result["rss_mb"]
    lines += [
        f"requests {result['requests']} in {result['elapsed_s']} s; errors {result['errors']} "
        f"(5xx {result['status_5xx']}, 429 {result['status_429']}, "
        f"transport {sum(result['transport_errors'].values())})",
        f"cross-tenant results {result['cross_tenant']} of {result['results_checked']} checked; "
        f"chat modes {result['chat_modes']}",
        f"server RSS (pid {result['server_pid']}): after boot {rss['after_boot']} MB, start {rss['start']} MB, "
        f"end {rss['end']} MB, growth {result['rss_growth_pct']}%",
        *([f"queued uploads (ingestion workers): {result['queued_uploads']}"] if "queued_uploads" in result else []),
        "targets: " + ", ".join(f"{name} {'PASS' if ok else 'FAIL'}" for name, ok in result["targets"].items()),
    ]
    return lines
