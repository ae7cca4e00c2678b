"""The synthetic corpus of the search benchmark: real texts, their embeddings, and copies of
them spread over companies with Zipf-skewed sizes.

The texts come from the repository (sample knowledge base and optical evaluation set), so a
checkout alone can run the benchmark. SciFact, an outside dataset, is used only when it is
named (`--scifact`); it has more and more varied text, which the published figures use.
Each text source gets its own cache files and database, so one never passes for the other.
"""

from __future__ import annotations

import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.terminal import progress

REPO_ROOT = Path(__file__).resolve().parents[2]
OPTICAL_DIR = REPO_ROOT / "evals" / "datasets" / "optical"
SAMPLES_DIR = REPO_ROOT / "samples"
SCIFACT_FILES = ("corpus.jsonl", "queries.jsonl")
STORE_VERSION = "v1"
NOISE_STD = 0.02  # per dimension: ||noise|| ≈ 0.39, cosine to the source vector ≈ 0.93
EMBEDDING_CHUNK_WORDS = 200  # the chunk size ingestion produces for this model
EMBED_SLICE = 256  # base texts per embedding call: progress to report, and the same batching underneath


class DatasetMissing(ValueError):
    """A dataset named on the command line lacks files; the message says which, in one line."""


def check_scifact(folder: Path | None) -> None:
    """Refuse a SciFact folder without its files before any work starts."""
    if folder is None:
        return
    missing = [name for name in SCIFACT_FILES if not (folder / name).is_file()]
    if missing:
        raise DatasetMissing(f"--scifact {folder}: missing {', '.join(missing)} (a BEIR SciFact folder has "
                             f"{', '.join(SCIFACT_FILES)}); leave the option out to use the repository's texts")


def corpus_tag(scifact: Path | None) -> str:
    """Cache and database suffix of a text source: none for SciFact (the published store), `repo` otherwise."""
    return "" if scifact is not None else "repo"


def _windows(text: str, size: int = 80) -> list[str]:
    words = text.split()
    return [" ".join(words[i:i + size]) for i in range(0, max(len(words) - size // 2, 1), size)]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _repository_documents() -> list[str]:
    """Every paragraph block of the sample knowledge base with at least 15 words."""
    texts: list[str] = []
    for path in sorted(SAMPLES_DIR.rglob("*")):
        if path.suffix in (".md", ".txt"):
            texts.extend(block for block in re.split(r"\n\s*\n", path.read_text(errors="ignore"))
                         if len(block.split()) >= 15)
    return texts


def base_texts(limit: int, scifact: Path | None, seed: int = 7) -> list[str]:
    """Real text in ~80-word windows: the sample knowledge base, then SciFact abstracts or,
    without SciFact, the optical evaluation documents."""
    texts = [window for block in _repository_documents() for window in _windows(block)]
    extra: list[str] = []
    if scifact is not None:
        for doc in _jsonl(scifact / "corpus.jsonl"):
            extra.extend(_windows(f"{doc.get('title', '')}. {doc.get('text', '')}"))
    else:
        for doc in _jsonl(OPTICAL_DIR / "corpus.jsonl"):
            extra.extend(_windows(f"{doc.get('title', '')}. {doc.get('text', '')}"))
    random.Random(seed).shuffle(extra)
    return (texts + extra)[:limit]


def bench_queries(scifact: Path | None, seed: int = 11) -> list[str]:
    """Held-out real questions: the optical evaluation set's questions, and SciFact claims when named."""
    paths = [OPTICAL_DIR / "queries.jsonl", *([scifact / "queries.jsonl"] if scifact is not None else [])]
    queries = [row["text"] for path in paths for row in _jsonl(path)]
    random.Random(seed).shuffle(queries)
    return queries


def embedding_texts(count: int, scifact: Path | None) -> list[str]:
    """Chunks of EMBEDDING_CHUNK_WORDS words for the embedding-throughput rounds: SciFact
    abstracts when named, else windows over the repository's documents."""
    if scifact is not None:
        sources = [f"{doc.get('title', '')} {doc.get('text', '')}" for doc in _jsonl(scifact / "corpus.jsonl")]
    else:
        words = " ".join([*_repository_documents(), *(f"{doc.get('title', '')} {doc.get('text', '')}"
                                                      for doc in _jsonl(OPTICAL_DIR / "corpus.jsonl"))]).split()
        sources = [" ".join(words[i:i + EMBEDDING_CHUNK_WORDS]) for i in range(0, len(words), EMBEDDING_CHUNK_WORDS)]
    texts = []
    for source in sources:
        words = source.split()
        if len(words) >= EMBEDDING_CHUNK_WORDS:
            texts.append(" ".join(words[:EMBEDDING_CHUNK_WORDS]))
        if len(texts) >= count:
            break
    return texts


def zipf_sizes(total: int, companies: int, exponent: float = 1.07, floor: int = 30) -> list[int]:
    """Company sizes ∝ 1/rank^s, at least `floor`, summing exactly to `total` (largest first)."""
    weights = np.array([1.0 / (rank ** exponent) for rank in range(1, companies + 1)])
    sizes = np.maximum(floor, np.floor(weights / weights.sum() * total)).astype(int)
    sizes[0] += total - int(sizes.sum())
    return sorted((int(s) for s in sizes), reverse=True)


@dataclass
class Store:
    texts: list[str]  # base texts
    base_index: np.ndarray  # chunk -> base text
    vectors: np.ndarray  # chunk vectors, float32, unit length
    company_of: np.ndarray  # chunk -> company number
    sizes: list[int]

    @property
    def chunks(self) -> int:
        return len(self.base_index)


def company_id(number: int) -> str:
    return f"bench-{number:04d}-0000-4000-8000-000000000000"  # uuid-shaped, never numeric-looking


def company_number(company: str) -> int:
    return int(company[6:10])


def user_id(number: int) -> str:
    """The one staff user of bench company `number` (the HTTP phase searches as them)."""
    return f"bench-user-{number:04d}"


def user_email(number: int) -> str:
    return f"bench+{number:04d}@example.com"


def build_store(cache_dir: Path, chunks: int, companies: int, base_count: int, embed_model: Any,
                scifact: Path | None, log: Any = print) -> tuple[Store, bool]:
    """Load the cached store arrays, or embed the base texts and derive them (returns cached?)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    version = "-".join(filter(None, (STORE_VERSION, corpus_tag(scifact))))
    stem = cache_dir / f"store-{version}-{chunks}-{companies}-{base_count}"
    files = {k: stem.with_name(f"{stem.name}.{k}") for k in ("texts.json", "base.npy", "vectors.npy", "company.npy")}
    sizes = zipf_sizes(chunks, companies)
    if all(f.is_file() for f in files.values()):
        return Store(json.loads(files["texts.json"].read_text()), np.load(files["base.npy"]),
                     np.load(files["vectors.npy"]), np.load(files["company.npy"]), sizes), True
    texts = base_texts(base_count, scifact)
    base_vectors_file = cache_dir / f"base-{version}-{len(texts)}.npy"
    if base_vectors_file.is_file():
        base = np.load(base_vectors_file)
    else:
        log(f"embedding {len(texts)} base texts (once)...")
        started = time.perf_counter()
        embedded: list[list[float]] = []
        with progress("bench build") as bar:  # minutes on a small machine: show how far, and how long is left
            task = bar.add_task("base texts embedded", total=len(texts))
            for start in range(0, len(texts), EMBED_SLICE):
                embedded += embed_model.get_text_embedding_batch(texts[start:start + EMBED_SLICE])
                bar.advance(task, len(texts[start:start + EMBED_SLICE]))
        base = np.asarray(embedded, dtype=np.float32)
        log(f"  {len(texts) / (time.perf_counter() - started):.1f} texts/s")
        np.save(base_vectors_file, base)
    rng = np.random.default_rng(42)
    company_of = np.repeat(np.arange(companies), sizes)
    base_index = rng.integers(0, len(texts), size=chunks)
    noisy = base[base_index] + rng.normal(0.0, NOISE_STD, size=(chunks, base.shape[1])).astype(np.float32)
    vectors = (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)
    files["texts.json"].write_text(json.dumps(texts))
    np.save(files["base.npy"], base_index)
    np.save(files["vectors.npy"], vectors)
    np.save(files["company.npy"], company_of)
    return Store(texts, base_index, vectors, company_of, sizes), False
