"""Ingestion: files, uploads and legacy rows become tenant-tagged chunks in the vector store.

Entry points: `indexing.folder.ingest_folder` (CLI and samples), `indexing.documents`
(the registry service behind the HTTP routes), `indexing.legacy` (seed migration) and
`indexing.bench` (pipeline overhead). All tenant data work runs inside
`core.database.tenant(company_id)`.
"""
