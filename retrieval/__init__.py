"""Retrieval and answers: the one tenant-scoped retriever, search, and the chat engines."""
