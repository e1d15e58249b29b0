"""The runner's settings: the core ``Settings`` plus broker security, metrics and the bridge.

Kept in the runner because only the runner talks to NATS and follows the filer; the core stays
free of broker concerns. Every secret is a ``SecretStr`` so that it never prints in a log line,
an error row, a dead letter or CLI output (``redacted_nats_url`` is what may be shown).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr

from p8fs.errors import ConfigurationError
from p8fs.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from p8fs_runner.tiers import QueueSpec

#: Where a developer's NATS server and SeaweedFS S3 gateway answer when nothing is configured.
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_S3_ENDPOINT = "http://127.0.0.1:8333"


class RunnerSettings(Settings):
    """Core settings plus what only the runner needs (``P8FS_NATS_*``, metrics, bridge)."""

    # -- broker and bridge ------------------------------------------------------------
    nats_url: str | None = Field(
        None,
        description="NATS server URL, or several separated by commas (the nodes of a cluster: "
        "the runner connects to those that answer); unset means embedded nats-server in "
        "development.",
    )
    seaweedfs_filer: str | None = Field(
        None, description="SeaweedFS filer address (host:port) for the event bridge."
    )

    # -- broker security: user/password, token, creds file and TLS ---------------------
    nats_user: str | None = Field(None, description="NATS user name (with P8FS_NATS_PASSWORD).")
    nats_password: SecretStr | None = Field(None, description="NATS password.")
    nats_token: SecretStr | None = Field(None, description="NATS authentication token.")
    nats_creds: Path | None = Field(
        None, description="NATS credentials file (JWT + NKey seed), as `nsc` writes it."
    )
    nats_tls_ca: Path | None = Field(None, description="CA bundle that signs the NATS server.")
    nats_tls_cert: Path | None = Field(None, description="Client certificate for NATS mTLS.")
    nats_tls_key: Path | None = Field(None, description="Client key for NATS mTLS.")
    nats_monitor_url: str | None = Field(
        None,
        description="NATS monitoring endpoint (http://host:8222), used by status and probes.",
    )
    nats_replicas: int = Field(
        1,
        ge=1,
        le=5,
        description="Replicas of every stream the router creates (tiers, self-test, dead "
        "letters): 1 for one server, 3 on a 3-node JetStream cluster so that losing a node "
        "loses no message and stops no tier. The router updates existing streams to it.",
    )

    # -- runtime ------------------------------------------------------------------------
    metrics_port: int = Field(
        9090, ge=0, le=65535, description="Port of /metrics, /healthz and /readyz (0 = off)."
    )
    metrics_host: str | None = Field(
        None,
        description="Address the /metrics and probe server binds: unset means 0.0.0.0 (reachable "
        "by Kubernetes probes and Prometheus) when NATS and S3 are configured, 127.0.0.1 in "
        "development (services embedded or found on the default ports).",
    )
    tier_overrides: dict[str, dict[str, Any]] = Field(
        {},
        description="JSON: consumer settings replacing the queue table's, per queue, e.g. "
        '{"small": {"backoff": [2, 4, 8], "max_deliver": 10}} (backoff, max_deliver, '
        "max_ack_pending, batch, concurrency). Give the router and every worker the same value.",
    )
    embed_services: Literal["auto", "never"] = Field(
        "auto",
        description="auto: start nats-server and weed mini when nothing is configured or "
        "answering on the defaults; never: fail instead (production).",
    )

    # -- SeaweedFS event bridge -----------------------------------------------------------
    bridge_filer_grpc: str | None = Field(
        None,
        description="host:port of the filer's gRPC API, whose SubscribeMetadata stream the bridge "
        "follows; unset means the host of P8FS_SEAWEEDFS_FILER with its port + 10000 "
        "(SeaweedFS's default; set this when the filer runs with -port.grpc).",
    )
    bridge_path_prefix: str = Field(
        "/buckets", description="Filer path the bridge follows (S3 buckets live under it)."
    )
    bridge_kv_bucket: str = Field(
        "P8FS_BRIDGE", description="NATS key-value bucket that holds the bridge's checkpoint."
    )
    bridge_start_ago: float = Field(
        3600.0,
        gt=0,
        description="Seconds of filer history the bridge replays on its very first start.",
    )
    bridge_replay_margin: float = Field(
        5.0,
        ge=0,
        description="Seconds replayed before the checkpoint on restart; duplicates are dropped "
        "by message id, so a margin costs nothing and covers clock skew.",
    )

    def queues(self) -> tuple[QueueSpec, ...]:
        """Every queue of the tier table with ``tier_overrides`` applied (router's first)."""
        from p8fs_runner import tiers

        try:
            queues = tiers.apply_overrides(tiers.ALL_QUEUES, self.tier_overrides)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"P8FS_TIER_OVERRIDES: {exc}") from exc
        # The streams' replicas come from P8FS_NATS_REPLICAS (one value for the cluster).
        return tuple(q.with_overrides(replicas=self.nats_replicas) for q in queues)

    def queue(self, name: str) -> QueueSpec:
        """The worker queue ``name`` (small, medium, large, test) with its overrides."""
        from p8fs_runner import tiers

        tiers.queue(name)  # a clear error for a wrong name
        return next(q for q in self.queues() if q.name == name)

    def resolved_nats_url(self) -> str:
        return self.nats_url or DEFAULT_NATS_URL

    def nats_servers(self) -> list[str]:
        """Every URL of ``P8FS_NATS_URL`` (comma-separated: the nodes of a cluster), in order.

        nats-py takes the list as its server pool: it connects to one that answers and moves
        to another when that one is lost, so a node down at start or during work is no outage.
        """
        servers = [url.strip() for url in self.resolved_nats_url().split(",") if url.strip()]
        if not servers:
            raise ConfigurationError(
                "P8FS_NATS_URL holds no URL: give one or several comma-separated nats:// URLs"
            )
        return servers

    def redacted_nats_url(self) -> str:
        """Every NATS URL with any password or token in it replaced by ``***`` (safe to print)."""
        return ",".join(redact_url(url) for url in self.nats_servers())

    def nats_connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` built from these settings.

        Credentials may come from the URL (``nats://user:pass@host``) or from the dedicated
        variables; giving a token and a user/password at once is refused because the server
        would only honour one and the failure would be confusing.
        """
        options: dict[str, Any] = {
            "servers": self.nats_servers(),
            # A broker restart must not kill a worker: keep reconnecting, briefly.
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "connect_timeout": 5,
        }
        if self.nats_token is not None and (self.nats_user or self.nats_password):
            raise ConfigurationError(
                "set either P8FS_NATS_TOKEN or P8FS_NATS_USER/P8FS_NATS_PASSWORD, not both"
            )
        if self.nats_user is not None:
            options["user"] = self.nats_user
        if self.nats_password is not None:
            options["password"] = self.nats_password.get_secret_value()
        if self.nats_token is not None:
            options["token"] = self.nats_token.get_secret_value()
        if self.nats_creds is not None:
            if not self.nats_creds.is_file():
                raise ConfigurationError(
                    f"P8FS_NATS_CREDS names {self.nats_creds}, which is not a readable file"
                )
            options["user_credentials"] = str(self.nats_creds)
        tls = self.nats_tls_context()
        if tls is not None:
            options["tls"] = tls
        return options

    def nats_tls_context(self) -> ssl.SSLContext | None:
        """A client TLS context when any P8FS_NATS_TLS_* is set, else None."""
        if not (self.nats_tls_ca or self.nats_tls_cert or self.nats_tls_key):
            return None
        if bool(self.nats_tls_cert) != bool(self.nats_tls_key):
            raise ConfigurationError(
                "P8FS_NATS_TLS_CERT and P8FS_NATS_TLS_KEY must be given together"
            )
        try:
            context = ssl.create_default_context(
                cafile=str(self.nats_tls_ca) if self.nats_tls_ca else None
            )
            if self.nats_tls_cert and self.nats_tls_key:
                context.load_cert_chain(str(self.nats_tls_cert), str(self.nats_tls_key))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"cannot load the NATS TLS files (P8FS_NATS_TLS_CA/CERT/KEY): {exc}"
            ) from exc
        return context


def redact_url(url: str) -> str:
    """``scheme://user:secret@host`` -> ``scheme://user:***@host``; a lone token -> ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    if "@" not in parts.netloc:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, sep, _secret = userinfo.partition(":")
    shown = f"{user}:***" if sep else "***"
    return urlunsplit(parts._replace(netloc=f"{shown}@{hostport}"))
