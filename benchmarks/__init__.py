"""Benchmarks: measurements of the search store, the ingestion pipeline and the whole service
under load. Each prints its figures and writes them under benchmarks/results/; the
`ils-rag bench ...` commands (app.cli.bench) are their entry points."""
