"""A real single-node Apache Kafka broker (KRaft) on loopback, from Maven Central jars."""

from __future__ import annotations

import base64
import fcntl
import logging
import os
import secrets
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic

from devstack.processes import ManagedProcess, free_port
from devstack.tls import TestPki

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
LOG4J = HERE / "log4j.properties"


def broker_classpath(cache_dir: Path) -> str:
    """Resolve the broker's jars with Maven once; later calls reuse the cached folder."""
    lib = cache_dir / "kafka" / "lib"
    stamp = lib / ".complete"
    lib.parent.mkdir(parents=True, exist_ok=True)
    # Parallel test workers may start at once: one resolves, the others wait.
    with (lib.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.exists():
            _resolve_jars(lib)
            stamp.touch()
    return os.pathsep.join(str(p) for p in sorted(lib.glob("*.jar")))


def _resolve_jars(lib: Path) -> None:
    if shutil.which("mvn") is None:
        msg = "Maven (mvn) is not on PATH: install it (apt-get install maven) to fetch Kafka"
        raise RuntimeError(msg)
    shutil.rmtree(lib, ignore_errors=True)
    lib.mkdir(parents=True)
    log.info("resolving Kafka jars from Maven Central into %s", lib)
    # Its output only when it fails: even quiet, in batch mode and without colour, Maven
    # 3.8 prints colour resets on success.
    done = subprocess.run(
        [
            "mvn",
            "-q",
            "-B",
            "-Dstyle.color=never",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={lib}",
            "-DincludeScope=runtime",
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        output = f"{done.stdout}{done.stderr}".strip()
        msg = f"Maven could not resolve the Kafka jars (check access to Maven Central); it said:\n{output}"
        raise RuntimeError(msg)


# How the client listener is secured; the broker's own traffic (inter-broker, controller)
# stays PLAINTEXT on loopback-only listeners.
SECURITY_MODES = ("plaintext", "sasl_ssl_scram", "mtls", "oauthbearer")
SCRAM_USER = "waxstreams"
OAUTH_PRINCIPAL = "waxstreams-job"
TOKEN_REAUTH_MS = 3000  # the token listener's sessions end after this, or when their token expires


def _cluster_id() -> str:
    # Same form as `kafka-storage random-uuid`: 16 random bytes, URL-safe base64.
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@dataclass
class KafkaBroker:
    """One combined broker+controller node listening only on 127.0.0.1.

    `security` secures the client listener (`port`):
    - `plaintext`: no TLS, no authentication (the local stack's default);
    - `sasl_ssl_scram`: TLS + SASL/SCRAM-SHA-512 (the user is created at `kafka-storage format`, KIP-900);
    - `mtls`: TLS with client certificates signed by the test CA (`ssl.client.auth=required`);
    - `oauthbearer`: TLS + SASL/OAUTHBEARER with Kafka's unsecured-token validator; a second
      such listener (`token_bootstrap`) makes clients sign in again every few seconds, so a
      token that is not refreshed before it expires ends the connection.
    The certificates (SAN IP:127.0.0.1, DNS:localhost) and passwords are made at start,
    in `data_dir/tls`. Secured brokers also listen on a PLAINTEXT `setup_bootstrap`
    (loopback, inter-broker traffic) that tests use to create topics and read results.
    """

    port: int
    controller_port: int
    data_dir: Path
    cache_dir: Path
    heap: str = "384m"
    security: str = "plaintext"
    extra_settings: dict[str, str] = field(default_factory=dict)  # server.properties a test needs beside these
    _process: ManagedProcess | None = field(default=None, init=False)
    _internal_port: int | None = field(default=None, init=False)
    _token_port: int | None = field(default=None, init=False)
    _scram_password: str = field(default_factory=lambda: secrets.token_urlsafe(24), init=False, repr=False)
    pki: TestPki | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.security not in SECURITY_MODES:
            msg = f"security={self.security!r}: use one of {', '.join(SECURITY_MODES)}"
            raise ValueError(msg)
        if self.security != "plaintext":
            self._internal_port = free_port()
            self.pki = TestPki(self.data_dir / "tls")
        if self.security == "oauthbearer":
            self._token_port = free_port()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def setup_bootstrap(self) -> str:
        """A PLAINTEXT listener for set-up and checks (the client listener itself when not secured)."""
        return self.bootstrap if self._internal_port is None else f"127.0.0.1:{self._internal_port}"

    def client_env(self) -> dict[str, str]:
        """The job and producer settings (KAFKA_*) that connect to the client listener."""
        if self.security == "plaintext":
            return {"KAFKA_BROKERS": self.bootstrap}
        assert self.pki is not None
        env = {"KAFKA_BROKERS": self.bootstrap, "KAFKA_SSL_CA_LOCATION": str(self.pki.ca)}
        if self.security == "sasl_ssl_scram":
            env |= {
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                "KAFKA_SASL_USERNAME": SCRAM_USER,
                "KAFKA_SASL_PASSWORD": self._scram_password,
            }
        elif self.security == "mtls":
            env |= {
                "KAFKA_SECURITY_PROTOCOL": "SSL",
                "KAFKA_SSL_CERTIFICATE_LOCATION": str(self.pki.client_cert),
                "KAFKA_SSL_KEY_LOCATION": str(self.pki.client_key),
                "KAFKA_SSL_KEY_PASSWORD": self.pki.client_key_password,
            }
        else:
            env |= {
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_MECHANISM": "OAUTHBEARER",
                # librdkafka's own unsecured JWT: the client path a real token provider uses too.
                "KAFKA_PROPERTIES": (
                    f"enable.sasl.oauthbearer.unsecure.jwt=true;sasl.oauthbearer.config=principal={OAUTH_PRINCIPAL}"
                ),
            }
        return env

    @property
    def token_bootstrap(self) -> str:
        """The OAUTHBEARER listener that re-authenticates every `TOKEN_REAUTH_MS` (oauthbearer mode only)."""
        assert self._token_port is not None, "only the oauthbearer broker has a token listener"
        return f"127.0.0.1:{self._token_port}"

    def token_client_env(self, provider: str) -> dict[str, str]:
        """Settings for the token listener with tokens from `provider` (KAFKA_OAUTH_TOKEN_PROVIDER)."""
        assert self.pki is not None
        return {
            "KAFKA_BROKERS": self.token_bootstrap,
            "KAFKA_SSL_CA_LOCATION": str(self.pki.ca),
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "OAUTHBEARER",
            "KAFKA_OAUTH_TOKEN_PROVIDER": provider,
        }

    def client_config(self) -> dict[str, str]:
        """librdkafka properties for the client listener (the same as `client_env` gives the jobs)."""
        config = {"bootstrap.servers": self.bootstrap}
        if self.security == "plaintext":
            return config
        assert self.pki is not None
        config["ssl.ca.location"] = str(self.pki.ca)
        if self.security == "sasl_ssl_scram":
            return config | {
                "security.protocol": "SASL_SSL",
                "sasl.mechanism": "SCRAM-SHA-512",
                "sasl.username": SCRAM_USER,
                "sasl.password": self._scram_password,
            }
        if self.security == "mtls":
            return config | {
                "security.protocol": "SSL",
                "ssl.certificate.location": str(self.pki.client_cert),
                "ssl.key.location": str(self.pki.client_key),
                "ssl.key.password": self.pki.client_key_password,
            }
        return config | {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "OAUTHBEARER",
            "enable.sasl.oauthbearer.unsecure.jwt": "true",
            "sasl.oauthbearer.config": f"principal={OAUTH_PRINCIPAL}",
        }

    def secrets(self) -> list[str]:
        """The generated secrets of this broker's clients (for leak checks)."""
        found = [self._scram_password] if self.security == "sasl_ssl_scram" else []
        if self.pki is not None:
            found += [self.pki.store_password, self.pki.client_key_password]
        return found

    def _listeners(self) -> dict[str, str]:
        if self._internal_port is None:
            return {
                "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
                "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name": "PLAINTEXT",
            }
        assert self.pki is not None
        protocol = "SSL" if self.security == "mtls" else "SASL_SSL"
        internal = f"INTERNAL://127.0.0.1:{self._internal_port}"
        settings = {
            "listeners": f"CLIENT://127.0.0.1:{self.port},{internal},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"CLIENT://127.0.0.1:{self.port},{internal}",
            "listener.security.protocol.map": f"CLIENT:{protocol},INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "INTERNAL",
            "listener.name.client.ssl.keystore.type": "PKCS12",
            "listener.name.client.ssl.keystore.location": str(self.pki.keystore),
            "listener.name.client.ssl.keystore.password": self.pki.store_password,
            "listener.name.client.ssl.key.password": self.pki.store_password,
        }
        if self.security == "mtls":
            settings |= {
                "listener.name.client.ssl.client.auth": "required",
                "listener.name.client.ssl.truststore.type": "PKCS12",
                "listener.name.client.ssl.truststore.location": str(self.pki.truststore),
                "listener.name.client.ssl.truststore.password": self.pki.store_password,
            }
        elif self.security == "sasl_ssl_scram":
            settings |= {
                "sasl.enabled.mechanisms": "SCRAM-SHA-512",
                "listener.name.client.sasl.enabled.mechanisms": "SCRAM-SHA-512",
                "listener.name.client.scram-sha-512.sasl.jaas.config": (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                ),
            }
        else:
            # No callback handler configured: Kafka's unsecured JWS validator (alg "none", a "sub" claim).
            settings |= {
                "sasl.enabled.mechanisms": "OAUTHBEARER",
                "listener.name.client.sasl.enabled.mechanisms": "OAUTHBEARER",
                "listener.name.client.oauthbearer.sasl.jaas.config": (
                    "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;"
                ),
            }
        if self._token_port is not None:
            settings |= self._token_listener(settings)
        return settings

    def _token_listener(self, settings: dict[str, str]) -> dict[str, str]:
        """The `token_bootstrap` listener: OAUTHBEARER like CLIENT, with re-authentication (KIP-368)."""
        assert self.pki is not None
        token = f"TOKEN://127.0.0.1:{self._token_port}"
        added = {
            "listeners": f"{settings['listeners']},{token}",
            "advertised.listeners": f"{settings['advertised.listeners']},{token}",
            "listener.security.protocol.map": f"{settings['listener.security.protocol.map']},TOKEN:SASL_SSL",
            "listener.name.token.sasl.enabled.mechanisms": "OAUTHBEARER",
            "listener.name.token.oauthbearer.sasl.jaas.config": (
                "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;"
            ),
            "listener.name.token.oauthbearer.connections.max.reauth.ms": str(TOKEN_REAUTH_MS),
        }
        for name in ("type", "location", "password"):
            added[f"listener.name.token.ssl.keystore.{name}"] = settings[f"listener.name.client.ssl.keystore.{name}"]
        added["listener.name.token.ssl.key.password"] = self.pki.store_password
        return added

    def _write_config(self) -> Path:
        config = self.data_dir / "server.properties"
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            **self._listeners(),
            "controller.listener.names": "CONTROLLER",
            "log.dirs": str(self.data_dir / "logs"),
            "num.partitions": "2",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",  # not 50: a first transaction waits for them all
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            **self.extra_settings,
        }
        config.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        config.chmod(0o600)  # holds the keystore password
        return config

    def start(self, timeout: float = 90.0, wait: bool = True) -> None:
        """Format the storage once, start the broker and (unless `wait` is False) wait until it serves."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        classpath = broker_classpath(self.cache_dir)
        if self.pki is not None and not self.pki.keystore.exists():
            self.pki.create()
        config = self._write_config()
        java = [
            "java",
            f"-Xmx{self.heap}",
            f"-Xms{self.heap}",
            "-XX:+UseG1GC",
            f"-Dlog4j.configuration=file:{LOG4J}",
            "-cp",
            classpath,
        ]
        if not (self.data_dir / "logs" / "meta.properties").exists():
            # KIP-900: SCRAM credentials go into the metadata log when the storage is formatted.
            scram = (
                ["--add-scram", f"SCRAM-SHA-512=[name={SCRAM_USER},password={self._scram_password}]"]
                if self.security == "sasl_ssl_scram"
                else []
            )
            subprocess.run(
                # "=" form: an id may start with "-", which argparse would take for an option.
                [
                    *java,
                    "kafka.tools.StorageTool",
                    "format",
                    f"--cluster-id={_cluster_id()}",
                    "-c",
                    str(config),
                    *scram,
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        self._process = ManagedProcess.spawn([*java, "kafka.Kafka", str(config)], self.data_dir / "broker.log")
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        """Ready = the listener accepts connections and the broker answers a metadata request."""
        deadline = time.monotonic() + timeout
        while True:
            if self._process is not None and not self._process.alive():
                msg = f"Kafka broker exited during start-up; see {self.data_dir / 'broker.log'}"
                raise RuntimeError(msg)
            try:
                # Probe the socket first so librdkafka does not log every refused connect.
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                # Through the client listener, with its security: the broker accepts our clients.
                AdminClient({**self.client_config(), "log_level": 0}).list_topics(timeout=5)
                return
            except Exception:
                if time.monotonic() > deadline:
                    msg = f"Kafka broker not ready after {timeout}s; see {self.data_dir / 'broker.log'}"
                    raise RuntimeError(msg) from None
                time.sleep(0.5)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM (a controlled shutdown), then SIGKILL after `grace` seconds."""
        if self._process is not None:
            self._process.stop(grace)
            self._process = None

    def create_topics(self, names: list[str], partitions: int = 2) -> None:
        create_topics(self.setup_bootstrap, names, partitions)


def create_topics(bootstrap: str, names: list[str], partitions: int = 2) -> None:
    """Create topics (idempotently) and wait until the broker reports them."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 4})  # warnings, not its info chatter
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names if n not in existing]
    for future in admin.create_topics(wanted).values() if wanted else []:
        future.result(timeout=30)


def delete_topics(bootstrap: str, names: list[str]) -> None:
    """Delete those of `names` that exist (benchmarks' scratch outputs: each run's would stay on the broker's disk)."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 4})
    existing = [name for name in names if name in admin.list_topics(timeout=10).topics]
    for future in admin.delete_topics(existing).values() if existing else []:
        future.result(timeout=30)
