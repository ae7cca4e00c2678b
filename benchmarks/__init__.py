"""Benchmarks: measurements of the search store (search), the ingestion pipeline (ingest) and
the whole service under load (soak). Each prints its figures and writes them under
benchmarks/results/; the `ils-rag bench ...` commands (app.cli.bench) are their entry points.
Only the repository is needed: an outside dataset is used only when an option names it."""

from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
