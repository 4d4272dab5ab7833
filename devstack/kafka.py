"""A real single-node Apache Kafka broker (KRaft) on loopback, from Maven Central jars."""

from __future__ import annotations

import base64
import logging
import os
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic

from devstack.processes import ManagedProcess

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
LOG4J = HERE / "log4j.properties"


def broker_classpath(cache_dir: Path) -> str:
    """Resolve the broker's jars with Maven once; later calls reuse the cached folder."""
    lib = cache_dir / "kafka" / "lib"
    stamp = lib / ".complete"
    if not stamp.exists():
        if shutil.which("mvn") is None:
            msg = "Maven (mvn) is not on PATH: install it (apt-get install maven) to fetch Kafka"
            raise RuntimeError(msg)
        shutil.rmtree(lib, ignore_errors=True)
        lib.mkdir(parents=True)
        log.info("resolving Kafka jars from Maven Central into %s", lib)
        subprocess.run(
            [
                "mvn",
                "-q",
                "-B",
                "-f",
                str(POM),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={lib}",
                "-DincludeScope=runtime",
            ],
            check=True,
        )
        stamp.touch()
    return os.pathsep.join(str(p) for p in sorted(lib.glob("*.jar")))


def _cluster_id() -> str:
    # Same form as `kafka-storage random-uuid`: 16 random bytes, URL-safe base64.
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@dataclass
class KafkaBroker:
    """One combined broker+controller node listening only on 127.0.0.1."""

    port: int
    controller_port: int
    data_dir: Path
    cache_dir: Path
    heap: str = "384m"
    _process: ManagedProcess | None = field(default=None, init=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        config = self.data_dir / "server.properties"
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data_dir / "logs"),
            "num.partitions": "2",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
        }
        config.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        return config

    def start(self, timeout: float = 90.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        classpath = broker_classpath(self.cache_dir)
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
            subprocess.run(
                # "=" form: an id may start with "-", which argparse would take for an option.
                [*java, "kafka.tools.StorageTool", "format", f"--cluster-id={_cluster_id()}", "-c", str(config)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        self._process = ManagedProcess.spawn([*java, "kafka.Kafka", str(config)], self.data_dir / "broker.log")
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
                AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=5)
                return
            except Exception:
                if time.monotonic() > deadline:
                    msg = f"Kafka broker not ready after {timeout}s; see {self.data_dir / 'broker.log'}"
                    raise RuntimeError(msg) from None
                time.sleep(0.5)

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None

    def create_topics(self, names: list[str], partitions: int = 2) -> None:
        create_topics(self.bootstrap, names, partitions)


def create_topics(bootstrap: str, names: list[str], partitions: int = 2) -> None:
    """Create topics (idempotently) and wait until the broker reports them."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names if n not in existing]
    for future in admin.create_topics(wanted).values() if wanted else []:
        future.result(timeout=30)
