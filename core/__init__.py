"""Shared plumbing: settings, database engine, embedded Postgres, model factories.

Everything else imports from here; nothing here imports the service packages.
"""

__version__ = "0.1.0"
SERVICE_NAME = "ILS RAG"
