"""Offline answers: the retrieved sentences most similar to the question, each cited [n].

Used when no LLM is configured (and, if LLM_FALLBACK_EXTRACTIVE is set, when the LLM fails).
Sentences are split with LlamaIndex's sentence tokenizer and ranked by cosine similarity to
the question with the same embedding model that ranked the chunks.
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


def previous_sentences(answer: str) -> set[str]:
    """The sentences an earlier extractive answer already gave (not worth repeating in a follow-up)."""
    return {normalise(line) for line in answer.splitlines() if line.strip()}


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
            line = _MARKUP.sub("", line).replace(" | ", ": ").strip()
            line = " ".join(line.split())
            if len(line) >= MIN_SENTENCE_CHARS and not line.endswith("?"):  # FAQ questions are not answers
                out.append(line)
    return out


def best_sentences(question: str, nodes: list[NodeWithScore], embed_model: BaseEmbedding,
                   limit: int = MAX_SENTENCES, exclude: set[str] | None = None) -> list[Sentence]:
    candidates: list[tuple[str, int]] = []
    seen: set[str] = set(exclude or ())
    for number, node in enumerate(nodes, start=1):
        for sentence in _sentences(node.node.get_content()):
            key = normalise(sentence)
            if key and key not in seen:
                seen.add(key)
                candidates.append((sentence, number))
    if not candidates:
        return []
    query = np.asarray(embed_model.get_query_embedding(question), dtype=np.float32)
    vectors = np.asarray(embed_model.get_text_embedding_batch([c[0] for c in candidates]), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-9
    scores = vectors @ (query / (np.linalg.norm(query) + 1e-9))
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
                      already_said: str | None = None) -> str:
    """`already_said`: the previous answer of the conversation, whose sentences are not repeated."""
    sentences = best_sentences(question, nodes, embed_model,
                               exclude=previous_sentences(already_said) if already_said else None)
    if not sentences:
        return "The most relevant passages are listed in the sources below."
    lines = [f"- {s.text.rstrip()} [{s.citation}]" for s in sentences]
    return "From your practice's documents (extracted passages, no language model):\n" + "\n".join(lines)
