"""Refit the relevance-score calibration (retrieval.calibration) on a BEIR evaluation set.

Each question of the set (answerable and unanswerable) is asked through the service's own
vector retriever inside its company; the top CALIBRATION_DEPTH passages become
(cosine, relevant) pairs, where a passage is relevant when the document it comes from is
judged relevant to the question (qrels grade >= 1, the BEIR convention). Top passages only:
the score answers "how likely is a passage the search returned relevant", not "how likely is
a random passage". The curve is then fitted (retrieval.calibration.fit_calibration), written
next to the retrieval package, and drawn as a PNG for the docs.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from core.settings import Settings
from evals.beir import load_dataset
from evals.report import write_study
from evals.runner import cached_embedder, index_corpus
from retrieval.calibration import (
    CALIBRATION_DIR,
    Calibration,
    calibration_path,
    fit_calibration,
)

CALIBRATION_DEPTH = 10  # passages per question: twice the search's default limit


def collect_pairs(dataset_dir: Path, cache_dir: Path, console: Console, settings: Settings,
                  depth: int = CALIBRATION_DEPTH) -> tuple[list[float], list[bool], list[str], str]:
    """(cosines, relevant, question ids, dataset name) from the top passages of every question."""
    from retrieval.retriever import TenantRetriever

    dataset = load_dataset(dataset_dir)
    companies = index_corpus(dataset, cached_embedder(cache_dir, settings), console, settings)
    retrievers = {company: TenantRetriever(company_id, mode="vector", top_k=depth, threshold=-1.0,
                                           order="similarity", settings=settings)
                  for company, company_id in companies.items()}
    cosines: list[float] = []
    relevant: list[bool] = []
    groups: list[str] = []
    for query in dataset.queries:
        judged = {doc_id for doc_id, grade in dataset.qrels.get(query.id, {}).items() if grade >= 1}
        for hit in retrievers[query.company].retrieve(query.text):
            cosines.append(float(hit.score or 0.0))
            relevant.append(hit.node.metadata.get("filename") in judged)
            groups.append(query.id)
    return cosines, relevant, groups, dataset.name


SEARCH_LIMIT = 5  # passages a search returns by default: what a threshold is judged on
SCORE_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def threshold_effects(calibration: Calibration, cosines: list[float], relevant: list[bool], groups: list[str],
                      answerable: set[str], default_floor: float) -> list[dict[str, object]]:
    """What each threshold does to the first SEARCH_LIMIT passages of every question: how many
    answerable questions still get a passage (a relevant one), how many unanswerable ones get
    any, and how many of the returned passages are relevant. In-sample: the curve was fitted
    on the same pairs, so this describes the curve rather than estimating held-out behaviour."""
    by_question: dict[str, list[tuple[float, bool]]] = {}
    for cosine, hit, question in zip(cosines, relevant, groups, strict=True):
        by_question.setdefault(question, []).append((cosine, hit))
    floors = [("0.7 as a raw cosine (the plan's number)", 0.7)]
    floors += [(f"{t} on `score`", calibration.min_similarity(t)) for t in SCORE_THRESHOLDS]
    floors.append(("omitted: `SEARCH_THRESHOLD` cosine", default_floor))
    rows = []
    for label, floor in floors:
        kept = {q: [hit for cosine, hit in sorted(pairs, reverse=True)[:SEARCH_LIMIT] if cosine >= floor]
                for q, pairs in by_question.items()}
        returned = [hit for q in kept for hit in kept[q]]
        rows.append({
            "threshold": label, "cosine_floor": round(floor, 3),
            "answerable": len(answerable),
            "answerable_with_result": sum(1 for q in answerable if kept.get(q)),
            "answerable_with_relevant": sum(1 for q in answerable if any(kept.get(q, []))),
            "unanswerable": len(by_question) - len(answerable),
            "unanswerable_with_result": sum(1 for q in kept if q not in answerable and kept[q]),
            "returned": len(returned),
            "returned_relevant_share": round(sum(returned) / len(returned), 2) if returned else None,
        })
    return rows


def effects_markdown(calibration: Calibration, rows: list[dict[str, object]]) -> str:
    points = [0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7]
    lines = [f"# Score calibration: {calibration.model} ({calibration.method})", "",
             "| cosine (`similarity`) | " + " | ".join(str(p) for p in points) + " |",
             "|---|" + "---|" * len(points),
             "| calibrated `score` | " + " | ".join(f"{calibration.score(p):.2f}" for p in points) + " |", "",
             f"What a threshold does (first {SEARCH_LIMIT} passages of each question, vector search; in-sample):", "",
             "| threshold | cosine floor | answerable questions with ≥ 1 result | … with ≥ 1 relevant result | "
             "unanswerable questions with a result | returned passages that are relevant |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        n = row["answerable"]
        share = "-" if row["returned_relevant_share"] is None else f"{row['returned_relevant_share']:.2f}"
        lines.append(f"| {row['threshold']} | {row['cosine_floor']:.3f} | {row['answerable_with_result']}/{n} "
                     f"({row['answerable_with_result'] / n:.0%}) | {row['answerable_with_relevant']}/{n} "
                     f"({row['answerable_with_relevant'] / n:.0%}) | "
                     f"{row['unanswerable_with_result']}/{row['unanswerable']} | {share} of {row['returned']} |")
    info = calibration.fitted_on
    brier = ", ".join(f"{method} {value:.5f}" for method, value in dict(info.get("cv_brier", {})).items())
    lines += ["", f"Fitted on {info.get('pairs'):,} passages of {info.get('questions')} questions "
                  f"({info.get('dataset')}); cross-validated Brier score (5 folds, split by question): {brier}; "
                  f"the lower one is kept.", ""]
    return "\n".join(lines)


def refit(dataset_dir: Path, cache_dir: Path, console: Console, *, settings: Settings,
          directory: Path = CALIBRATION_DIR, plot: Path | None = None,
          report_dir: Path | None = None) -> tuple[Calibration, Path]:
    """Fit on `dataset_dir` for the configured model, write the calibration file (and a plot,
    and the threshold-effect report `score-calibration.{json,md}` in `report_dir`)."""
    cosines, relevant, groups, name = collect_pairs(dataset_dir, cache_dir, console, settings)
    calibration = fit_calibration(settings.embedding_key, cosines, relevant, groups, {
        "dataset": name, "questions": len(set(groups)), "depth": CALIBRATION_DEPTH,
        "relevance": "passage's document judged relevant (qrels grade >= 1)"})
    path = calibration_path(calibration.model, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(calibration.to_json())
    if plot is not None:
        draw(calibration, cosines, relevant, plot)
    if report_dir is not None:
        dataset = load_dataset(dataset_dir)
        answerable = {q.id for q in dataset.queries
                      if any(grade >= 1 for grade in dataset.qrels.get(q.id, {}).values())}
        rows = threshold_effects(calibration, cosines, relevant, groups, answerable, settings.search_threshold)
        write_study(report_dir, "score-calibration", {"model": calibration.model, "method": calibration.method,
                                                      "fitted_on": calibration.fitted_on, "thresholds": rows},
                    effects_markdown(calibration, rows))
    return calibration, path


def reliability(cosines: list[float], relevant: list[bool], bins: int = 10) -> list[tuple[float, float, int]]:
    """(mean cosine, observed relevant share, count) per equal-count bin of the pairs."""
    import numpy as np

    order = np.argsort(cosines)
    x, y = np.asarray(cosines)[order], np.asarray(relevant, dtype=float)[order]
    return [(float(cx.mean()), float(cy.mean()), len(cx))
            for cx, cy in zip(np.array_split(x, bins), np.array_split(y, bins), strict=True) if len(cx)]


def draw(calibration: Calibration, cosines: list[float], relevant: list[bool], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    ax.plot(calibration.cosines, calibration.probabilities, color="#1f5fa8",
            label=f"calibrated score ({calibration.method})")
    observed = reliability(cosines, relevant)
    ax.scatter([b[0] for b in observed], [b[1] for b in observed], color="#d2691e", zorder=3,
               label="observed relevant share (10 equal-count bins)")
    ax.axvline(0.7, color="#999999", linestyle="--", linewidth=1)
    ax.text(0.705, 0.03, "plan's 0.7 as a cosine", color="#666666", fontsize=8)
    ax.axhline(0.7, color="#999999", linestyle=":", linewidth=1)
    ax.text(0.02, 0.715, "threshold 0.7 on the score", color="#666666", fontsize=8)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("cosine similarity (raw `similarity`)")
    ax.set_ylabel("P(passage relevant)  (`score`)")
    ax.set_title(f"{calibration.model}: score calibration on {calibration.fitted_on.get('dataset', '?')}")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
