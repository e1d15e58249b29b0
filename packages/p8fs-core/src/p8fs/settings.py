"""Settings, read from ``P8FS_*`` environment variables (and a ``.env`` file) by pydantic-settings.

The variable names are the original system's (``P8FS_STORAGE_PROVIDER``, ``P8FS_PG_*``,
``P8FS_TIDB_*``, ``P8FS_SEAWEEDFS_*``) so existing deployments keep working. What only the
runner needs (the broker, the bridge, metrics) is in ``p8fs_runner.settings``.
The LLM SDKs' own variables (``ANTHROPIC_API_KEY``, ``OPENAI_API_KEY``) are honoured as they are.
Secrets are ``SecretStr`` so they never print in logs, errors or ``repr``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from p8fs.limits import DEFAULT_LIMITS

StorageProvider = Literal["sqlite", "postgresql", "tidb"]


def default_data_dir() -> Path:
    """The per-user data folder (``~/.local/share/p8fs`` on Linux)."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("p8fs", appauthor=False))


class Settings(BaseSettings):
    """Every p8fs setting, its variable and its default (docs are generated from this class)."""

    model_config = SettingsConfigDict(
        env_prefix="P8FS_", env_file=".env", extra="ignore", populate_by_name=True
    )

    # -- database ---------------------------------------------------------------------
    storage_provider: StorageProvider = Field(
        "sqlite", description="Database backend: sqlite (default), postgresql or tidb."
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy async URL that overrides the provider settings, e.g. "
        "sqlite+aiosqlite:///path/p8fs.db or postgresql+asyncpg://user@host/db.",
    )
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Folder for the default SQLite database and embedded services' data.",
    )
    pg_host: str = Field("localhost", description="PostgreSQL host.")
    pg_port: int = Field(5432, description="PostgreSQL port.")
    pg_database: str = Field("app", description="PostgreSQL database.")
    pg_user: str = Field("postgres", description="PostgreSQL user.")
    pg_password: SecretStr = Field(SecretStr(""), description="PostgreSQL password.")
    tidb_host: str = Field("localhost", description="TiDB (MySQL protocol) host.")
    tidb_port: int = Field(4000, description="TiDB port.")
    tidb_database: str = Field("public", description="TiDB database.")
    tidb_user: str = Field("root", description="TiDB user.")
    tidb_password: SecretStr = Field(SecretStr(""), description="TiDB password.")

    # -- object storage (s3:// sources; the broker's settings are the runner's) ---------
    seaweedfs_endpoint: str | None = Field(
        None, description="S3 endpoint of SeaweedFS, e.g. http://localhost:8333."
    )
    s3_access_key: SecretStr | None = Field(None, description="S3 access key id.")
    s3_secret_key: SecretStr | None = Field(None, description="S3 secret access key.")
    s3_region: str = Field("us-east-1", description="S3 region name sent to the endpoint.")

    # -- processing -------------------------------------------------------------------
    chunker: str = Field("tokens", description="Name of the chunker used for files.")
    chunk_tokens: int = Field(512, ge=16, description="Maximum tokens per chunk.")
    chunk_overlap: int = Field(64, ge=0, description="Tokens repeated between neighbouring chunks.")
    token_encoding: str = Field(
        "o200k_base", description="Tokenizer encoding for counting (o200k_base or cl100k_base)."
    )
    document_timeout: float = Field(
        300.0, gt=0, description="Seconds one document's extraction may take before it fails."
    )
    max_file_bytes: int = Field(
        20 * 1024**3, gt=0, description="Largest file accepted for processing, in bytes."
    )
    # Safety limits against hostile files, defaults from p8fs.limits (each is also a per-call
    # option of the same name, which wins); over a limit, the file fails with LimitExceeded.
    max_pages: int = Field(
        DEFAULT_LIMITS.max_pages, gt=0, description="Most pages a PDF may have."
    )
    max_uncompressed_bytes: int = Field(
        DEFAULT_LIMITS.max_uncompressed_bytes,
        gt=0,
        description="Most bytes a document may expand to when decompressed: the declared members "
        "of an office ZIP container (docx, xlsx, pptx, odt, epub) together, or the non-image "
        "streams of a PDF together.",
    )
    max_compression_ratio: int = Field(
        DEFAULT_LIMITS.max_compression_ratio,
        gt=0,
        description="Largest expansion ratio of one ZIP member or PDF stream that decompresses "
        "to more than 16 MiB (beyond it, a decompression bomb is assumed).",
    )
    max_image_pixels: int = Field(
        DEFAULT_LIMITS.max_image_pixels,
        gt=0,
        description="Most pixels (width x height) an image may declare; the default is Pillow's "
        "decompression-bomb limit.",
    )
    max_duration_seconds: float = Field(
        DEFAULT_LIMITS.max_duration_seconds,
        gt=0,
        description="Longest audio or video accepted, in seconds: checked against the declared "
        "duration before decoding and against the decoded audio while transcribing.",
    )
    ocr_engine: Literal["auto", "rapidocr", "tesseract"] = Field(
        "auto",
        description="OCR engine for scanned PDF pages and images (option ocr_engine): rapidocr "
        "(models inside the p8fs-node[ocr] wheel, nothing else to install), tesseract (the "
        "tesseract program; more accurate and faster), or auto: tesseract when its program is "
        "installed, rapidocr otherwise.",
    )
    whisper_model: str | None = Field(
        None,
        description="faster-whisper model: a folder holding model.bin and tokenizer.json, or a "
        "name resolved from the local model cache. Required for audio and video.",
    )

    # -- search -----------------------------------------------------------------------
    embedder: str | None = Field(
        None,
        description="Embedder for semantic and hybrid search and `p8fs embed`: openai (any "
        "OpenAI-compatible /v1/embeddings server: OpenAI, Ollama, llama.cpp, vLLM, TEI), local "
        "(a model folder on disk, run offline) or a plugin's name; unset: keyword search only.",
    )
    embedding_model: str | None = Field(
        None,
        description="With openai: the model name sent to the server (e.g. "
        "text-embedding-3-small). With local: the model folder (config.json, tokenizer.json, "
        "model.safetensors of a BERT sentence encoder such as all-MiniLM-L6-v2).",
    )
    embedding_url: str | None = Field(
        None,
        description="Base URL of the OpenAI-compatible server, up to /v1 (e.g. "
        "http://127.0.0.1:11434/v1); unset: https://api.openai.com/v1.",
    )
    embedding_api_key: SecretStr | None = Field(
        None,
        description="Bearer key for the embedding server (falls back to OPENAI_API_KEY; local "
        "servers usually need none).",
    )
    embedding_batch_size: int = Field(
        32, gt=0, le=2048, description="Chunks sent to the embedder per request."
    )
    embedding_timeout: float = Field(
        60.0, gt=0, description="Seconds one embedding request may take."
    )
    search_text_config: str = Field(
        "english",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="PostgreSQL text-search configuration of the keyword index (english, simple, "
        "german, ...); the generated tsvector column is rebuilt when it changes.",
    )

    # -- agents -----------------------------------------------------------------------
    default_model: str = Field(
        "claude-sonnet-5-5",
        description="LLM used by the agents unless a call names another: the newest Sonnet of "
        "the installed anthropic SDK that is not deprecated. A model past its end of life is "
        "refused before any request; a deprecated one logs a warning with the date.",
    )
    anthropic_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("P8FS_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY"),
        description="Anthropic API key (ANTHROPIC_API_KEY).",
    )
    openai_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("P8FS_OPENAI_API_KEY", "OPENAI_API_KEY"),
        description="OpenAI (or compatible) API key (OPENAI_API_KEY).",
    )

    def __repr_args__(self) -> Any:
        """``repr``/``str`` show URL settings with their password masked (``SecretStr`` fields
        mask themselves; URLs such as ``P8FS_DATABASE_URL`` are plain strings)."""
        from p8fs.redaction import redact_url

        for name, value in super().__repr_args__():
            yield name, redact_url(value) if isinstance(value, str) and "://" in value else value

    def extraction_limits(self) -> dict[str, int | float]:
        """The safety limits as provider options (the pipeline passes them to every provider;
        options given with a call override them)."""
        return {name: getattr(self, name) for name in DEFAULT_LIMITS.as_options()}

    def sqlite_path(self) -> Path:
        return self.data_dir / "p8fs.db"

    def resolved_database_url(self) -> str:
        """The SQLAlchemy async URL to connect to, from ``P8FS_DATABASE_URL`` or the provider."""
        if self.database_url:
            return self.database_url
        from urllib.parse import quote

        if self.storage_provider == "postgresql":
            pw = self.pg_password.get_secret_value()
            auth = quote(self.pg_user) + (":" + quote(pw) if pw else "")
            return f"postgresql+asyncpg://{auth}@{self.pg_host}:{self.pg_port}/{self.pg_database}"
        if self.storage_provider == "tidb":
            pw = self.tidb_password.get_secret_value()
            auth = quote(self.tidb_user) + (":" + quote(pw) if pw else "")
            return (
                f"mysql+aiomysql://{auth}@{self.tidb_host}:{self.tidb_port}/{self.tidb_database}"
                "?charset=utf8mb4"
            )
        return f"sqlite+aiosqlite:///{self.sqlite_path()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests construct ``Settings(...)`` directly instead)."""
    return Settings()
