"""Typed, validated configuration, read once from the environment at start.

Defaults point at the local stack of `make up`. Secrets are never read here except
Kafka client secrets (SASL password, key passwords, OAuth client secret), which go
straight into the client config and are never logged (connectors/transports/kafka_client.py);
AWS credentials come from boto3's standard chain.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from connectors.backup_layout import valid_name
from connectors.backup_store import BackupConfig
from connectors.env import Env
from connectors.errors import ConfigError
from connectors.transports import kafka_client, kafka_native
from connectors.transports.kafka_client import KafkaClientConfig, KafkaConfigError
from connectors.transports.kafka_start_position import EARLIEST, StartPosition
from connectors.transports.kinesis.settings import KinesisSettings
from dataflows.impressions.layout import WINDOW_STATE

if TYPE_CHECKING:
    from dataflows.booking_rules import SideSchema

LOCAL_KAFKA = "127.0.0.1:19092"
LOCAL_S3 = "http://127.0.0.1:4566"
KAFKA_BATCH_SIZE = 50_000  # KAFKA_BATCH_SIZE's default


@dataclass(frozen=True)
class KafkaSettings:
    brokers: list[str]
    # librdkafka properties (security etc.) with the settings they came from; may hold
    # secrets: never log (`client.masked()` is safe to).
    client: KafkaClientConfig = field(default_factory=KafkaClientConfig)
    partition_check_seconds: float = 60.0  # KAFKA_PARTITION_CHECK_SECONDS: partitions added while running
    reader: str = "confluent"  # KAFKA_READER as chosen: confluent-kafka's consumer, or native (kafka_native.py)
    reader_note: str = ""  # KAFKA_READER=auto without the native reader: why, logged once at start

    @property
    def client_config(self) -> dict[str, Any]:
        """What confluent-kafka clients get on top of bootstrap.servers (may hold secrets)."""
        return self.client.client_config()

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, check: bool = True) -> KafkaSettings:
        """KAFKA_BROKERS and the client properties (kafka_client.from_env); `check`: also let
        librdkafka check every name and value and load the certificates (nothing connects)."""
        e = Env(env)
        brokers = [b.strip() for b in e.text("KAFKA_BROKERS", LOCAL_KAFKA).split(",") if b.strip()]
        for broker in brokers:
            host, _, port = broker.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"KAFKA_BROKERS entry {broker!r} is not host:port: e.g. {LOCAL_KAFKA}")
        try:
            client = kafka_client.from_env(env)
            if check:
                kafka_client.check_with_librdkafka(brokers, client)
        except KafkaConfigError as exc:
            raise ConfigError(str(exc)) from None
        partition_check = e.number("KAFKA_PARTITION_CHECK_SECONDS", 60, minimum=0)
        requested = e.choice("KAFKA_READER", READER_DEFAULT, READERS)
        why_not = kafka_native.unusable(client.client_config()) if requested != "confluent" else None
        reader, note = choose_reader(requested, why_not)
        return cls(brokers, client, partition_check, reader, note)


READERS = ("confluent", "native", "auto")  # KAFKA_READER's values
READER_DEFAULT = "auto"  # the native reader wherever it is built and usable: +28 % on both workloads


def choose_reader(requested: str, why_not_native: str | None) -> tuple[str, str]:
    """KAFKA_READER as the reader to use (`confluent` or `native`) and the line to log at start
    ("" for none). `why_not_native`: why the native reader cannot read here, with the fix (None: it can)."""
    if requested == "confluent":
        return "confluent", ""
    if why_not_native is None:
        return "native", ""
    if requested == "auto":
        return "confluent", f"KAFKA_READER=auto: reading Kafka with confluent-kafka, since {why_not_native}"
    raise ConfigError(f"KAFKA_READER=native: {why_not_native}, or unset KAFKA_READER")


@dataclass(frozen=True)
class StartSettings:
    """How a run starts: with or without a recovery store, over existing output, where in Kafka."""

    allow_no_recovery: bool = False  # ALLOW_NO_RECOVERY
    on_existing_output: str = "fail"  # ON_EXISTING_OUTPUT: fail | append
    start_position: StartPosition = EARLIEST  # START_POSITION, fresh partitions only
    stop_at_ms: int | None = None  # STOP_AT: a bounded run (a backfill) ends before this Kafka timestamp
    rendezvous_port: int = 9998  # RECOVERY_RENDEZVOUS_PORT: process 0's, one volume per pod (connectors/rendezvous.py)
    rendezvous_timeout_seconds: float = 300.0  # RECOVERY_RENDEZVOUS_TIMEOUT_SECONDS

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> StartSettings:
        e = Env(env)
        raw = e.text("START_POSITION", "earliest")
        try:
            position = StartPosition.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"START_POSITION={raw!r}: {exc}") from None
        stop_at = e.optional("STOP_AT")
        stop_at_ms = None
        if stop_at is not None:
            try:
                stop = StartPosition.parse(stop_at if stop_at.startswith("timestamp:") else f"timestamp:{stop_at}")
            except ValueError as exc:
                raise ConfigError(f"STOP_AT={stop_at!r}: {exc}") from None
            if not e.flag("BOUNDED", False):
                raise ConfigError("STOP_AT only ends bounded runs: set BOUNDED=true, or unset STOP_AT")
            stop_at_ms = stop.timestamp_ms
        return cls(
            allow_no_recovery=e.flag("ALLOW_NO_RECOVERY", False),
            on_existing_output=e.choice("ON_EXISTING_OUTPUT", "fail", ("fail", "append")),
            start_position=position,
            stop_at_ms=stop_at_ms,
            rendezvous_port=e.port("RECOVERY_RENDEZVOUS_PORT") or 9998,
            rendezvous_timeout_seconds=e.number("RECOVERY_RENDEZVOUS_TIMEOUT_SECONDS", 300, minimum=1),
        )


@dataclass(frozen=True)
class BackupSettings(BackupConfig):
    """The recovery store's backups in S3 (connectors/backup.py); off unless BACKUP_INTERVAL_SECONDS > 0."""

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, bucket: str | None, prefix: str, run: str) -> BackupSettings:
        """`bucket`, `prefix`, `run`: the job's defaults (its output bucket and prefix, its consumer group)."""
        e = Env(env)
        interval = e.number("BACKUP_INTERVAL_SECONDS", 0, minimum=0)
        restore_from = e.optional("RESTORE_FROM_SAVEPOINT")
        bucket = e.optional("BACKUP_S3_BUCKET") or bucket
        if (interval or restore_from) and not bucket:
            raise ConfigError("backups need a bucket: set BACKUP_S3_BUCKET (or BACKUP_INTERVAL_SECONDS=0)")
        run = e.optional("BACKUP_RUN") or run
        for name, value in (("BACKUP_RUN", run), ("RESTORE_FROM_SAVEPOINT", restore_from)):
            if value is not None and not valid_name(value):
                raise ConfigError(
                    f"{name}={value!r}: use letters, digits, '.', '_' or '-', starting with a letter or digit"
                )
        return cls(
            bucket=bucket,
            prefix=(e.optional("BACKUP_S3_PREFIX") or prefix).strip("/"),
            run=run,
            endpoint_url=env.get("S3_ENDPOINT_URL", LOCAL_S3).strip() or None,
            region=e.optional("AWS_REGION") or e.optional("AWS_DEFAULT_REGION") or "us-east-1",
            interval_seconds=interval,
            retention=int(e.number("BACKUP_RETENTION", 5, minimum=1, integer=True)),
            restore_from=restore_from,
        )


@dataclass(frozen=True)
class MovieImpressionsSettings:
    kafka: KafkaSettings | None  # TRANSPORT=kafka only
    transport: str  # kafka or kinesis: what the stream settings name
    input_topic: str
    dead_letter_topic: str
    late_topic: str
    s3_bucket: str
    s3_prefix: str
    s3_endpoint_url: str | None
    s3_region: str | None
    output_format: str
    window: timedelta
    max_out_of_orderness: timedelta
    idle_timeout: timedelta
    bounded: bool
    sink_partitions: int
    kafka_batch_size: int
    s3_give_up_after: timedelta
    consumer_group: str
    metrics_port: int | None
    start: StartSettings = field(default_factory=StartSettings)
    backup: BackupConfig = field(default_factory=BackupConfig)  # BACKUP_*: the recovery store's backups
    kinesis: KinesisSettings | None = None  # TRANSPORT=kinesis only
    s3_direct_put: bool = True  # data PUTs by obstore, without botocore (connectors/sinks/s3_client.NativePut)
    delta_table_uri: str = ""  # OUTPUT_FORMAT=delta: DELTA_TABLE_URI, else s3://<S3_BUCKET>/<S3_PREFIX>

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> MovieImpressionsSettings:
        e = Env(env)
        window_minutes = e.number("WINDOW_MINUTES", 15, minimum=1, integer=True)
        if (24 * 60) % window_minutes:
            raise ConfigError(f"WINDOW_MINUTES={window_minutes} does not divide a day: use e.g. 5, 15, 30 or 60")
        bucket, prefix = e.text("S3_BUCKET", "movie-impressions"), e.text("S3_PREFIX", "impressions").strip("/")
        group = e.text("CONSUMER_GROUP", "movie-impressions")
        return cls(
            backup=BackupSettings.from_env(env, bucket=bucket, prefix=prefix, run=group),
            **_shared_settings(env),
            input_topic=e.text("IMPRESSIONS_TOPIC", "movie-impressions"),
            dead_letter_topic=e.text("DEAD_LETTER_TOPIC", "movie-impressions-dead-letter"),
            late_topic=e.text("LATE_TOPIC", "movie-impressions-late"),
            s3_bucket=e.text("S3_BUCKET", "movie-impressions"),
            s3_prefix=e.text("S3_PREFIX", "impressions").strip("/"),
            # Empty means AWS's own endpoint for the region.
            s3_endpoint_url=env.get("S3_ENDPOINT_URL", LOCAL_S3).strip() or None,
            s3_region=e.optional("AWS_REGION") or e.optional("AWS_DEFAULT_REGION") or "us-east-1",
            output_format=e.choice("OUTPUT_FORMAT", "parquet", ("parquet", "csv", "delta")),
            window=timedelta(minutes=window_minutes),
            sink_partitions=int(e.number("SINK_PARTITIONS", 4, minimum=1, integer=True)),
            s3_give_up_after=e.seconds("S3_RETRY_SECONDS", 300, minimum=0),
            consumer_group=e.text("CONSUMER_GROUP", "movie-impressions"),
            s3_direct_put=e.flag("S3_DIRECT_PUT", True),
            delta_table_uri=_delta_table_uri(e),
        )

    def state_shape(self) -> dict[str, str]:
        """The settings the stored state depends on (connectors/recovery_store/state_settings.py)."""
        return {
            "TRANSPORT": self.transport,
            "IMPRESSIONS_TOPIC": self.input_topic,
            "WINDOW_MINUTES": str(int(self.window.total_seconds() // 60)),
            "SINK_PARTITIONS": str(self.sink_partitions),
            "OUTPUT_FORMAT": self.output_format,
            "S3_BUCKET": self.s3_bucket,
            "S3_PREFIX": self.s3_prefix,
            "WINDOW_STATE": WINDOW_STATE,
        }


def _delta_table_uri(e: Env) -> str:
    """OUTPUT_FORMAT=delta: where the table is (an S3 URI; the endpoint and credentials are the S3 ones)."""
    default = f"s3://{e.text('S3_BUCKET', 'movie-impressions')}/{e.text('S3_PREFIX', 'impressions').strip('/')}"
    uri = (e.optional("DELTA_TABLE_URI") or default).rstrip("/")
    scheme, _, rest = uri.partition("://")
    if scheme.lower() not in ("s3", "s3a") or not rest.split("/")[0]:
        raise ConfigError(
            f"DELTA_TABLE_URI={uri!r} is not an s3://bucket/path URI: set it to e.g. s3://my-bucket/impressions "
            "or unset it to use s3://<S3_BUCKET>/<S3_PREFIX>"
        )
    return uri


@dataclass(frozen=True)
class BookingSettings:
    kafka: KafkaSettings | None  # TRANSPORT=kafka only
    transport: str
    created_topic: str
    events_topic: str
    alerts_topic: str
    unmatched_topic: str
    dead_letter_topic: str
    created_schema: SideSchema
    event_schema: SideSchema
    timeout: timedelta
    max_out_of_orderness: timedelta
    idle_timeout: timedelta
    bounded: bool
    kafka_batch_size: int
    consumer_group: str
    metrics_port: int | None
    start: StartSettings = field(default_factory=StartSettings)
    backup: BackupConfig = field(default_factory=BackupConfig)  # BACKUP_*: the recovery store's backups
    kinesis: KinesisSettings | None = None  # TRANSPORT=kinesis only

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BookingSettings:
        # Imported here: its JSONPath parser is slow to import, and only the booking job needs it.
        from dataflows.booking_rules import CREATED, DEFAULT_CREATED, DEFAULT_EVENT, EVENT, SideSchema, parse_field_spec

        e = Env(env)

        def schema(side: str, prefix: str, default: SideSchema) -> SideSchema:
            try:
                fields = parse_field_spec(e.text(f"{prefix}_FIELDS", _spec(default.fields)))
                return SideSchema(
                    side,
                    e.text(f"{prefix}_ID_PATH", default.id_path),
                    e.text(f"{prefix}_TIME_PATH", default.time_path),
                    fields,
                )
            except ValueError as exc:
                if isinstance(exc, ConfigError):
                    raise
                raise ConfigError(f"{prefix}_FIELDS/_ID_PATH/_TIME_PATH: {exc}") from None

        created = schema(CREATED, "CREATED", DEFAULT_CREATED)
        event = schema(EVENT, "EVENT", DEFAULT_EVENT)
        clash = (set(created.fields) & set(event.fields)) | (
            {"bookingId", "gapMs"} & (set(created.fields) | set(event.fields))
        )
        if clash:
            raise ConfigError(
                f"CREATED_FIELDS and EVENT_FIELDS both name {', '.join(sorted(clash))}: rename one side's"
            )
        group = e.text("CONSUMER_GROUP", "booking-correlation")
        return cls(
            backup=BackupSettings.from_env(env, bucket=None, prefix="", run=group),
            **_shared_settings(env),
            created_topic=e.text("CREATED_TOPIC", "booking-created"),
            events_topic=e.text("EVENTS_TOPIC", "booking-events"),
            alerts_topic=e.text("ALERTS_TOPIC", "booking-alerts"),
            unmatched_topic=e.text("UNMATCHED_TOPIC", "booking-unmatched"),
            dead_letter_topic=e.text("DEAD_LETTER_TOPIC", "booking-dead-letter"),
            created_schema=created,
            event_schema=event,
            timeout=e.seconds("BOOKING_TIMEOUT_SECONDS", 900, minimum=1),
            consumer_group=e.text("CONSUMER_GROUP", "booking-correlation"),
        )

    def state_shape(self) -> dict[str, str]:
        """The settings the stored state depends on (connectors/recovery_store/state_settings.py)."""
        return _booking_state_shape(self)


def _booking_state_shape(settings: BookingSettings) -> dict[str, str]:
    return {
        "TRANSPORT": settings.transport,
        "CREATED_TOPIC": settings.created_topic,
        "EVENTS_TOPIC": settings.events_topic,
        "CREATED_ID_PATH": settings.created_schema.id_path,  # the state's keys
        "EVENT_ID_PATH": settings.event_schema.id_path,
    }


def _shared_settings(env: Mapping[str, str]) -> dict:
    """Settings both jobs read the same way: the transport's (only the one TRANSPORT names is
    read and checked), event time, run mode, metrics."""
    e = Env(env)
    transport = e.choice("TRANSPORT", "kafka", ("kafka", "kinesis"))
    kafka = transport == "kafka"
    return {
        "kafka": KafkaSettings.from_env(env) if kafka else None,
        "transport": transport,
        "max_out_of_orderness": e.seconds("MAX_OUT_OF_ORDERNESS_SECONDS", 30, minimum=0),
        "idle_timeout": e.seconds("IDLE_TIMEOUT_SECONDS", 60, minimum=1),
        "bounded": e.flag("BOUNDED", False),
        "kafka_batch_size": int(e.number("KAFKA_BATCH_SIZE", KAFKA_BATCH_SIZE, minimum=1, integer=True))
        if kafka
        else KAFKA_BATCH_SIZE,
        "metrics_port": e.port("METRICS_PORT"),
        "start": StartSettings.from_env(env),
        "kinesis": None if kafka else KinesisSettings.from_env(env),
    }


def _spec(fields: dict[str, str]) -> str:
    return ",".join(f"{name}={path}" for name, path in fields.items())


JobSettings = MovieImpressionsSettings | BookingSettings
