"""Postgres for the whole service, one job per module.

- `connections`: how any engine is built (pool, timeouts, keepalives, HNSW session settings).
- `tenant_scope`: `tenant()`, `transaction_settings()` and the BEGIN hooks that prove the tenant.
- `owner`: the owner's URL and engine (migrations, CLI, bootstrap; bypasses row-level security).
- `roles`: the URLs the service and sign-in roles connect with, and their generated passwords.
- `engines`: the service's engines and sessions (row-level security applies), `reset_engines()`.
- `replica`: whether reads go to the read replica.
- `checks`: start-up checks of pgvector and of the service role.

Nothing is re-exported here: a caller imports the module whose job it needs, so each
module's state (cached engines, context variables) has one home.
"""
