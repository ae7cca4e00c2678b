"""The one settings object: environment variables, then `.env`, then defaults.

Every field is documented in the README's configuration table; keep both in step.
A command that needs other values than the environment gives (`ils-rag eval --runtime`, the
search benchmark's own database) builds a copy and installs it with `configure_settings`
(core.reconfigure also drops what was built from the old one), rather than editing
os.environ: the process's configuration stays one object, visible where it is decided.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.search_modes import SearchMode, describe_modes

PLACEHOLDER_SECRET = "your-secret-key-change-in-production"  # the seed's default, always refused


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    environment: Literal["development", "test", "production"] = Field(
        default="development", description="development, test or production; outside development JWT_SECRET "
                                           "is mandatory and a service role that bypasses RLS is refused.")
    data_dir: Path = Field(default=Path("data"), description="Embedded Postgres data, caches, generated secrets.")
    host: str = Field(default="127.0.0.1", description="Address `ils-rag serve` binds.")
    port: int = Field(default=8000, description="Port `ils-rag serve` listens on.")
    log_level: str = Field(default="INFO", description="Log level of the JSON logs.")
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto", description="Service logs: one JSON object per line (request id, user id, company id), "
                                    "or text; `auto` = text on a terminal, JSON otherwise; secrets are redacted "
                                    "from both.")

    # Database
    database_url: str | None = Field(default=None, description="Postgres with pgvector; unset = embedded server.")
    db_pool_size: int = Field(default=10, ge=1, description="Connections per engine (the same again as overflow).")
    db_connect_timeout_s: int = Field(
        default=5, ge=1, description="Connect and pool-checkout timeout: a dead database answers 503 fast.")
    db_statement_timeout_s: int = Field(
        default=60, ge=0, description="Longest statement the service's role may run (0 = no limit); bounds a "
                                      "request on a frozen or overloaded database.")
    embedded_pg_shared_buffers_mb: int = Field(
        default=1024, ge=128, description="Buffer cache of the embedded Postgres (at most a quarter of this "
                                          "machine's memory); applied by restarting it once when it starts "
                                          "with another value and no other process uses it.")
    app_database_url: str | None = Field(
        default=None, description="Role the service itself connects as (no SUPERUSER/BYPASSRLS, granted ils_app); "
                                  "unset = derived from DATABASE_URL as the ils_app role (see SECURITY.md).")
    read_database_url: str | None = Field(
        default=None, description="A streaming replica, as the service role (ils_app): search and chat retrieval "
                                  "read there; writes, sign-in and token checks stay on the primary. Unreachable "
                                  "or lagging past READ_MAX_LAG_S = reads go to the primary.")
    read_max_lag_s: float = Field(
        default=30.0, gt=0, description="Replay lag above which the replica stops serving reads (primary instead).")
    tenant_set_local: bool = Field(
        default=False, description="Prove the tenant with `SET LOCAL ils.tenant = '...'` instead of set_config(): "
                                   "Citus forwards SET LOCAL to its workers (citus.propagate_set_commands = "
                                   "'local'), where the row-level security policies read it.")
    auth_database_url: str | None = Field(
        default=None, description="Role sign-in connects as to read password hashes (granted ils_auth, never used "
                                  "by request code); unset = derived from DATABASE_URL as the ils_auth role.")

    tenant_index_min_chunks: int = Field(
        default=1000, ge=0, description="Companies with at least this many chunks get their own HNSW index "
                                        "(built in the background by the owner role); 0 = no background "
                                        "maintenance (`ils-rag db tenant-indexes` then drops them all).")
    tenant_index_check_s: float = Field(
        default=300.0, gt=0, description="How often `ils-rag serve` checks which companies need their own "
                                         "HNSW index (and which no longer do).")

    # Embeddings
    embedding_backend: Literal["local", "openai"] = Field(
        default="local", description="local (bundled all-MiniLM-L6-v2, 384 dims, offline) or openai.")
    embedding_model: str = Field(
        default="all-MiniLM-L6-v2",
        description="Local: the bundled all-MiniLM-L6-v2 (or a path). OpenAI: text-embedding-3-small / ada-002.",
    )
    embedding_batch_size: int = Field(default=64, ge=1, description="Texts per embedding batch during ingestion.")
    embedding_threads: int = Field(
        default=0, ge=0, description="CPU threads one ONNX embedding session uses; 0 = every core. Set it to "
                                     "cores / N when N `ils-rag worker` processes share one machine, so they "
                                     "do not each claim every core.")
    embedding_runtime: Literal["torch", "onnx", "onnx-int8"] = Field(
        default="onnx",
        description="Local model runtime: onnx (exported + fused at first use, same vectors as torch, faster), "
                    "onnx-int8 (quantized, fastest, cosine ≈ 0.99 to fp32), torch (fp32, the fallback).",
    )
    query_cache_size: int = Field(default=1024, ge=0, description="Repeated query embeddings kept in memory; 0 = off.")
    model_cache_dir: Path | None = Field(
        default=None, description="Where ONNX exports of the local model are kept (exported once, reused by "
                                  "every process); unset = DATA_DIR/models.")

    # LLM
    openai_api_key: SecretStr | None = Field(
        default=None, description="Enables GPT-4-family answers (and OpenAI embeddings when selected).")
    openai_base_url: str | None = Field(default=None, description="Any OpenAI-compatible endpoint.")
    llm_model: str = Field(default="gpt-4o", description="Chat model name (GPT-4 family on OpenAI).")
    llm_timeout_s: float = Field(default=30.0, gt=0, description="Per-call LLM timeout (504 after the retries).")
    llm_max_retries: int = Field(default=2, ge=0, description="Retries with backoff on LLM timeouts and 5xx.")
    llm_fallback_extractive: bool = Field(
        default=False, description="On LLM timeout/outage answer extractively instead of 502/504.")
    llm_context_window: int = Field(
        default=8192, description="Context window assumed for OpenAI-compatible models OpenAI does not list.")

    # Retrieval
    search_mode: SearchMode = Field(default="hybrid", description=f"Default retrieval mode ({describe_modes()}).")
    search_threshold: float = Field(
        default=0.25, ge=-1.0, le=1.0,
        description="Default minimum cosine similarity of a returned chunk (same meaning in every mode).")
    bm25_k1: float = Field(default=0.9, ge=0.0, le=10.0,
                           description="BM25 term-frequency saturation of `text` search (higher: repeats count more).")
    bm25_b: float = Field(default=0.4, ge=0.0, le=1.0,
                          description="BM25 length normalisation of `text` search (0: none, 1: full).")
    bm25_fuzzy: bool = Field(
        default=True, description="Read a query word no chunk of the company holds as the nearest word one does "
                                  "(1-2 edits, by word length): spelling tolerance of `text` search.")
    chunk_context: Literal["none", "embedding", "text", "both"] = Field(
        default="both",
        description="Where a chunk's document title and heading path go besides its metadata: into what is "
                    "embedded, into the text-search index, both, or neither (the chunk text shown and quoted "
                    "stays the same). Changing it applies to documents indexed afterwards.")
    chat_top_k: int = Field(default=5, ge=1, le=20, description="Chunks given to the answering step.")
    max_query_chars: int = Field(default=2000, ge=10, description="Longest accepted search query / chat message.")

    # Auth
    jwt_secret: SecretStr | None = Field(
        default=None, description="HS256 secret (≥ 32 bytes); unset in development = generated into DATA_DIR.")
    jwt_algorithm: Literal["HS256", "RS256", "ES256"] = Field(default="HS256", description="Token algorithm.")
    jwt_public_key: str | None = Field(default=None, description="PEM, for RS256/ES256 platform tokens.")
    jwt_private_key: str | None = Field(default=None, description="PEM, to sign our own RS256/ES256 tokens.")
    jwt_issuer: str = Field(default="ils-platform", description="Required `iss` (the platform's contract).")
    jwt_audience: str = Field(default="ils-api", description="Required `aud` (the platform's contract).")
    access_token_minutes: int = Field(default=15, description="Access-token lifetime.")
    platform_role_permissions: dict[str, list[str]] = Field(
        default_factory=dict, description="JSON object role -> permissions for platform tokens that carry a "
                                          "`role` but no `permissions` claim; extends (and may override) the "
                                          "default admin/staff mapping, e.g. {\"optometrist\": [\"knowledge:read\", "
                                          "\"chat:use\"]}.")
    refresh_token_days: int = Field(default=14, ge=1, description="Refresh-token lifetime.")
    login_max_failures_per_account: int = Field(default=5, description="Failed logins per email per window.")
    login_max_failures_per_address: int = Field(default=30, description="Failed logins per client IP per window.")
    login_failure_window_s: int = Field(default=60, description="Sliding window for the two limits above.")
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated proxy addresses or networks (CIDR) whose "
                                          "X-Forwarded-For / X-Forwarded-Proto are believed; empty = none, so "
                                          "the client address is always the TCP peer.")
    api_docs: bool | None = Field(
        default=None, description="Serve /docs, /redoc and /openapi.json; unset = only when "
                                  "ENVIRONMENT=development.")

    # Limits
    max_upload_mb: int = Field(default=20, ge=1, description="Largest single uploaded file (413 above).")
    max_upload_files: int = Field(default=20, description="Files per POST /api/documents request.")
    upload_inline_max_kb: int = Field(default=256, description="Uploads above this are indexed in the background.")
    ingest_batch_chars: int = Field(default=200_000, description="Text per pipeline run (~chunks x 1,000).")
    ingest_in_process_worker: bool = Field(
        default=True, description="Run one ingestion-queue worker inside each API process (so `make run` is one "
                                  "command); false when `ils-rag worker` processes consume the queue.")
    ingest_max_attempts: int = Field(
        default=3, ge=1, description="Claims of one queued upload before it is failed (a file that crashes or "
                                     "keeps failing its worker).")
    ingest_poll_s: float = Field(
        default=2.0, gt=0, description="Longest a worker sleeps between queue checks (a new job wakes it at once "
                                       "through LISTEN/NOTIFY).")
    max_body_kb: int = Field(default=256, ge=1, description="Largest JSON/form body (uploads: MAX_UPLOAD_MB).")
    max_upload_request_mb: int = Field(
        default=100, ge=1, description="Largest multipart upload request in total (all its files); "
                                       "413 PAYLOAD_TOO_LARGE above, checked before the body is read.")
    max_expanded_mb: int = Field(
        default=100, ge=1, description="Largest unpacked size of a zip-based document (.docx, or any file that "
                                       "opens as a zip archive): its declared sizes and the bytes actually "
                                       "decompressed; 413 above.")
    max_extracted_chars: int = Field(
        default=10_000_000, ge=1, description="Most text one .docx or PDF may yield (413 above), so a small "
                                              "file cannot become an unbounded amount of text to embed.")
    search_rate_per_minute: int = Field(default=120, ge=1, description="Searches per user per minute (429 above).")
    chat_rate_per_minute: int = Field(default=30, ge=1, description="Chat messages per user per minute (429 above).")
    rate_limit_storage: str = Field(
        default="postgres", pattern=r"^(postgres|memory|rediss?://.+)$",
        description="Where failed-login, search and chat counters live: `postgres` (one table every API "
                    "process shares), a `redis://host:6379/0` URL (a Redis every process shares) or "
                    "`memory` (per process: each of N processes allows the whole budget).")
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Port of the Prometheus /metrics listener (all worker "
                                               "processes together); 0 = none.")
    metrics_host: str = Field(default="127.0.0.1", description="Address the /metrics listener binds to.")
    jwt_previous_secrets: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Comma-separated old HS256 secrets still accepted for verification "
                                          "during a JWT_SECRET rotation (never used to sign).")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated browser origins allowed to call the API (CORS); "
                                          "empty = no cross-origin access. `*` is refused.")

    @field_validator("jwt_previous_secrets", mode="before")
    @classmethod
    def _split_secrets(cls, value: object) -> object:
        if isinstance(value, str):
            return [secret.strip() for secret in value.split(",") if secret.strip()]
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            return [proxy.strip() for proxy in value.split(",") if proxy.strip()]
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @property
    def api_docs_enabled(self) -> bool:
        return self.environment == "development" if self.api_docs is None else self.api_docs

    @property
    def embedded_database(self) -> bool:
        return not self.database_url

    @property
    def pgdata_dir(self) -> Path:
        return self.data_dir.resolve() / "pg"

    @property
    def embedding_key(self) -> str:
        """Names the vectors the configured model makes: stored statement vectors and score
        calibrations are only valid for the model they were made with, so both are keyed by it."""
        return f"{self.embedding_backend}:{self.embedding_model}"

    @property
    def models_dir(self) -> Path:
        return (self.model_cache_dir or self.data_dir / "models").expanduser().resolve()


_process_settings: Settings | None = None


def get_settings() -> Settings:
    """The process's settings: the ones `configure_settings` installed, else read once from the environment."""
    global _process_settings
    if _process_settings is None:
        _process_settings = Settings()
    return _process_settings


def configure_settings(settings: Settings | None) -> None:
    """Install `settings` as the process's own (None: read the environment again at the next
    `get_settings()`).

    Why: a CLI command is a composition root; it decides its settings once (a copy with
    `settings.model_copy(update={...})`, by field name) and everything it calls reads them
    through `get_settings()`. Objects already built from the previous settings (engines,
    models) are not rebuilt here: core.reconfigure does both.
    """
    global _process_settings
    _process_settings = settings
