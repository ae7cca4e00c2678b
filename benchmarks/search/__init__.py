"""`ils-rag bench search`: the multi-tenant search benchmark at 100,000 chunks.

What it builds (once; later runs reuse it in seconds):

- a store of N chunks over C companies with Zipf-skewed sizes (corpus), in an isolated
  database `ils_bench` on the same Postgres server, created if missing, same Alembic
  migrations, bulk-loaded with COPY (database);
- vectors that are real MiniLM embeddings of real text, each copy perturbed by small
  Gaussian noise and renormalised to reach the count, never uniform random. The text is the
  repository's own (sample knowledge base, optical evaluation set), or SciFact abstracts
  when `--scifact` names that dataset.

What it measures, in one run (measurements; CPU contention from other processes is recorded
too, benchmarks.cpu):

- store-only filtered search latency and recall@10 against an exact scan, per tenant-size
  bucket, through the service's own path;
- `/api/rag/search` over HTTP on loopback against a real uvicorn subprocess pointed at the
  bench database: 1-client latency and throughput with 1/4/8/16 clients;
- the legacy Jaccard search (evals.jaccard) on the same tenants and queries;
- query/ingestion embedding speed per runtime (torch fp32, onnx, onnx-int8), interleaved,
  and each runtime's optical nDCG@10.

The report (report) is written after every phase (run), so a failure keeps what was measured.
"""
