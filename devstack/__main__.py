"""`python -m devstack up|down|status`: the local Kafka broker, S3 server and Kinesis for `make up`/`make run`.

Ports and names match the dataflows' defaults (dataflows/settings.py), so the jobs
run against this stack with no configuration.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from devstack.kafka import KafkaBroker, create_topics
from devstack.kinesis import STOP_GRACE_S, KinesisLocal, create_stream
from devstack.processes import port_holder, stop_pid
from devstack.s3 import LOCAL_CREDENTIALS, S3Server, create_bucket

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
STATE = CACHE / "stack"

KAFKA_PORT, CONTROLLER_PORT, S3_PORT = 19092, 19093, 4566
KINESIS_PORT, KINESIS_TLS_PORT = 4568, 4567  # KINESIS_ENDPOINT_URL's default (transports/kinesis/settings.py)
# name -> shards; in memory: gone after `down`
KINESIS_STREAMS = {
    "movie-impressions": 2,
    "movie-impressions-dead-letter": 1,
    "movie-impressions-late": 1,
    "booking-created": 2,
    "booking-events": 2,
    "booking-alerts": 1,
    "booking-unmatched": 1,
    "booking-dead-letter": 1,
}
SERVICES = ("kafka", "s3", "kinesis")
BUCKET = "movie-impressions"
TOPICS = [
    "movie-impressions",
    "movie-impressions-dead-letter",
    "movie-impressions-late",
    "booking-created",
    "booking-events",
    "booking-alerts",
    "booking-unmatched",
    "booking-dead-letter",
]


def _pid(name: str) -> int | None:
    path = STATE / f"{name}.pid"
    if not path.exists():
        return None
    pid = int(path.read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        path.unlink()
        return None
    return pid


def check_free(service: str, *ports: int) -> None:
    """Stop with one line if another process holds a port this stack's `service` needs
    (another checkout's stack, say): else its server would die on the bind, unseen."""
    for port in ports:
        holder = port_holder(port)
        if holder is not None:
            msg = (
                f"{service}: port {port} is held by {holder}, not by this checkout's stack: stop it "
                "(`make down` in the checkout that started it, or kill that pid), then run `make up` again"
            )
            raise SystemExit(msg)


def up() -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    if _pid("kafka") is None:
        check_free("kafka", KAFKA_PORT, CONTROLLER_PORT)
        broker = KafkaBroker(KAFKA_PORT, CONTROLLER_PORT, STATE / "kafka", CACHE)
        broker.start()
        assert broker._process is not None
        (STATE / "kafka.pid").write_text(str(broker._process.pid))
    print(f"kafka  ready at 127.0.0.1:{KAFKA_PORT} (log: {STATE / 'kafka' / 'broker.log'})")
    if _pid("s3") is None:
        check_free("s3", S3_PORT)
        os.environ.update(LOCAL_CREDENTIALS)
        s3 = S3Server(S3_PORT, STATE / "s3.log")
        s3.start()
        assert s3._process is not None
        (STATE / "s3.pid").write_text(str(s3._process.pid))
    create_bucket(f"http://127.0.0.1:{S3_PORT}", BUCKET)
    print(f"s3     ready at http://127.0.0.1:{S3_PORT} (bucket: {BUCKET})")
    create_topics(f"127.0.0.1:{KAFKA_PORT}", TOPICS, partitions=2)
    print(f"topics ready: {', '.join(TOPICS)}")
    up_kinesis()


def up_kinesis() -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    if _pid("kinesis") is None:
        check_free("kinesis", KINESIS_PORT, KINESIS_TLS_PORT)
        kinesis = KinesisLocal(KINESIS_PORT, KINESIS_TLS_PORT, STATE / "kinesis.log", CACHE)
        kinesis.start()
        assert kinesis.pid is not None
        (STATE / "kinesis.pid").write_text(str(kinesis.pid))
    for stream, shards in KINESIS_STREAMS.items():
        create_stream(f"http://127.0.0.1:{KINESIS_PORT}", stream, shards)
    print(f"kinesis ready at http://127.0.0.1:{KINESIS_PORT} (streams: {', '.join(KINESIS_STREAMS)})")


def down() -> None:
    for name in reversed(SERVICES):
        pid = _pid(name)
        if pid is not None:
            stop_pid(pid, STOP_GRACE_S if name == "kinesis" else 15.0)
            print(f"{name} stopped")
        (STATE / f"{name}.pid").unlink(missing_ok=True)


def status() -> int:
    running = {name: _pid(name) for name in SERVICES}
    for name, pid in running.items():
        print(f"{name}: {f'running (pid {pid})' if pid else 'stopped'}")
    return 0 if all(running.values()) else 1


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "reset"])
    args = parser.parse_args()
    if args.command == "up":
        up()
    elif args.command == "down":
        down()
    elif args.command == "reset":  # a clean broker and bucket
        down()
        import shutil

        shutil.rmtree(STATE, ignore_errors=True)
    else:
        return status()
    return 0


if __name__ == "__main__":
    sys.exit(main())
