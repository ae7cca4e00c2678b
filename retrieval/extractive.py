"""Offline answers: whole sentences from the retrieved passages, best first, each cited [n].

Used when no LLM is configured (and, with LLM_FALLBACK_EXTRACTIVE, when the LLM fails).
Each passage is first read as a person would (`retrieval.passages`: wrapped lines joined,
table rows made statements, headings kept as context), so an answer line is always a whole
sentence, list item or table row, and its citation's passage contains it verbatim.

Ranking: cosine similarity of each statement (with its heading) to the question, plus a small
bonus for sharing the question's content words - the embedding model alone ranks "Single
vision lenses from £49" level with "Progressive lenses from £189" for a varifocal question.
A follow-up is ranked against both the condensed question (the subject) and the follow-up
alone (what is new). The same fact quoted by the price list, the FAQ and the lens guide
becomes one line carrying every citation.

Statement vectors come from `chunk_statements` (retrieval/statements.py): computed once per
chunk at ingestion, so an answer embeds only the question.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import NodeWithScore

from retrieval import statements
from retrieval.passages import Rendered, passage_of

MAX_LINES = 3
ABSTAIN_BELOW = 0.35  # best statement's cosine to the question: below it, nothing in the passages answers it
ABSTAIN_UNRELATED_BELOW = 0.45  # ... and below this when no answer line shares a word with the question
KEEP_WITHIN = 0.2  # further lines must score within this much of the best one
LEXICAL_WEIGHT = 0.15
DUPLICATE_OVERLAP = 0.8

_WORD = re.compile(r"[a-z0-9£%]+(?:['’][a-z]+)?")
_CITATION = re.compile(r"\[\d+\]")
_NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")
STEM = 5
STOPWORDS = frozenset([
    "a", "about", "after", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be", "because", "been",
    "before", "being", "but", "by", "can", "could", "did", "do", "does", "doing", "for", "from", "had", "has",
    "have", "having", "how", "i", "if", "in", "into", "is", "it", "its", "just", "me", "more", "most", "my", "no",
    "not", "of", "on", "once", "only", "or", "other", "our", "out", "over", "own", "same", "she", "should", "so",
    "some", "such", "than", "that", "the", "their", "them", "then", "there", "these", "they", "this", "those",
    "through", "to", "too", "under", "until", "up", "very", "was", "we", "were", "what", "when", "where", "which",
    "while", "who", "whom", "why", "will", "with", "would", "you", "your", "yours", "please", "tell", "much",
    "many", "cost", "costs", "price", "prices", "get", "give", "need", "know", "patient", "patients", "practice",
    "offer", "offers"
])


def words(text: str) -> list[str]:
    return _WORD.findall(_CITATION.sub(" ", text.lower()))


def content_words(text: str) -> set[str]:
    """Words that carry the question's subject, cut to their first five letters: a crude stem
    that makes "refer" meet "referral" and "child" meet "children" (Porter does neither)."""
    return {w[:STEM] for w in words(text) if w not in STOPWORDS}


def amounts(text: str) -> set[str]:
    return set(_NUMBER.findall(text))


def normalise(sentence: str) -> str:
    """Compare sentences ignoring case, punctuation, markup and [n] citations."""
    return " ".join(words(sentence))


def overlap(a: str, b: str) -> float:
    """Share of the shorter statement's content words found in the other one."""
    left, right = content_words(a), content_words(b)
    if not left or not right:
        return 0.0
    return len(left & right) / min(len(left), len(right))


def is_duplicate(a: str, b: str) -> bool:
    """Same statement: equal once normalised, or the same amounts and nearly the same words.
    Different amounts never merge ("£35" and "£95" children's prices are two facts), and
    meaning alone (cosine) does not either: a reader must be able to see that the passages
    behind one line's citations say the same thing."""
    if normalise(a) == normalise(b):
        return True
    if amounts(a) != amounts(b):
        return False
    return min(len(content_words(a)), len(content_words(b))) >= 3 and overlap(a, b) >= DUPLICATE_OVERLAP


def _completes(longer: str, shorter: str) -> bool:
    """`longer` is `shorter` continued: the same statement, whole where `shorter` was cut."""
    whole, start = normalise(longer), normalise(shorter)
    return len(whole) > len(start) and whole.startswith(start)


def passages(nodes: Sequence[NodeWithScore]) -> list[Rendered]:
    """Each retrieved chunk read into statements (see retrieval.passages)."""
    out = []
    for item in nodes:
        node = item.node
        out.append(passage_of(node.get_content(), node.metadata.get("section"),
                              starts_document=getattr(node, "start_char_idx", None) == 0))
    return out


@dataclass
class Line:
    text: str
    score: float
    cited: list[tuple[int, int]] = field(default_factory=list)  # (passage number 1.., unit index)

    def render(self) -> str:
        numbers = "".join(f"[{n}]" for n in dict.fromkeys(n for n, _ in self.cited))
        return f"{self.text} {numbers}"


@dataclass
class Answer:
    lines: list[Line]
    passages: list[Rendered]
    best_cosine: float
    shares_words: bool = True  # some answer line (or its heading) has a content word of the question

    @property
    def found_nothing(self) -> bool:
        """Too weak to show: measured on evals/datasets/optical-answers, where questions no document
        answers ("What is the staff Christmas party budget?") fall below these lines and answered
        ones do not."""
        return not self.lines or self.best_cosine < ABSTAIN_BELOW or (
            not self.shares_words and self.best_cosine < ABSTAIN_UNRELATED_BELOW)

    @property
    def text(self) -> str:
        return "\n".join(line.render() for line in self.lines)

    def quotes(self) -> list[list[dict[str, int]]]:
        """For passage n (index n-1): the spans of the statements the answer quotes from it."""
        out: list[list[dict[str, int]]] = [[] for _ in self.passages]
        for line in self.lines:
            for number, index in line.cited:
                start, end = self.passages[number - 1].spans[index]
                span = {"start": start, "end": end}
                if span not in out[number - 1]:
                    out[number - 1].append(span)
        return out


def answer(company_id: str, questions: list[str], nodes: Sequence[NodeWithScore], embed_model: BaseEmbedding,
           model_key: str, limit: int = MAX_LINES) -> Answer:
    """The best `limit` statements for `questions` (all weigh the same), near-duplicates merged.
    `model_key` (Settings.embedding_key) tells stored statement vectors of `embed_model` from stale ones."""
    rendered = passages(nodes)
    stored = statements.vectors_for(company_id, [n.node.node_id for n in nodes], rendered, embed_model, model_key)
    candidates: list[tuple[int, int]] = []
    for number, passage in enumerate(rendered, start=1):
        candidates += [(number, index) for index, unit in enumerate(passage.units) if unit.answerable]
    if not candidates:
        return Answer([], rendered, 0.0)
    unit = lambda c: rendered[c[0] - 1].units[c[1]]  # noqa: E731 - local shorthand
    texts = [unit(c).embed_text for c in candidates]
    vectors = np.concatenate([m for m in stored if len(m)], axis=0)  # the candidates' order
    queries = np.asarray([embed_model.get_query_embedding(q) for q in questions], dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True) + 1e-9
    cosine = (vectors @ queries.T).mean(axis=1)
    asked = set().union(*(content_words(q) for q in questions))
    lexical = np.asarray([len(asked & content_words(t)) / len(asked) if asked else 0.0 for t in texts],
                         dtype=np.float32)
    scores = cosine + LEXICAL_WEIGHT * lexical
    order = sorted(range(len(candidates)), key=lambda i: float(scores[i]), reverse=True)
    best = float(scores[order[0]])
    lines: list[Line] = []
    for i in order:
        text = unit(candidates[i]).text
        twin = next((k for k, line in enumerate(lines) if is_duplicate(text, line.text)), None)
        if twin is not None:  # the same fact in another passage: cite it on the existing line
            line = lines[twin]
            if _completes(text, line.text):
                # The line was this statement's beginning, cut where its chunk ended (the next chunk
                # repeats it whole, in its overlap): answer with the whole statement, citing the
                # passages that hold all of it.
                line.text = text
                line.cited = [candidates[i], *(c for c in line.cited if normalise(unit(c).text) == normalise(text))]
            elif candidates[i][0] not in {n for n, _ in line.cited}:
                line.cited.append(candidates[i])
            continue
        if len(lines) == limit or float(scores[i]) < best - KEEP_WITHIN:
            continue
        lines.append(Line(text, float(scores[i]), [candidates[i]]))
    shares = any(asked & content_words(f"{unit(line.cited[0]).context} {line.text}") for line in lines)
    return Answer(lines, rendered, float(cosine.max()), shares)


def llm_quotes(answer_text: str, rendered: list[Rendered]) -> list[list[dict[str, int]]]:
    """Quotes for an LLM answer: for each answer sentence citing [n], the statement of passage n
    that shares most of its words (the LLM paraphrases, so exact matching would find nothing)."""
    from retrieval.passages import split_sentences

    out: list[list[dict[str, int]]] = [[] for _ in rendered]
    for line in answer_text.splitlines():
        for sentence in split_sentences(line) if line.strip() else []:
            for number in {int(n) for n in re.findall(r"\[(\d+)\]", sentence)}:
                if not 1 <= number <= len(rendered):
                    continue
                passage = rendered[number - 1]
                scored = [(overlap(sentence, u.text), i) for i, u in enumerate(passage.units) if u.answerable]
                if not scored:
                    continue
                value, index = max(scored)
                start, end = passage.spans[index]
                if value >= 0.3 and {"start": start, "end": end} not in out[number - 1]:
                    out[number - 1].append({"start": start, "end": end})
    return out
