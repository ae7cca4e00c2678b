"""Offline answers: the retrieved sentences most similar to the question, each cited [n].

Used when no LLM is configured (and, if LLM_FALLBACK_EXTRACTIVE is set, when the LLM fails).
Sentences are split with LlamaIndex's sentence tokenizer and ranked by cosine similarity to
the question with the same embedding model that ranked the chunks. A follow-up is ranked
against both the condensed question (previous question + follow-up: the subject) and the
follow-up alone (what is new), so "and for children?" after a question on progressive
lenses prefers the children's progressive price to the adult one and to children's single
vision. Sentences an earlier answer already gave are not dropped: the earlier answer may
well have contained the follow-up's answer among its top sentences.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.node_parser.text.utils import split_by_sentence_tokenizer
from llama_index.core.schema import NodeWithScore

MAX_SENTENCES = 3
MIN_SENTENCE_CHARS = 12
REDUNDANT = 0.9  # a sentence this similar to one already chosen adds nothing
_MARKUP = re.compile(r"^[#>*\-\s|]+|[\s|]+$")
_TABLE_RULE = re.compile(r"^[\s|:\-]+$")
_CITATION = re.compile(r"\[\d+\]")


def normalise(sentence: str) -> str:
    """Compare sentences ignoring case, punctuation, markup and [n] citations."""
    return " ".join(re.sub(r"[^\w£$€%]+", " ", _CITATION.sub("", sentence).lower()).split())


@dataclass(frozen=True)
class Sentence:
    text: str
    citation: int  # 1-based number of the passage it came from
    score: float


def _sentences(text: str) -> list[str]:
    out = []
    for piece in split_by_sentence_tokenizer()(text):
        for line in piece.split("\n"):  # table rows and list items are sentences of their own
            if _TABLE_RULE.match(line):
                continue
            line = _MARKUP.sub("", line.replace("**", "")).replace(" | ", ": ").strip()  # bold markers too
            line = " ".join(line.split())
            if len(line) >= MIN_SENTENCE_CHARS and not line.endswith("?"):  # FAQ questions are not answers
                out.append(line)
    return out


def best_sentences(questions: list[str], nodes: list[NodeWithScore], embed_model: BaseEmbedding,
                   limit: int = MAX_SENTENCES) -> list[Sentence]:
    """The `limit` sentences with the highest mean cosine similarity to `questions`."""
    candidates: list[tuple[str, int]] = []
    seen: set[str] = set()
    for number, node in enumerate(nodes, start=1):
        for sentence in _sentences(node.node.get_content()):
            key = normalise(sentence)
            if key and key not in seen:
                seen.add(key)
                candidates.append((sentence, number))
    if not candidates:
        return []
    queries = np.asarray([embed_model.get_query_embedding(q) for q in questions], dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True) + 1e-9
    vectors = np.asarray(embed_model.get_text_embedding_batch([c[0] for c in candidates]), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-9
    scores = (vectors @ queries.T).mean(axis=1)
    ranked: list[int] = []
    for i in sorted(range(len(candidates)), key=lambda i: float(scores[i]), reverse=True):
        # Greedy, MMR-style: skip near-duplicates (the same fact from the price list and the FAQ).
        if all(float(vectors[i] @ vectors[j]) < REDUNDANT for j in ranked):
            ranked.append(i)
        if len(ranked) == limit:
            break
    ranked.sort(key=lambda i: (candidates[i][1], i))  # read in passage order, like a person would
    return [Sentence(candidates[i][0], candidates[i][1], float(scores[i])) for i in ranked]


def extractive_answer(question: str, nodes: list[NodeWithScore], embed_model: BaseEmbedding,
                      follow_up: str | None = None) -> str:
    """`question`: the standalone question; `follow_up`: the user's own words when `question`
    was condensed from a conversation (they weigh as much as the whole question)."""
    questions = [question] if not follow_up or follow_up == question else [question, follow_up]
    sentences = best_sentences(questions, nodes, embed_model)
    if not sentences:
        return "The most relevant passages are listed in the sources below."
    lines = [f"- {s.text.rstrip()} [{s.citation}]" for s in sentences]
    return "From your practice's documents (extracted passages, no language model):\n" + "\n".join(lines)
