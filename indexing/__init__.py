"""Ingestion: files, uploads and legacy rows become tenant-tagged chunks in the vector store.

Entry points: `indexing.folder.ingest_folder` (CLI and samples), `indexing.documents`
(the registry service behind the HTTP routes) and `indexing.legacy` (seed migration); the
pipeline's overhead is measured by `benchmarks.ingest`. All tenant data work runs inside
`core.db.tenant_scope.tenant(company_id)`.
"""
