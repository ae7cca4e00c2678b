"""CLI of the performance room: `ils-rag bench search` (logic in evals.bench_search)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    from app.cli import bench_app, console

    @bench_app.command("search")
    def bench_search(
        chunks: Annotated[int, typer.Option(help="Chunks in the benchmark store.")] = 100_000,
        companies: Annotated[int, typer.Option(help="Companies (Zipf-skewed sizes).")] = 200,
        queries_per_bucket: Annotated[int, typer.Option(help="Store-search queries per tenant-size bucket.")] = 100,
        jaccard_queries: Annotated[int, typer.Option(help="Legacy Jaccard queries per bucket.")] = 15,
        duration: Annotated[float, typer.Option(help="Seconds per concurrency level.")] = 10.0,
        skip_http: Annotated[bool, typer.Option("--skip-http", help="No end-to-end HTTP part.")] = False,
        http_requests: Annotated[int, typer.Option(help="Requests for the 1-client HTTP latency.")] = 200,
        embed_chunks: Annotated[int, typer.Option(help="~200-word chunks per embedding-throughput round.")] = 128,
        embed_rounds: Annotated[int, typer.Option(help="Interleaved embedding rounds per runtime.")] = 3,
        skip_embedding: Annotated[bool, typer.Option("--skip-embedding", help="No embedding-runtime part.")] = False,
        skip_quality: Annotated[bool, typer.Option(
            "--skip-quality", help="No optical nDCG@10 per runtime (runs `ils-rag eval` once per runtime).")] = False,
        results_dir: Annotated[Path, typer.Option(help="Where JSON, Markdown and PNG go.")] = Path("bench/results"),
    ) -> None:
        """Search benchmark at 100k chunks in the isolated database `ils_bench` (built once, then cached).

        Smaller --chunks/--companies build (and cache) a separate store: handy for a quick run."""
        import shlex
        import sys

        from evals.bench_search import BenchOptions, markdown, run, summary_lines

        command = "ils-rag bench search" + "".join(f" {shlex.quote(a)}" for a in sys.argv[3:])
        options = BenchOptions(chunks=chunks, companies=companies, queries_per_bucket=queries_per_bucket,
                               jaccard_queries_per_bucket=jaccard_queries, duration_s=duration,
                               http_latency_requests=http_requests, embed_chunks=embed_chunks,
                               embed_rounds=embed_rounds, skip_http=skip_http, skip_embedding=skip_embedding,
                               skip_quality=skip_quality, results_dir=results_dir.resolve(), command=command)
        result = run(options, log=lambda message: console.print(message, highlight=False))
        console.print(markdown(result), highlight=False)
        for line in summary_lines(result):
            console.print(line, highlight=False)
        console.print(f"results: {options.results_dir}/search-latest.{{json,md,png}}")
