"""Answer evaluation: questions staff ask, scored on the answers `POST /api/chat` gives.

The dataset (`evals/datasets/optical-answers/questions.jsonl`) holds questions over the two
sample practices, each with the key facts a correct answer must contain and the document
holding them, plus two-turn follow-ups, questions no document answers and off-topic ones.
Every question goes through the real HTTP route (FastAPI app, token, chat service,
retriever, answerer), so the offline answerer and any configured LLM are scored the same way:

- fact recall: share of a question's facts found in the answer (case and spacing ignored);
- citation precision: share of (answer sentence, [n]) pairs whose passage n contains the
  sentence - verbatim, or, for a line merged from several sources or an LLM's own wording, a
  quoted statement of that passage saying the same thing (same amounts, most of its words);
- fragment rate (offline answers): answer lines that are not a whole sentence, list item or
  table row of the practice's documents (read from the files, not from the chunks);
- duplicate rate: answer lines repeating an earlier line of the same answer;
- abstention: unanswerable and off-topic questions must get "nothing found", answerable ones not;
- follow-ups: a dependent follow-up must be condensed with the conversation, a standalone one
  retrieved on its own words;
- latency p50/p95 of the scored turn, measured around the HTTP call.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.settings import Settings
from evals.metrics import percentile
from evals.report import report_paths
from retrieval.extractive import is_duplicate, normalise, overlap
from retrieval.passages import units

if TYPE_CHECKING:
    from indexing.readers import ExtractionLimits

DATASET_DIR = Path(__file__).resolve().parent / "datasets" / "optical-answers"
SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"
REPORTS_DIR = Path(__file__).resolve().parent / "reports"
LLM_QUOTE_OVERLAP = 0.5  # an LLM sentence is supported when a quoted statement shares half its words
_CITATIONS = re.compile(r"\s*\[(\d+)\]")
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")
TARGETS = {"fact_recall": 0.85, "citation_precision": 0.98, "fragment_rate": 0.0, "duplicate_rate": 0.0,
           "off_topic_abstention": 0.9}

Post = Callable[[str, dict[str, Any], dict[str, str]], tuple[int, dict[str, Any]]]


@dataclass(frozen=True)
class Question:
    id: str
    company: str
    type: str
    question: str
    facts: list[Any]
    document: str | None = None
    history: list[str] = field(default_factory=list)
    abstain: bool = False
    follow_up: str | None = None  # "dependent" | "standalone" for two-turn cases


def load_questions(dataset: Path = DATASET_DIR) -> list[Question]:
    rows = [json.loads(line) for line in (dataset / "questions.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    return [Question(**row) for row in rows]


def _plain(text: str) -> str:
    """Case, spacing, dashes and apostrophes ignored, so "4-6 hours" finds "4–6 hours"."""
    text = text.lower().replace("–", "-").replace("—", "-").replace("’", "'").replace("**", "")
    return " ".join(text.split())


def has_fact(answer: str, fact: str | list[str]) -> bool:
    spellings = fact if isinstance(fact, list) else [fact]
    return any(_plain(spelling) in _plain(answer) for spelling in spellings)


def answer_lines(answer: str) -> list[tuple[str, list[int]]]:
    """(sentence without bullet or [n] markers, cited numbers) for each non-empty answer line."""
    out = []
    for line in answer.splitlines():
        if not line.strip():
            continue
        cited = [int(n) for n in re.findall(r"\[(\d+)\]", line)]
        out.append((_BULLET.sub("", _CITATIONS.sub("", line)).strip(), cited))
    return out


def citation_checks(answer: str, sources: list[dict[str, Any]], *,
                    verbatim: bool) -> tuple[list[bool], list[bool]]:
    """Per (answer line, citation [n]): does passage n contain the line, and does one of source
    n's `quotes` mark it? `verbatim` (offline answers): the passage must hold the sentence
    itself, except on a line merged from several sources, where each passage's quoted
    statement must say the same thing (is_duplicate). LLM answers paraphrase: a quoted
    statement sharing most of the sentence's words supports it."""
    contains, quoted_right = [], []
    for sentence, cited in answer_lines(answer):
        for number in cited:
            if not 1 <= number <= len(sources):
                contains.append(False)
                quoted_right.append(False)
                continue
            passage = sources[number - 1].get("passage") or ""
            quoted = [passage[q["start"]:q["end"]] for q in sources[number - 1].get("quotes") or []]
            if verbatim:
                exact = _plain(sentence) in _plain(passage)
                same = any(_plain(q) == _plain(sentence) or is_duplicate(sentence, q) for q in quoted)
                contains.append(exact or (len(cited) > 1 and same))
                quoted_right.append(same)
            else:
                supported = any(overlap(sentence, q) >= LLM_QUOTE_OVERLAP for q in quoted)
                contains.append(supported or _plain(sentence) in _plain(passage))
                quoted_right.append(supported)
    return contains, quoted_right


@lru_cache(maxsize=8)
def document_statements(company: str, limits: ExtractionLimits, samples: Path = SAMPLES_DIR) -> frozenset[str]:
    """Every whole statement (sentence, list item, table row) of a practice's files, normalised.
    Takes the limits rather than the settings: they are hashable, so the cache can key on them."""
    from indexing.readers import read_parts

    found: set[str] = set()
    for path in sorted((samples / company).iterdir()):
        for part in read_parts(path.name, path.read_bytes(), limits):
            found.update(normalise(u.text) for u in units(part.text, part.metadata.get("section"),
                                                          starts_document=True) if u.answerable)
    return frozenset(found)


def duplicates(answer: str) -> int:
    seen: list[str] = []
    count = 0
    for sentence, _ in answer_lines(answer):
        if any(is_duplicate(sentence, earlier) for earlier in seen):
            count += 1
        seen.append(sentence)
    return count


@dataclass
class Scored:
    id: str
    company: str
    type: str
    question: str
    answer: str
    mode: str
    abstained: bool
    latency_ms: float
    retrieval_query: str
    facts_found: int = 0
    facts: int = 0
    citations: int = 0
    citations_correct: int = 0
    quotes_right: int = 0  # citations whose source's `quotes` mark the cited sentence
    lines: int = 0
    fragments: list[str] = field(default_factory=list)
    duplicates: int = 0
    expected_abstain: bool = False
    follow_up: str | None = None
    follow_up_ok: bool | None = None
    error: str | None = None


def score_one(question: Question, body: dict[str, Any], latency_ms: float, settings: Settings,
              samples: Path = SAMPLES_DIR) -> Scored:
    answer = body.get("answer") or ""
    metadata = body.get("metadata") or {}
    mode = str(metadata.get("mode") or "")
    abstained = body.get("isRelevant") is False or mode == "none"
    scored = Scored(id=question.id, company=question.company, type=question.type, question=question.question,
                    answer=answer, mode=mode, abstained=abstained, latency_ms=latency_ms,
                    retrieval_query=str(metadata.get("retrievalQuery") or ""), expected_abstain=question.abstain,
                    follow_up=question.follow_up)
    if question.follow_up:
        condensed = scored.retrieval_query.strip() != question.question.strip()
        scored.follow_up_ok = condensed if question.follow_up == "dependent" else not condensed
    if abstained:
        scored.facts = len(question.facts)
        return scored
    scored.facts = len(question.facts)
    scored.facts_found = sum(has_fact(answer, fact) for fact in question.facts)
    sources = body.get("sources") or []
    offline = mode.startswith("extractive")
    verdicts, quotes = citation_checks(answer, sources, verbatim=offline)
    scored.citations, scored.citations_correct, scored.quotes_right = len(verdicts), sum(verdicts), sum(quotes)
    lines = answer_lines(answer)
    scored.lines = len(lines)
    scored.duplicates = duplicates(answer)
    if offline:
        from indexing.readers import ExtractionLimits

        whole = document_statements(question.company, ExtractionLimits.of(settings), samples)
        scored.fragments = [sentence for sentence, _ in lines if normalise(sentence) not in whole]
    return scored


@dataclass
class AnswerReport:
    dataset: str
    label: str
    mode: str
    questions: int
    metrics: dict[str, float | None]
    by_type: dict[str, dict[str, float]]
    targets: dict[str, float]
    per_question: list[dict[str, Any]]
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    notes: list[str] = field(default_factory=list)


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def summarise(rows: list[Scored]) -> dict[str, float | None]:
    answerable = [r for r in rows if not r.expected_abstain]
    off_topic = [r for r in rows if r.type == "off-topic" or (r.type == "follow-up" and r.expected_abstain)]
    unanswerable = [r for r in rows if r.type == "unanswerable"]
    follow_ups = [r for r in rows if r.follow_up_ok is not None]
    offline = [r for r in answerable if r.mode.startswith("extractive")]
    latencies = [r.latency_ms for r in rows if r.error is None]
    answered = [r for r in answerable if not r.abstained]
    return {
        "fact_recall": _ratio(sum(r.facts_found for r in answerable), sum(r.facts for r in answerable)),
        "answers_with_all_facts": _ratio(sum(r.facts_found == r.facts for r in answerable), len(answerable)),
        "citation_precision": _ratio(sum(r.citations_correct for r in answered), sum(r.citations for r in answered)),
        "quote_accuracy": _ratio(sum(r.quotes_right for r in answered), sum(r.citations for r in answered)),
        "fragment_rate": _ratio(sum(len(r.fragments) for r in offline), sum(r.lines for r in offline)),
        "duplicate_rate": _ratio(sum(r.duplicates for r in answered), sum(r.lines for r in answered)),
        "off_topic_abstention": _ratio(sum(r.abstained for r in off_topic), len(off_topic)),
        "unanswerable_abstention": _ratio(sum(r.abstained for r in unanswerable), len(unanswerable)),
        "false_abstention": _ratio(sum(r.abstained for r in answerable), len(answerable)),
        "follow_up_handling": _ratio(sum(bool(r.follow_up_ok) for r in follow_ups), len(follow_ups)),
        "latency_ms_p50": percentile(latencies, 50) if latencies else None,
        "latency_ms_p95": percentile(latencies, 95) if latencies else None,
        "errors": float(sum(r.error is not None for r in rows)),
    }


def run_answers(questions: Iterable[Question], post: Post, headers: dict[str, dict[str, str]], *,
                settings: Settings, samples: Path = SAMPLES_DIR, label: str = "offline",
                dataset: str = "optical-answers",
                progress: Callable[[Scored], None] | None = None) -> AnswerReport:
    """Ask every question through `post(path, json, headers) -> (status, body)` as the company's
    user in `headers[company]`; earlier turns of a two-turn case are asked first in the same
    conversation and not scored."""
    rows: list[Scored] = []
    for question in questions:
        auth = headers[question.company]
        conversation: str | None = None
        error = None
        for earlier in question.history:
            status, body = post("/api/chat", {"message": earlier, "conversationId": conversation}, auth)
            if status != 200:
                error = f"history turn: HTTP {status} {body}"
                break
            conversation = body.get("conversationId")
        started = time.perf_counter()
        status, body = (0, {}) if error else post("/api/chat", {"message": question.question,
                                                               "conversationId": conversation}, auth)
        latency = (time.perf_counter() - started) * 1000
        if not error and status != 200:
            error = f"HTTP {status}: {body}"
        scored = score_one(question, body if not error else {}, latency, settings, samples)
        scored.error = error
        rows.append(scored)
        if progress:
            progress(scored)
    modes = sorted({r.mode for r in rows if r.mode and r.mode != "none"})
    by_type: dict[str, dict[str, float]] = {}
    for kind in sorted({r.type for r in rows}):
        subset = [r for r in rows if r.type == kind]
        values = summarise(subset)
        by_type[kind] = {"questions": float(len(subset)),
                         **{k: v for k, v in values.items() if v is not None and k != "errors"}}
    return AnswerReport(dataset=dataset, label=label, mode=",".join(modes) or "none", questions=len(rows),
                        metrics=summarise(rows), by_type=by_type, targets=dict(TARGETS),
                        per_question=[asdict(r) for r in rows])


# -- reports -------------------------------------------------------------------------------------
_NAMES = {"fact_recall": "fact recall", "answers_with_all_facts": "answers with every fact",
          "citation_precision": "citation precision",
          "quote_accuracy": "quotes marking the cited sentence", "fragment_rate": "fragment rate",
          "duplicate_rate": "duplicate rate", "off_topic_abstention": "off-topic abstention",
          "unanswerable_abstention": "unanswerable abstention", "false_abstention": "false abstention",
          "follow_up_handling": "follow-ups retrieved right", "latency_ms_p50": "latency p50 (ms)",
          "latency_ms_p95": "latency p95 (ms)", "errors": "errors"}


def _fmt(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if key.startswith("latency") or key == "errors" else f"{value:.3f}"


def _verdict(key: str, value: float | None, targets: dict[str, float]) -> str:
    if key not in targets or value is None:
        return ""
    target = targets[key]
    met = value <= target if key in ("fragment_rate", "duplicate_rate") else value >= target
    return ("met" if met else "MISSED") + f" (target {'≤' if key.endswith('rate') else '≥'} {target:g})"


def markdown(report: AnswerReport) -> str:
    lines = [f"# Answer evaluation: {report.dataset} ({report.label})", "",
             f"{report.created_at} · answer mode `{report.mode}` · {report.questions} questions", "",
             "| metric | value | target |", "|---|---:|---|"]
    for key, value in report.metrics.items():
        lines.append(f"| {_NAMES.get(key, key)} | {_fmt(key, value)} | {_verdict(key, value, report.targets)} |")
    lines += ["", "## By question type", "",
              "| type | questions | fact recall | citation precision | fragments | abstention | p50 ms |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for kind, values in report.by_type.items():
        abstention = values.get("off_topic_abstention", values.get("unanswerable_abstention"))
        lines.append(f"| {kind} | {values['questions']:.0f} | {_fmt('x', values.get('fact_recall'))} | "
                     f"{_fmt('x', values.get('citation_precision'))} | {_fmt('x', values.get('fragment_rate'))} | "
                     f"{_fmt('x', abstention)} | {_fmt('latency', values.get('latency_ms_p50'))} |")
    misses = [q for q in report.per_question if q["facts_found"] < q["facts"] or q["fragments"] or q["duplicates"]
              or q["citations_correct"] < q["citations"] or q["abstained"] != q["expected_abstain"]
              or q["follow_up_ok"] is False or q["error"]]
    if misses:
        lines += ["", "## Questions that missed something", ""]
        for q in misses:
            answer = q["answer"].replace("\n", " / ")
            lines.append(f"- **{q['id']}** ({q['company']}, {q['type']}) {q['question']} → "
                         f"{'abstained' if q['abstained'] else answer[:300]}"
                         + (f" · facts {q['facts_found']}/{q['facts']}" if q["facts"] else "")
                         + (f" · fragments: {q['fragments']}" if q["fragments"] else "")
                         + (f" · error: {q['error']}" if q["error"] else ""))
    if report.notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in report.notes)]
    return "\n".join(lines) + "\n"


def chart(report: AnswerReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["fact_recall", "citation_precision", "off_topic_abstention", "unanswerable_abstention",
            "follow_up_handling"]
    values = [report.metrics.get(k) or 0.0 for k in keys]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 1]})
    left.bar([_NAMES[k] for k in keys], values, color="#3b7dd8")
    for key, x in zip(keys, range(len(keys)), strict=True):
        if key in report.targets:
            left.hlines(report.targets[key], x - 0.4, x + 0.4, colors="#c0392b", linestyles="dashed")
    left.set_ylim(0, 1.05)
    left.set_title("quality (dashed: target)")
    left.tick_params(axis="x", labelrotation=20)
    right.bar(["p50", "p95"], [report.metrics.get("latency_ms_p50") or 0, report.metrics.get("latency_ms_p95") or 0],
              color="#d8833b")
    right.set_title("latency per answer, ms")
    fig.suptitle(f"{report.dataset} · {report.label} ({report.mode})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: AnswerReport, directory: Path = REPORTS_DIR, name: str | None = None) -> dict[str, Path]:
    paths = report_paths(directory, name or f"{report.dataset}-{report.label}")
    paths["json"].write_text(json.dumps(asdict(report), indent=2, ensure_ascii=False), encoding="utf-8")
    paths["markdown"].write_text(markdown(report), encoding="utf-8")
    chart(report, paths["png"])
    return paths


# -- running against the service -----------------------------------------------------------------
def prepare_practices(companies: Iterable[str], settings: Settings, samples: Path = SAMPLES_DIR,
                      slug_prefix: str = "eval-answers") -> dict[str, dict[str, str]]:
    """An evaluation company per sample practice (its folder ingested; unchanged files skipped)
    with a staff user; returns each practice's Authorization header."""
    from sqlalchemy import select

    from auth.models import Company
    from auth.permissions import permissions_for
    from auth.tokens import issue_access_token
    from auth.users import create_company, create_user, find_user_in_company
    from core.db.engines import session_scope
    from core.db.owner import admin_session_scope
    from core.db.tenant_scope import tenant
    from core.embeddings import get_embed_model
    from indexing.folder import ingest_folder
    from retrieval.statements import precompute

    headers: dict[str, dict[str, str]] = {}
    for name in companies:
        slug = f"{slug_prefix}-{name}"[:63]
        with admin_session_scope() as session:
            company = session.scalar(select(Company).where(Company.slug == slug))
            if company is None:
                company = create_company(session, slug, f"Answer evaluation ({name})")
            company_id = company.id
        email = f"eval-staff@{slug}.example"
        with tenant(company_id), session_scope() as session:
            user = find_user_in_company(session, company_id, email)
            if user is None:
                user = create_user(session, company_id, email, "answer-evaluation-only", "staff")
            user_id = user.id
        with tenant(company_id):
            ingest_folder(samples / name, company_id=company_id, settings=settings, sync=True)
        precompute(company_id, get_embed_model(), settings.embedding_key)
        token, _ = issue_access_token(user_id=user_id, company_id=company_id, email=email, role="staff",
                                      permissions=permissions_for("staff"), settings=settings)
        headers[name] = {"Authorization": f"Bearer {token}"}
    return headers


def client_post(client: Any) -> Post:
    """`post` over a FastAPI TestClient (the app in this process, through its HTTP stack)."""

    def post(path: str, payload: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        response = client.post(path, json={k: v for k, v in payload.items() if v is not None}, headers=headers)
        try:
            body = response.json()
        except ValueError:
            body = {"raw": response.text[:200]}
        return response.status_code, body

    return post
