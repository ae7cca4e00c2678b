"""The hybrid fusion study: which way of fusing the vector and text rankings ranks best, on
several datasets at once.

For every query of every dataset, each side is retrieved once (through the service's
`TenantRetriever`, in the evaluation companies `ils-rag eval` indexes), with its native
scores (cosine, BM25); every candidate fusion (retrieval.fusion) is then applied to those
same two lists in memory, so the comparison costs one retrieval per side and query. Each
fusion is scored on nDCG@10 and hit@5 of the documents (a document ranks by its best
chunk), at two candidate depths: the evaluation's (CHUNK_DEPTH chunks per side) and the
service's default (FUSION_CANDIDATES per side, what a search for 5-10 results fuses).

The choice must hold on every dataset, so fusions are ranked by their *worst* margin over
max(text, vector) across datasets, then by the mean nDCG@10:

    .venv/bin/python -m evals.fusion evals/datasets/optical ../shared/datasets/scifact

writes evals/reports/fusion.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import fmean

from llama_index.core.schema import QueryBundle
from rich.console import Console

from core.db.tenant_scope import tenant
from core.settings import Settings, get_settings
from core.terminal import wide_console
from evals.beir import Dataset, load_dataset
from evals.metrics import ndcg_at_k
from evals.report import REPORTS_DIR, write_study
from evals.runner import CHUNK_DEPTH, DOC_DEPTH, cached_embedder, index_corpus, index_fingerprint
from retrieval.fusion import Fusion
from retrieval.fusion import fuse as fuse_rankings

CANDIDATES: list[Fusion] = [
    *(Fusion("rrf", 0.5, k) for k in (1, 5, 10, 20, 60)),
    *(Fusion("rrf", w, 10) for w in (0.3, 0.4, 0.6, 0.7)),
    *(Fusion("rrf", w, 60) for w in (0.3, 0.7)),
    *(Fusion("relative", w) for w in (0.3, 0.4, 0.5, 0.6, 0.7)),
    *(Fusion("dist", w) for w in (0.3, 0.4, 0.5, 0.6, 0.7)),
    *(Fusion(method, w, 60, gap) for method in ("dist", "relative") for w in (0.4, 0.5, 0.6)
      for gap in (0.05, 0.1, 0.15, 0.2, 0.3)),
    *(Fusion("rrf", 0.5, k, gap) for k in (1, 10) for gap in (0.1, 0.2)),
]


@dataclass
class Sides:
    """One query's two rankings: (node id, native score) best first, and each node's document."""

    vector: list[tuple[str, float]]
    text: list[tuple[str, float]]
    documents: dict[str, str]


def _documents(ranking: Iterable[tuple[str, float]], documents: dict[str, str], depth: int = DOC_DEPTH) -> list[str]:
    seen: dict[str, None] = {}
    for node_id, _ in ranking:
        seen.setdefault(documents[node_id])
        if len(seen) == depth:
            break
    return list(seen)


def collect_sides(dataset: Dataset, companies: dict[str | None, str], console: Console,
                  settings: Settings) -> dict[str, Sides]:
    from retrieval.retriever import TenantRetriever

    retrievers = {company: TenantRetriever(company_id, mode="hybrid", top_k=CHUNK_DEPTH, threshold=-1.0,
                                           settings=settings)
                  for company, company_id in companies.items()}
    sides: dict[str, Sides] = {}
    for query in dataset.queries:
        if not dataset.relevant(query.id):
            continue
        retriever = retrievers[query.company]
        embedding = retriever.query_embedding(QueryBundle(query.text))
        with tenant(retriever.company_id):
            vector, text = retriever.hybrid_sides(embedding, query.text, CHUNK_DEPTH)
        documents = {c.node.node_id: c.node.metadata["filename"] for c in (*vector, *text)}
        sides[query.id] = Sides([(c.node.node_id, c.native) for c in vector],
                                [(c.node.node_id, c.native) for c in text], documents)
    console.print(f"{dataset.name}: {len(sides)} judged queries retrieved on both sides")
    return sides


def score(dataset: Dataset, sides: dict[str, Sides], fusion: Fusion | str, depth: int) -> dict[str, float]:
    """nDCG@10 and hit@5 of one fusion (or one side alone: "vector", "text") at `depth` candidates per side."""
    ndcg, hit5 = [], []
    for query_id, s in sides.items():
        vector, text = s.vector[:depth], s.text[:depth]
        if fusion == "vector":
            ranking = vector
        elif fusion == "text":
            ranking = text
        else:
            assert isinstance(fusion, Fusion)
            ranking = fuse_rankings(vector, text, fusion)
        docs = _documents(ranking, s.documents)
        grades = dataset.relevant(query_id)
        ndcg.append(ndcg_at_k(docs, grades, 10))
        hit5.append(1.0 if set(docs[:5]) & set(grades) else 0.0)
    return {"ndcg@10": fmean(ndcg), "hit@5": fmean(hit5)}


def run_study(paths: list[Path], console: Console, settings: Settings, reuse_sides: bool = False) -> dict:
    """`reuse_sides`: read each dataset's two rankings from the last run (DATA_DIR/eval-cache)
    instead of retrieving them again: for comparing new fusions, never after a retrieval change."""
    started = time.perf_counter()
    cache_dir = settings.data_dir.resolve() / "eval-cache"
    embedder = cached_embedder(cache_dir, settings)
    datasets, all_sides = [], {}
    for path in paths:
        dataset = load_dataset(path)
        saved = cache_dir / f"fusion-sides-{dataset.name}-{index_fingerprint(settings)}.json"
        if reuse_sides and saved.is_file():
            all_sides[dataset.name] = {q: Sides(**v) for q, v in json.loads(saved.read_text()).items()}
        else:
            companies = index_corpus(dataset, embedder, console, settings)
            all_sides[dataset.name] = collect_sides(dataset, companies, console, settings)
            saved.write_text(json.dumps({q: asdict(v) for q, v in all_sides[dataset.name].items()}))
        datasets.append(dataset)
    rows = []
    for depth in (CHUNK_DEPTH, _service_depth()):
        singles = {d.name: {side: score(d, all_sides[d.name], side, depth) for side in ("vector", "text")}
                   for d in datasets}
        for fusion in CANDIDATES:
            per_dataset = {}
            for d in datasets:
                values = score(d, all_sides[d.name], fusion, depth)
                best_single = max(singles[d.name]["vector"]["ndcg@10"], singles[d.name]["text"]["ndcg@10"])
                per_dataset[d.name] = {**values, "margin": values["ndcg@10"] - best_single}
            rows.append({"depth": depth, "fusion": asdict(fusion), "label": fusion.label, "datasets": per_dataset,
                         "worst_margin": min(v["margin"] for v in per_dataset.values()),
                         "mean_ndcg@10": fmean(v["ndcg@10"] for v in per_dataset.values())})
        rows.append({"depth": depth, "singles": singles})
    return {"datasets": [d.name for d in datasets], "rows": rows, "seconds": time.perf_counter() - started}


def _service_depth() -> int:
    from retrieval.retriever import FUSION_CANDIDATES

    return FUSION_CANDIDATES


def ranked_fusions(study: dict, depth: int) -> list[dict]:
    rows = [r for r in study["rows"] if r["depth"] == depth and "fusion" in r]
    return sorted(rows, key=lambda r: (-round(r["worst_margin"], 4), -r["mean_ndcg@10"], r["label"]))


def robust_fusions(study: dict) -> list[tuple[str, float]]:
    """Fusions by their worst margin over every dataset *and* every candidate depth studied (the
    service fuses 20-200 candidates per side, by the request's limit): how the default is chosen."""
    worst: dict[str, float] = {}
    best_mean: dict[str, float] = {}  # tie-break: the fusion's best mean nDCG@10 over the depths
    for row in study["rows"]:
        if "fusion" in row:
            worst[row["label"]] = min(worst.get(row["label"], row["worst_margin"]), row["worst_margin"])
            best_mean[row["label"]] = max(best_mean.get(row["label"], 0.0), row["mean_ndcg@10"])
    return sorted(worst.items(), key=lambda item: (-round(item[1], 4), -best_mean[item[0]], item[0]))


def markdown(study: dict) -> str:
    names = study["datasets"]
    lines = ["# Hybrid fusion study", "",
             f"Datasets: {', '.join(names)}. Each side retrieved once per judged query; every fusion applied to the "
             "same lists. Margin: fused nDCG@10 minus max(text, vector) nDCG@10 on that dataset; fusions ranked by "
             "their worst margin across datasets, then by mean nDCG@10.", ""]
    for depth in sorted({r["depth"] for r in study["rows"]}, reverse=True):
        singles = next(r["singles"] for r in study["rows"] if r["depth"] == depth and "singles" in r)
        lines += [f"## {depth} candidates per side", "",
                  "Single sides: " + "; ".join(
                      f"{n}: vector {singles[n]['vector']['ndcg@10']:.3f}, text {singles[n]['text']['ndcg@10']:.3f}"
                      for n in names), "",
                  "| fusion | " + " | ".join(f"{n} nDCG@10 | {n} hit@5 | {n} margin" for n in names)
                  + " | worst margin |",
                  "|---|" + "---:|" * (3 * len(names) + 1)]
        for row in ranked_fusions(study, depth):
            cells = []
            for n in names:
                v = row["datasets"][n]
                cells += [f"{v['ndcg@10']:.3f}", f"{v['hit@5']:.3f}", f"{v['margin']:+.3f}"]
            lines.append(f"| {row['label']} | " + " | ".join(cells) + f" | {row['worst_margin']:+.3f} |")
        lines.append("")
    from retrieval.retriever import DEFAULT_FUSION

    robust = robust_fusions(study)
    service = [label for label, _ in robust].index(DEFAULT_FUSION.label) + 1 if any(
        label == DEFAULT_FUSION.label for label, _ in robust) else None
    lines += ["## Choice: worst margin over both datasets and both depths", "",
              "| rank | fusion | worst margin |", "|---:|---|---:|"]
    lines += [f"| {rank} | {label} | {margin:+.3f} |" for rank, (label, margin) in enumerate(robust[:10], start=1)]
    lines += ["", f"The service's fusion (`DEFAULT_FUSION`): {DEFAULT_FUSION.label}"
              + (f", rank {service} of {len(robust)}." if service else " (not among the fusions studied)."), ""]
    lines.append(f"Study run time: {study['seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="+", type=Path, help="BEIR-format dataset folders")
    parser.add_argument("--output", type=Path, default=REPORTS_DIR)
    parser.add_argument("--reuse-sides", action="store_true", help="rankings of the last run (new fusions only)")
    args = parser.parse_args(argv)
    from core.db.checks import check_database
    from core.migrate import upgrade

    console = wide_console()  # tables whole in a pipe, as the CLI prints them
    check_database()
    upgrade()
    settings = get_settings()  # an entry point (`python -m`): the composition root of this run
    study = run_study(args.datasets, console, settings, args.reuse_sides)
    text = markdown(study)
    write_study(args.output, "fusion", study, text)
    console.print(text)


if __name__ == "__main__":
    main()
