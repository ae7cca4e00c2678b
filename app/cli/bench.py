"""`ils-rag bench ...`: entry points of the benchmarks (search, ingest, soak, auth); the
measurements themselves live in their own modules."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from app.cli.common import bench_app, console, fail, prepared
from benchmarks import RESULTS_DIR
from core.settings import Settings


@bench_app.command("ingest")
def bench_ingest(
    output: Annotated[Path, typer.Option(help="Where to write the JSON result.")] = RESULTS_DIR / "ingest.json",
    repeat: Annotated[int, typer.Option(min=1, max=5, help="Timed rounds (best is kept).")] = 1,
    workers: Annotated[int, typer.Option(min=0, max=16, help=(
        "Also drain queued uploads with 1..N `ils-rag worker` processes (0: the pipeline only)."))] = 0,
    uploads: Annotated[int, typer.Option(min=1, max=100, help="Queued uploads per --workers run.")] = 6,
    upload_kb: Annotated[int, typer.Option(min=1, max=20_000, help="Size of each queued upload.")] = 100,
) -> None:
    """Chunks/s of the whole ingestion pipeline vs the bare embedding model, same texts, same run;
    with --workers, the ingestion queue's drain rate with one and N worker processes."""
    from benchmarks.ingest import run_ingest_bench, run_queue_bench
    from core.settings import get_settings

    prepared()
    settings = get_settings()
    if workers:
        counts = tuple(sorted({1, workers}))
        queue = run_queue_bench(settings, counts, uploads=uploads, kb=upload_kb,
                                output=output.with_name(output.stem + "-queue.json"))
        table = Table("workers", "uploads", "chunks", "seconds", "drain chunks/s", "uploads/min",
                      "one job's chunks/s (median)")
        for run in queue["runs"]:
            table.add_row(str(run["workers"]), str(run["uploads"]), str(run["chunks"]), f"{run['seconds']:.1f}",
                          f"{run['drain_chunks_per_s']:.1f}", f"{run['drain_uploads_per_min']:.1f}",
                          f"{run['job_chunks_per_s_median']:.1f}")
        console.print(table)
        console.print(f"bare model {queue['bare_chunks_per_s']:.1f} chunks/s; one upload on one worker: "
                      f"{queue['worker_over_bare']:.2f} of it (target {queue['target_ratio']})", highlight=False)
    result = run_ingest_bench(settings, output, repeat=repeat)
    table = Table("measure", "chunks", "seconds", "chunks/s")
    table.add_row("bare model", str(result["chunks"]), f"{result['bare_seconds']:.2f}",
                  f"{result['bare_chunks_per_s']:.1f}")
    table.add_row("whole pipeline", str(result["pipeline_chunks"]), f"{result['pipeline_seconds']:.2f}",
                  f"{result['pipeline_chunks_per_s']:.1f}")
    console.print(table)
    verdict = "meets" if result["ratio"] >= result["target_ratio"] else "misses"
    console.print(f"pipeline/bare ratio {result['ratio']:.2f} ({verdict} the {result['target_ratio']} target); "
                  f"written to {output}", highlight=False)


class _AuthService:
    """The app as `ils-rag bench auth` measures it: built per settings, with the per-request
    revocation check switchable (the benchmark's "without" side)."""

    def __init__(self) -> None:
        import app.deps

        self._deps = app.deps
        self._real = app.deps.check_token_authority

    def client(self, settings: Settings) -> object:
        from fastapi.testclient import TestClient

        from app.main import create_app

        return TestClient(create_app(settings, prepare=False))

    def use_check(self, enabled: bool) -> None:
        self._deps.check_token_authority = self._real if enabled else (lambda **_: None)


def _print_latencies(result: dict, rows: tuple[tuple[str, str], ...]) -> None:
    """A p50/p95 table of an in-process benchmark's result: (label, key of a {"p50", "p95"} entry)."""
    table = Table("measure", "p50 ms", "p95 ms")
    for label, key in rows:
        table.add_row(label, f"{result[key]['p50']:.3f}", f"{result[key]['p95']:.3f}")
    console.print(table)


@bench_app.command("auth")
def bench_auth(
    output: Annotated[Path, typer.Option(help="Where to write the JSON result.")] = RESULTS_DIR / "auth.json",
    requests: Annotated[int, typer.Option(min=20, help="Timed calls of each kind.")] = 200,
) -> None:
    """Cost of the per-request revocation check: alone, and on /api/rag/search with vs without it."""
    from benchmarks.auth import run_auth_bench
    from core.settings import get_settings

    prepared()
    result = run_auth_bench(_AuthService(), get_settings(), output, requests=requests)
    _print_latencies(result, (("check alone", "check_alone_ms"), ("search with the check", "search_with_check_ms"),
                              ("search without it", "search_without_check_ms"),
                              (f"rate-limit step ({result['rate_limit_storage']})", "rate_limit_attempt_ms")))
    verdict = "within" if result["added_p50_ms"] <= result["budget_p50_ms"] else "over"
    console.print(f"added per request (median of paired differences): {result['added_p50_ms']:.3f} ms ({verdict} "
                  f"the {result['budget_p50_ms']} ms budget; difference of medians "
                  f"{result['difference_of_medians_ms']:.3f} ms); written to {output}", highlight=False)


@bench_app.command("tenant-context")
def bench_tenant_context(
    output: Annotated[Path, typer.Option(help="Where to write the JSON result.")] = RESULTS_DIR / "tenant-context.json",
    requests: Annotated[int, typer.Option(min=20, help="Timed calls of each kind.")] = 300,
) -> None:
    """Cost of the signed tenant claim and the row-level security that verifies it."""
    from benchmarks.tenant_context import run_tenant_context_bench
    from core.settings import get_settings

    prepared()
    result = run_tenant_context_bench(get_settings(), output, requests=requests)
    _print_latencies(result, (("transaction with the claim", "transaction_with_claim_ms"),
                              ("transaction without a tenant", "transaction_without_claim_ms"),
                              ("search query behind the wall", "search_query_behind_wall_ms"),
                              ("search query as the owner (no RLS)", "search_query_as_owner_ms"),
                              ("hybrid search (the /api/rag/search default)", "hybrid_search_ms"),
                              ("  of which proving the tenant", "hybrid_proof_ms")))
    verdict = "within" if result["within_budget"] else "over"
    console.print(f"claim set-up adds {result['claim_added_p50_ms']:.3f} ms p50 to a transaction; the whole wall adds "
                  f"{result['wall_added_p50_ms']:.3f} ms p50 to a search's store query; a hybrid search proves its "
                  f"tenant in {result['hybrid_tenant_transactions']} transactions: the wall costs it "
                  f"{result['hybrid_wall_p50_ms']:.3f} ms p50 ({verdict} the {result['budget_p50_ms']} ms budget); "
                  f"written to {output}", highlight=False)


@bench_app.command("search")
def bench_search(
    chunks: Annotated[int, typer.Option(help="Chunks in the benchmark store.")] = 100_000,
    companies: Annotated[int, typer.Option(help="Companies (Zipf-skewed sizes).")] = 200,
    queries_per_bucket: Annotated[int, typer.Option(help="Store-search queries per tenant-size bucket.")] = 100,
    jaccard_queries: Annotated[int, typer.Option(help="Legacy Jaccard queries per bucket.")] = 15,
    duration: Annotated[float, typer.Option(help="Seconds per concurrency level.")] = 10.0,
    skip_http: Annotated[bool, typer.Option("--skip-http/--with-http", help="No end-to-end HTTP part.")] = False,
    http_requests: Annotated[int, typer.Option(help="Requests for the 1-client HTTP latency.")] = 200,
    http_workers: Annotated[int, typer.Option(help="Also measure the throughput of this many uvicorn worker "
                                                   "processes on one port (0: one process only).")] = 2,
    embed_chunks: Annotated[int, typer.Option(help="~200-word chunks per embedding-throughput round.")] = 128,
    embed_rounds: Annotated[int, typer.Option(help="Interleaved embedding rounds per runtime.")] = 3,
    skip_embedding: Annotated[bool, typer.Option("--skip-embedding/--with-embedding",
                                                 help="No embedding-runtime part.")] = False,
    skip_quality: Annotated[bool, typer.Option(
        "--skip-quality/--with-quality",
        help="No optical nDCG@10 per runtime (runs `ils-rag eval` once per runtime).")] = False,
    scifact: Annotated[Path | None, typer.Option(
        help="A BEIR SciFact folder (corpus.jsonl, queries.jsonl): its abstracts and claims join the "
             "repository's texts, as in the published figures. Without it, only the repository is used.")] = None,
    results_dir: Annotated[Path, typer.Option(help="Where JSON, Markdown and PNG go.")] = RESULTS_DIR,
) -> None:
    """Search benchmark at 100k chunks in the isolated database `ils_bench` (built once, then cached).

    Smaller --chunks/--companies build (and cache) a separate store: handy for a quick run."""
    import shlex
    import sys

    from benchmarks.search.corpus import DatasetMissing
    from benchmarks.search.report import markdown, summary_lines
    from benchmarks.search.run import BenchOptions, PhaseFailed, run
    from core.settings import get_settings

    command = "ils-rag bench search" + "".join(f" {shlex.quote(a)}" for a in sys.argv[3:])
    options = BenchOptions(chunks=chunks, companies=companies, queries_per_bucket=queries_per_bucket,
                           jaccard_queries_per_bucket=jaccard_queries, duration_s=duration,
                           http_latency_requests=http_requests, http_workers=http_workers,
                           embed_chunks=embed_chunks,
                           embed_rounds=embed_rounds, skip_http=skip_http, skip_embedding=skip_embedding,
                           skip_quality=skip_quality, scifact=scifact, results_dir=results_dir.resolve(),
                           command=command)
    try:
        result = run(options, get_settings(), log=lambda message: console.print(message, highlight=False))
    except (DatasetMissing, PhaseFailed) as exc:  # a wrong dataset before any work; else what was kept
        raise fail(str(exc)) from exc
    console.print(markdown(result), highlight=False)
    for line in summary_lines(result):
        console.print(line, highlight=False)
    console.print(f"results: {options.results_dir}/search-latest.{{json,md,png}}")


@bench_app.command("soak")
def bench_soak(
    duration: Annotated[float, typer.Option(help="Seconds of measured load.")] = 60.0,
    clients: Annotated[int, typer.Option(help="Concurrent clients.")] = 16,
    warmup: Annotated[float, typer.Option(help="Seconds of unmeasured load first (caches, pools).")] = 10.0,
    url: Annotated[str | None, typer.Option(help="A running server (default: start one with samples).")] = None,
    pid: Annotated[int | None, typer.Option(help="With --url: the server's process id, for its memory.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="DATA_DIR for the started server (default: new temp).")]
    = None,
    results_dir: Annotated[Path, typer.Option(help="Where soak-latest.json goes.")] = RESULTS_DIR,
    workers: Annotated[int, typer.Option(min=1, max=16, help="API processes of the started server "
                                                             "(`serve --workers N`).")] = 1,
    ingest_workers: Annotated[int, typer.Option(min=0, max=16, help=(
        "`ils-rag worker` processes beside the started server; then every upload is a queued job."))] = 0,
) -> None:
    """Soak: concurrent search, chat (extractive) and uploads; p50/p95, errors, cross-tenant, memory."""
    from app.samples import SAMPLE_COMPANIES, SAMPLE_PASSWORD
    from benchmarks.soak import SoakOptions, run, summary_lines

    # the sample practices' admins: the server started here loads them (--load-samples)
    accounts = [(slug, f"admin@{slug}.example", SAMPLE_PASSWORD) for slug in SAMPLE_COMPANIES]
    options = SoakOptions(duration_s=duration, clients=clients, warmup_s=warmup, url=url, pid=pid,
                          data_dir=data_dir, results_dir=results_dir.resolve(), accounts=accounts,
                          server_workers=workers, ingest_workers=ingest_workers)
    result = run(options, log=lambda message: console.print(message, highlight=False))
    for line in summary_lines(result):
        console.print(line, highlight=False)
    console.print(f"results: {options.results_dir}/soak-latest.json")
    if not all(result["targets"].values()):
        raise typer.Exit(1)
