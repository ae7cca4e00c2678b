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
Results go to bench/results/soak-latest.json.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
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
    results_dir: Path = ROOT / "bench" / "results"
    seed: int = 8
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


# --- the server -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (psutil when installed, else /proc)."""
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except ImportError:  # pragma: no cover - psutil is installed with the dev extras
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise


def start_server(data_dir: Path, log: Callable[[str], None]) -> tuple[subprocess.Popen, str, Path]:
    port = _free_port()
    env = {**os.environ, "DATA_DIR": str(data_dir), "SEARCH_RATE_PER_MINUTE": "1000000",
           "CHAT_RATE_PER_MINUTE": "1000000", "LOG_FORMAT": "json", "LOG_LEVEL": "INFO"}
    for name in ("DATABASE_URL", "APP_DATABASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        env.pop(name, None)  # embedded database; extractive chat
    log_path = data_dir / "soak-server.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as sink:
        process = subprocess.Popen([sys.executable, "-m", "app", "serve", "--port", str(port), "--load-samples"],
                                   env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    log(f"starting server (pid {process.pid}) on {url} with samples, DATA_DIR={data_dir}")
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return process, url, log_path
        except httpx.TransportError:
            pass
        time.sleep(1)
    process.kill()
    raise RuntimeError("server did not become healthy in 15 minutes")


def postmaster_pid(pgdata: Path) -> int | None:
    """The running postmaster of `pgdata`, if any (first line of postmaster.pid)."""
    import psutil

    try:
        pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if psutil.pid_exists(pid) else None


def stop_postgres(pgdata: Path) -> None:
    """Fast shutdown (SIGINT) of the embedded Postgres the soak's server started: pgserver only
    stops it when no process is registered as using it, and the killed server may still be."""
    import psutil

    pid = postmaster_pid(pgdata)
    if pid is None:
        return
    try:
        postmaster = psutil.Process(pid)
        if str(pgdata) in " ".join(postmaster.cmdline()):  # the pid is ours, not a recycled one
            postmaster.send_signal(signal.SIGINT)
            postmaster.wait(timeout=30)
    except (psutil.Error, OSError):
        pass


def pid_listening_on(url: str) -> int | None:
    import psutil

    port = httpx.URL(url).port
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr and connection.laddr.port == port:
            return connection.pid
    return None


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


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 1)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 1)


def run(options: SoakOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    process, our_postgres = None, None
    url, pid = options.url, options.pid
    if url is None:
        data_dir = options.data_dir or Path(tempfile.mkdtemp(prefix="ils-soak-"))
        pgdata = data_dir.resolve() / "pg"
        our_postgres = None if postmaster_pid(pgdata) else pgdata  # never stop one somebody else runs
        process, url, _ = start_server(data_dir, log)
        pid = process.pid
    elif pid is None:
        pid = pid_listening_on(url)
    try:
        rss_boot = rss_bytes(pid) if pid else None
        accounts = options.accounts
        if len(accounts) != 2:
            raise ValueError("the soak needs exactly two companies")
        signed = {label: sign_in(url, email, password) for label, email, password in accounts}
        a, b = (Company(label, known_documents(url, signed[label]), f"soak-marker-{label}")
                for label, _, _ in accounts)
        pairs = [(a, b, signed[a.slug]), (b, a, signed[b.slug])]
        log(f"documents before the run: {a.slug} {len(a.document_ids)}, {b.slug} {len(b.document_ids)}")
        if options.warmup_s > 0:
            log(f"warm-up: {options.warmup_s:.0f} s (not counted)")
            _load(url, pairs, options.clients, options.warmup_s, options.seed + 1000)
        rss_start = rss_bytes(pid) if pid else None
        log(f"soak: {options.clients} clients for {options.duration_s:.0f} s against {url}")
        tally, elapsed = _load(url, pairs, options.clients, options.duration_s, options.seed)
        rss_end = rss_bytes(pid) if pid else None
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        if our_postgres is not None:
            stop_postgres(our_postgres)

    kinds = {}
    for kind, _ in MIX:
        statuses = tally.statuses.get(kind, Counter())
        latencies = tally.latencies_ms.get(kind, [])
        kinds[kind] = {"requests": sum(statuses.values()), "ok": len(latencies),
                       "per_s": round(sum(statuses.values()) / elapsed, 2),
                       "p50_ms": _percentile(latencies, 50), "p95_ms": _percentile(latencies, 95),
                       "statuses": {str(code): n for code, n in sorted(statuses.items())}}
    all_statuses = Counter()
    for statuses in tally.statuses.values():
        all_statuses.update(statuses)
    growth = (rss_end - rss_start) / rss_start * 100 if rss_start and rss_end else None
    result = {
        "options": {**asdict(options), "data_dir": str(options.data_dir) if options.data_dir else None,
                    "results_dir": str(options.results_dir),
                    "accounts": [label for label, _, _ in options.accounts]},
        "url": url, "elapsed_s": round(elapsed, 1), "kinds": kinds,
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
    result["targets"] = {"zero_5xx": result["status_5xx"] == 0, "zero_cross_tenant": result["cross_tenant"] == 0,
                         "rss_growth_under_10pct": growth is not None and growth < 10}
    options.results_dir.mkdir(parents=True, exist_ok=True)
    (options.results_dir / "soak-latest.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


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
        "targets: " + ", ".join(f"{name} {'PASS' if ok else 'FAIL'}" for name, ok in result["targets"].items()),
    ]
    return lines
