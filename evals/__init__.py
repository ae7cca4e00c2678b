"""Retrieval evaluation: BEIR-format datasets run through the service's own ingestion
pipeline and retrievers, scored per query and averaged, with reports."""
