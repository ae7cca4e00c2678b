"""The search benchmark's report: targets met or missed, Markdown, a chart, and the files
under the results folder. Works on a partial result too (a run that failed part-way), so
what was measured is never lost with the failure."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

NDCG_TOLERANCE = 0.01  # an embedding runtime may lose at most this much optical nDCG@10 against torch fp32


def quality_runtime(embed: dict[str, Any]) -> str | None:
    """The fastest runtime whose optical nDCG@10 is within NDCG_TOLERANCE of torch fp32."""
    rows = embed["runtimes"]
    eligible = [n for n, r in rows.items() if n != "torch" and abs(r.get("ndcg_delta_vs_fp32", 1.0)) <= NDCG_TOLERANCE]
    return max(eligible, key=lambda n: rows[n]["speedup_vs_torch"], default=None)


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(name: str, value: float, goal: float, higher_is_better: bool, unit: str) -> None:
        met = value >= goal if higher_is_better else value <= goal
        rows.append({"target": name, "value": value, "goal": goal, "unit": unit, "met": bool(met)})

    http = result.get("http")
    if http:
        add("E2E 1 client p50", http["latency_1_client"]["p50"], 25, False, "ms")
        add("E2E 1 client p95", http["latency_1_client"]["p95"], 60, False, "ms")
        add("throughput, 8 clients", http["throughput"].get("8", {}).get("rps", 0.0), 60, True, "req/s")
    workers = result.get("http_workers")
    if workers:
        add(f"throughput, 8 clients, --workers {workers['workers']}",
            workers["throughput"].get("8", {}).get("rps", 0.0), 150, True, "req/s")
    if http and "hybrid_1_client" in http:
        add("E2E hybrid 1 client p50", http["hybrid_1_client"]["p50"], 25, False, "ms")
    huge = result.get("text_search", {}).get("huge")
    if huge:
        add("text (BM25) p95, largest company", huge["p95"], 30, False, "ms")
    for bucket, row in result.get("store_search", {}).items():
        add(f"recall@10 {bucket}", row["recall_at_10"], 0.95, True, "")
        add(f"short share {bucket}", row["short_share"] * 100, 0.0, False, "%")
    if "jaccard_ratio" in result:
        add("vector search vs Jaccard (store query)", result["jaccard_ratio"]["store_only"], 50, True, "×")
    embed = result.get("embedding")
    if embed:
        chosen = quality_runtime(embed)
        if chosen is None:  # no quality numbers (or none within tolerance): the fastest, flagged by its nDCG row
            chosen = max((n for n in embed["runtimes"] if n != "torch"),
                         key=lambda n: embed["runtimes"][n]["speedup_vs_torch"], default=None)
        if chosen:
            row = embed["runtimes"][chosen]
            add(f"ingestion embedding vs torch fp32 ({chosen})", row["speedup_vs_torch"], 2.0, True, "×")
            if "ndcg_delta_vs_fp32" in row:
                add(f"optical nDCG@10 change vs fp32 ({chosen})", abs(row["ndcg_delta_vs_fp32"]), NDCG_TOLERANCE,
                    False, "")
    return rows


def _store_lines(result: dict[str, Any]) -> list[str]:
    store = result.get("store")
    if not store:
        return []
    return [f"Store: {store['chunks']:,} chunks over {store['companies']} companies (largest "
            f"{store['largest_share'] * 100:.1f}%, smallest {store['smallest']} chunks), "
            f"{store['size']['total_bytes'] / 1e6:.0f} MB with indexes and BM25 tables = "
            f"{store['size']['bytes_per_chunk']:.0f} B/chunk ({store['size']['chunks_per_gb']:,.0f} chunks/GB); "
            f"text: {store.get('corpus', 'SciFact')}. "
            f"Embedding runtime: `{result['embedding_runtime']}`."]


def _section(title: str, *columns: str) -> list[str]:
    """A report section's heading and its table's header; the caller appends the rows."""
    return ["", f"## {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def markdown(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [f"# Search benchmark — {result['created_at']}", "",
             f"Command: `{result['command']}` (revision {result.get('revision', '?')}, "
             f"{result.get('seconds', 0) / 60:.1f} min)  ",
             f"Machine: {machine['cpus']} CPUs; `uptime` at start: {machine.get('uptime_start', '')}; at end: "
             f"{machine.get('uptime_end', '')}.  ", *_store_lines(result)]
    failed = result.get("failed")
    if failed:
        lines += ["", f"**Incomplete run**: the {failed['phase']} phase failed ({failed['error']}); "
                  "the sections below hold what was measured before it."]
    if "store_search" in result:
        lines += _section("Store-only filtered search (PGVectorStore + company_id/is_active filters, top-10)",
                          "bucket", "tenant sizes", "queries", "p50 ms", "p95 ms", "p99 ms", "recall@10", "short")
        for bucket, row in result["store_search"].items():
            lines.append(f"| {bucket} | {row['tenant_sizes'][0]}–{row['tenant_sizes'][1]} | {row['queries']} | "
                         f"{row['p50']:.2f} | {row['p95']:.2f} | {row['p99']:.2f} | {row['recall_at_10']:.3f} | "
                         f"{row['short_share'] * 100:.1f}% |")
    if "text_search" in result:
        lines += _section("Text search (BM25 over the GIN-matched chunks, retrieval.bm25, top-10)",
                          "bucket", "queries", "p50 ms", "p95 ms", "p99 ms", "no match")
        for bucket, row in result["text_search"].items():
            lines.append(f"| {bucket} | {row['queries']} | {row['p50']:.2f} | {row['p95']:.2f} | {row['p99']:.2f} | "
                         f"{row['empty_share'] * 100:.1f}% |")
    http = result.get("http")
    if http and "hybrid_1_client" in http:
        hybrid = http["hybrid_1_client"]
        lines += ["", f"`/api/rag/search`, hybrid mode, 1 client: p50 {hybrid['p50']:.1f} ms · "
                  f"p95 {hybrid['p95']:.1f} ms ({hybrid['n']} requests)"]
    if http:
        lat = http["latency_1_client"]
        lines += ["", "## `/api/rag/search` over HTTP (uvicorn, loopback, vector mode, limit 10)", "",
                  f"1 client: p50 {lat['p50']:.1f} ms · p95 {lat['p95']:.1f} ms · p99 {lat['p99']:.1f} ms "
                  f"({lat['n']} requests)", "", "| clients | req/s |", "|---|---|"]
        lines += [f"| {c} | {row['rps']:.1f} |" for c, row in http["throughput"].items()]
    workers = result.get("http_workers")
    if workers:
        lines += ["", f"## The same load on `uvicorn --workers {workers['workers']}` (one port, the same machine)", "",
                  "Server and Postgres CPU per request, and the throughput it allows on this machine's "
                  "cores if nothing else ran, the load generator's own CPU per request (in brackets) included: "
                  "cores × 1000 / (server + generator CPU ms), the ceiling whatever the contention.", "",
                  "| clients | 1 process req/s | workers req/s | ratio | CPU ms/request (1 process / workers) "
                  "| ceiling req/s (1 process / workers) |", "|---|---|---|---|---|---|"]
        single = (http or {}).get("throughput", {})
        cores = machine.get("cpus") or 1

        def cpu(row: dict[str, Any]) -> tuple[str, str]:
            ms, client = row.get("cpu_ms_per_request"), row.get("client_cpu_ms_per_request", 0.0)
            return (f"{ms:.1f} ({client:.1f})", f"{cores * 1000 / (ms + client):.0f}") if ms else ("–", "–")

        for c, row in workers["throughput"].items():
            one = single.get(c, {})
            (one_ms, one_cap), (n_ms, n_cap) = cpu(one), cpu(row)
            rps = f"{one['rps']:.1f}" if one.get("rps") else "–"
            ratio = f"{workers['ratio'][c]:.2f}×" if c in workers["ratio"] else "–"
            lines.append(f"| {c} | {rps} | {row['rps']:.1f} | {ratio} | {one_ms} / {n_ms} | {one_cap} / {n_cap} |")
    if "jaccard" in result:
        lines += _section("Legacy Jaccard (load the tenant's rows + score in Python, per request)",
                          "bucket", "p50 ms", "p95 ms", "mean ms", "of which loading ms")
        for bucket, row in result["jaccard"].items():
            lines.append(f"| {bucket} | {row['p50']:.1f} | {row['p95']:.1f} | {row['mean']:.1f} | "
                         f"{row['load_ms_mean']:.1f} |")
    ratio = result.get("jaccard_ratio")
    if ratio:
        lines += ["", "Speed-up over the same queries and tenants (mean latency ratio):", "",
                  "| bucket | Jaccard ms | vector store ms | × (store) | with query embedding ms "
                  "| × (with embedding) |", "|---|---|---|---|---|---|"]
        for bucket, row in ratio["buckets"].items():
            lines.append(f"| {bucket} | {row['jaccard_mean_ms']:.1f} | {row['store_mean_ms']:.2f} | "
                         f"{row['store_only']:.0f}× | {row['with_embedding_mean_ms']:.1f} | "
                         f"{row['with_embedding']:.1f}× |")
        lines.append(f"| **all** | {ratio['jaccard_mean_ms']:.1f} | {ratio['store_mean_ms']:.2f} | "
                     f"**{ratio['store_only']:.0f}×** | {ratio['with_embedding_mean_ms']:.1f} | "
                     f"{ratio['with_embedding']:.1f}× |")
    embed = result.get("embedding")
    if embed:
        lines += ["", f"## Embedding runtimes ({embed['chunks']} chunks of ~{embed['words_per_chunk']:.0f} words, "
                  f"{embed['rounds']} interleaved rounds)", "",
                  "| runtime | chunks/s (median) | × torch | query ms p50 | cosine to fp32 (min / mean) | "
                  "top-10 overlap | optical nDCG@10 | Δ vs fp32 |", "|---|---|---|---|---|---|---|---|"]
        for name, row in embed["runtimes"].items():
            ndcg = f"{row['optical_ndcg_at_10']:.4f}" if "optical_ndcg_at_10" in row else "–"
            delta = f"{row['ndcg_delta_vs_fp32']:+.4f}" if "ndcg_delta_vs_fp32" in row else "–"
            lines.append(f"| {name} | {row['chunks_per_s_median']:.1f} | {row['speedup_vs_torch']:.2f} | "
                         f"{row['query_ms_p50']:.2f} | {row['cosine_to_fp32_min']:.4f} / "
                         f"{row['cosine_to_fp32_mean']:.4f} | {row['top10_overlap_with_fp32']:.3f} | {ndcg} | "
                         f"{delta} |")
    phases = machine.get("phases") or {}
    if phases:
        lines += _section("Contention (other processes on the same cores, sampled every second)",
                          "phase", "seconds", "load avg (mean / max)", "machine CPU busy", "used by other processes")
        for name, row in phases.items():
            lines.append(f"| {name} | {row['seconds']:.0f} | {row['load1_mean']:.1f} / {row['load1_max']:.1f} | "
                         f"{row['cpu_busy_pct']:.0f}% | {row['cpu_others_pct']:.0f}% |")
    lines += _section("Targets", "target", "measured", "goal", "met")
    for row in result.get("targets", []):
        lines.append(f"| {row['target']} | {row['value']:.3g} {row['unit']} | {row['goal']:g} {row['unit']} | "
                     f"{'yes' if row['met'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    buckets = list(result["store_search"])
    for key, offset in (("p50", -0.25), ("p95", 0), ("p99", 0.25)):
        axes[0].bar(np.arange(len(buckets)) + offset, [result["store_search"][b][key] for b in buckets], 0.25,
                    label=key)
    axes[0].set_xticks(range(len(buckets)), buckets)
    axes[0].set_ylabel("ms")
    axes[0].set_title("store-only filtered search latency")
    axes[0].legend()
    ratio = result["jaccard_ratio"]["buckets"]  # the same queries on the same tenants, both ways
    for key, offset, label in (("store_mean_ms", -0.27, "vector (store query)"),
                               ("with_embedding_mean_ms", 0.0, "vector + query embedding"),
                               ("jaccard_mean_ms", 0.27, "legacy Jaccard")):
        axes[1].bar(np.arange(len(buckets)) + offset, [ratio[b][key] for b in buckets], 0.27, label=label)
    axes[1].set_yscale("log")
    axes[1].set_xticks(range(len(buckets)), buckets)
    axes[1].set_ylabel("mean ms (log)")
    axes[1].set_title("vector vs Jaccard per request")
    axes[1].legend()
    http = result.get("http")
    if http:
        clients = list(http["throughput"])
        axes[2].plot([int(c) for c in clients], [http["throughput"][c]["rps"] for c in clients], marker="o")
        axes[2].axhline(60, color="grey", linestyle="--", label="target 60 req/s @ 8")
        axes[2].set_ylim(bottom=0)
        axes[2].set_xlabel("concurrent clients")
        axes[2].set_ylabel("req/s")
        axes[2].set_title(f"/api/rag/search throughput (1-client p50 {http['latency_1_client']['p50']:.1f} ms)")
        axes[2].legend()
    fig.suptitle(f"ILS RAG search benchmark · {result['store']['chunks']:,} chunks · "
                 f"{result['store']['companies']} companies · {result['created_at']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(result: dict[str, Any], directory: Path) -> dict[str, Path]:
    """search-<stamp>.{json,md,png} and the same as search-latest.*; the chart only once the
    store and Jaccard phases have figures to draw."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    paths = {"json": directory / f"search-{stamp}.json", "md": directory / f"search-{stamp}.md"}
    paths["json"].write_text(json.dumps(result, indent=2))
    paths["md"].write_text(markdown(result))
    if all(key in result for key in ("store", "store_search", "jaccard_ratio")):
        paths["png"] = directory / f"search-{stamp}.png"
        chart(result, paths["png"])
    for kind, path in paths.items():
        latest = directory / f"search-latest.{kind}"
        latest.write_bytes(path.read_bytes())
    return paths


def summary_lines(result: dict[str, Any]) -> list[str]:
    return [f"{row['target']}: {row['value']:.3g}{row['unit']} (goal {row['goal']:g}) "
            f"{'met' if row['met'] else 'MISSED'}" for row in result.get("targets", [])]
