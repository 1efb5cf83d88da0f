"""All configuration, read once from the environment (prefix ``MODSTREAM_``).

Nested sections use ``__``: ``MODSTREAM_KAFKA__BOOTSTRAP_SERVERS=broker:9092``. Each component
receives only its own section, never the whole object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from consumer.imaging.egress import parse_networks

MiB = 1024 * 1024


class _Section(BaseModel):
    # A misspelt MODSTREAM_* variable must fail at startup, not be silently ignored.
    model_config = ConfigDict(extra="forbid")


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "modstream"
    group_id: str = "modstream"
    input_topic: str = "modstream.images"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    max_poll_interval_ms: int = Field(default=300_000, ge=1000)
    max_poll_records: int = Field(default=500, ge=1)
    # How long the broker may hold a fetch waiting for data. aiokafka's 500 ms default adds
    # that much latency on brokers that wait it out (Tansu does); it costs nothing under load.
    fetch_max_wait_ms: int = Field(default=50, ge=0)
    # Inline images make records large; these must agree with the broker's message.max.bytes.
    max_partition_fetch_bytes: int = Field(default=16 * MiB, ge=1024)
    fetch_max_bytes: int = Field(default=64 * MiB, ge=1024)
    # Re-checking each record batch's CRC32C costs about 1 ms per MB of image on one core; the
    # broker checked it when the batch was produced and TCP guards the wire, so it is off by
    # default, as in librdkafka (check.crcs). A corrupted image fails decoding and is
    # dead-lettered either way.
    check_crcs: bool = False
    producer_max_request_size: int = Field(default=16 * MiB, ge=1024)
    producer_linger_ms: int = Field(default=5, ge=0)
    compression_type: Literal["gzip", "snappy", "lz4", "zstd"] | None = None
    commit_interval_ms: int = Field(default=500, ge=10)
    request_timeout_ms: int = Field(default=30_000, ge=1000)


class TopicSettings(_Section):
    allow: str = "modstream.decisions.allow"
    review: str = "modstream.decisions.review"
    block: str = "modstream.decisions.block"
    dead_letter: str = "modstream.deadletter"
    # Comparisons of the shadow heads version with the live one (nothing is routed by them).
    heads_shadow: str = "modstream.heads.shadow"
    # Reviewers' verdicts (compacted, keyed by event id): the review page writes, training reads.
    labels: str = "modstream.labels"
    # Which reviewer has which item open (compacted, keyed by event id): review page replicas.
    review_claims: str = "modstream.review.claims"


class TritonSettings(_Section):
    url: str = "127.0.0.1:8001"
    model_name: str = "nsfw_mobilenet_v2"
    # Empty means whatever version Triton serves as latest.
    model_version: str = ""
    timeout_s: float = Field(default=10.0, gt=0)
    max_inflight_batches: int = Field(default=4, ge=1)
    ready_timeout_s: float = Field(default=60.0, gt=0)
    retry_initial_backoff_s: float = Field(default=0.1, gt=0)
    retry_max_backoff_s: float = Field(default=5.0, gt=0)
    # Other models of the pool (same classes and input size), run on every image to measure
    # disagreement; empty: one model only.
    pool_models: list[str] = Field(default_factory=list)
    # Consecutive unavailability errors that open the circuit breaker (then: pause, probe).
    # With MODSTREAM_IMAGING__DECODE_IN=triton: the ensemble taking encoded image bytes
    # (preprocess, then model_name); empty means "<model_name>_bytes".
    bytes_model_name: str = ""
    breaker_failure_threshold: int = Field(default=3, ge=1)
    breaker_open_s: float = Field(default=0.5, gt=0)


class BatchSettings(_Section):
    max_batch_size: int = Field(default=32, ge=1)
    max_wait_ms: float = Field(default=10.0, ge=0)


class ImagingSettings(_Section):
    max_image_bytes: int = Field(default=20 * MiB, ge=1024)
    max_pixels: int = Field(default=64_000_000, ge=1)
    # Frames classified per animated image (max score per category wins); more frames than
    # max_frames in one file is refused.
    sample_frames: int = Field(default=4, ge=1, le=32)
    max_frames: int = Field(default=1000, ge=1)
    decode_workers: int = Field(default=2, ge=1)
    # threads: decode in the consumer process (parsing and Pillow's glue hold the interpreter
    # lock: about 0.7 cores at most); processes: decode_workers worker processes, every core.
    decode_pool: Literal["threads", "processes"] = "threads"
    # consumer: decode here; triton: send still images encoded to the model's bytes ensemble
    # (TritonSettings.bytes_model_name), which decodes them with the same code and limits.
    decode_in: Literal["consumer", "triton"] = "consumer"
    # Memory one decode may need (frame buffer and decoder copies, estimated from the header
    # before any pixel is decoded); larger images are refused as image_too_many_pixels.
    # decode_workers x this bounds the decode pool's memory (docs/memory.md). The default
    # admits JPEGs, gray and 16-bit images up to max_pixels, other still images up to about
    # 49 MP, WebP up to about 12 MP.
    max_decode_bytes: int = Field(default=256 * MiB, ge=64 * MiB)
    fetch_connect_timeout_s: float = Field(default=2.0, gt=0)
    fetch_read_timeout_s: float = Field(default=10.0, gt=0)
    fetch_max_redirects: int = Field(default=3, ge=0)
    # One image URL's whole budget: every attempt, redirect and backoff together. A server
    # that drips bytes must not hold an in-flight slot longer than this.
    fetch_deadline_s: float = Field(default=15.0, gt=0)
    # Attempts in all for timeouts, unreachable hosts and 5xx answers (within the deadline).
    fetch_attempts: int = Field(default=3, ge=1)
    # Networks image URLs may reach although they are not public (tests, private deployments).
    fetch_allow_networks: list[str] = Field(default_factory=list)

    @field_validator("fetch_allow_networks")
    @classmethod
    def _networks_parse(cls, values: list[str]) -> list[str]:
        try:
            parse_networks(values)
        except ValueError as exc:
            raise ValueError(f"{exc}; give CIDR networks such as 10.0.0.0/8") from exc
        return values


class FlowSettings(_Section):
    """Bounds on work held in memory; past them the consumer pauses its partitions."""

    max_inflight_events: int = Field(default=1000, ge=1)
    # Record bytes read but not yet decided. Each costs up to 2.5 bytes of memory (the
    # record, the event parsed from it, a dead letter carrying it back): docs/memory.md.
    max_inflight_bytes: int = Field(default=64 * MiB, ge=MiB)
    drain_timeout_s: float = Field(default=20.0, ge=0)
    # On a rebalance, how long in-flight work of revoked partitions may finish and be
    # committed before they are handed over (the group's rebalance waits this long at most).
    revoke_grace_s: float = Field(default=5.0, ge=0)
    # How long leaving the group may take on shutdown (it waits for a rebalance in progress
    # to end); past it the process exits anyway and the group notices the session timeout.
    # drain + close stay under the pod's terminationGracePeriodSeconds (45).
    close_timeout_s: float = Field(default=15.0, gt=0)


class PolicySettings(_Section):
    path: Path = Path("policies/default.yaml")
    # How often the file is checked for changes; 0 turns hot reload off.
    reload_interval_s: float = Field(default=5.0, ge=0)
    # Compacted topic of tenant policies pushed by a control plane (key tenant id, value the
    # tenant's policy as JSON, tombstone deletes); unset: the file only.
    topic: str | None = None
    topic_load_timeout_s: float = Field(default=30.0, gt=0)


class HeadsSettings(_Section):
    # A candidate heads version scored beside the live one on every event; its would-be
    # decisions go to topics.heads_shadow and route nothing. Unset: no shadow.
    shadow_version: str | None = Field(default=None, pattern=r"^[1-9][0-9]*$")


class BankSettings(_Section):
    # Folder of exemplar banks (one sub-folder per bank); unset means no bank is consulted.
    path: Path | None = None


class MetricsSettings(_Section):
    host: str = "0.0.0.0"
    port: int = Field(default=9400, ge=0, le=65535)
    max_tenant_labels: int = Field(default=100, ge=1)


class ReviewSettings(_Section):
    """The review page (``modstream review``, docs/review.md)."""

    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)
    # "token": each reviewer sends a bearer token listed (as its SHA-256) in reviewers_file.
    # "proxy": an authenticating proxy in front sets proxy_user_header to the reviewer id; only
    # safe when nothing but that proxy can reach the page.
    auth: Literal["token", "proxy"] = "token"
    reviewers_file: Path = Path("reviewers.yaml")
    proxy_user_header: str = "X-Forwarded-User"
    # Signs CSRF tokens; unset: a random key per process (forms break across replicas).
    csrf_secret: SecretStr | None = None
    # Set the session cookie's Secure flag; off only for plain-HTTP development on loopback.
    secure_cookies: bool = True
    # The review topics to read; empty: every tenant's review topic in the policy file.
    topics: list[str] = Field(default_factory=list)
    # Decisions kept in memory per tenant; past it an item keeps only its coordinates and its
    # decision is read back from Kafka when it is opened.
    max_items_per_tenant: int = Field(default=10_000, ge=1)
    # Model repository holding the served backbone and heads, for heat maps; unset: none.
    saliency_repository: Path | None = None
    # Longest side of the image shown to reviewers (re-encoded; the original is never served).
    display_max_side: int = Field(default=1024, ge=64, le=8192)
    # Reading one input record for its image.
    fetch_record_timeout_s: float = Field(default=10.0, gt=0)
    # How long opening an item keeps other reviewers away from it (renewed while it is open).
    claim_s: float = Field(default=120.0, gt=0)
    # The labels and claims topics are created (compacted) with these when missing.
    labels_partitions: int = Field(default=6, ge=1)
    labels_replication_factor: int = Field(default=3, ge=1)


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_format: bool = True


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MODSTREAM_", env_nested_delimiter="__", extra="forbid"
    )

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    triton: TritonSettings = TritonSettings()
    batching: BatchSettings = BatchSettings()
    imaging: ImagingSettings = ImagingSettings()
    flow: FlowSettings = FlowSettings()
    policy: PolicySettings = PolicySettings()
    metrics: MetricsSettings = MetricsSettings()
    log: LogSettings = LogSettings()
    banks: BankSettings = BankSettings()
    heads: HeadsSettings = HeadsSettings()
    review: ReviewSettings = ReviewSettings()

    @model_validator(mode="after")
    def _heartbeat_below_session(self) -> Settings:
        if self.kafka.heartbeat_interval_ms * 3 > self.kafka.session_timeout_ms:
            raise ValueError(
                "kafka.heartbeat_interval_ms must be at most a third of kafka.session_timeout_ms"
            )
        return self
