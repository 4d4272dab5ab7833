"""The processes of a cluster agree on the resume epoch before bytewax opens the store.

With one recovery directory per process (one volume per pod), each process holds only
part of the store, so none can compute alone the epoch R that bytewax resumes from, nor
delete the snapshots a crash left at epochs >= R (connectors/recovery_store/resume.py says why
they must go). Before the flow is handed to bytewax:

1. every process reads its partitions' progress (bytewax's `exs` and `fronts` rows) and
   sends it to process 0 over TCP (`RECOVERY_RENDEZVOUS_PORT` on process 0's host);
2. process 0 waits until it holds the progress of every partition of the store, computes
   R as bytewax will, records the decision in its directory and answers R to everyone;
3. each process deletes its snapshots at epochs >= R; then bytewax starts.

Why the gathered rows are a consistent cut: a partition is written only by the bytewax
of the process that holds it, only while a cluster execution runs, and timely runs an
execution only once every process is connected. A process in the rendezvous has not
started bytewax, so no execution runs while rows are gathered, and none can start
before every process has its answer.

A process that dies after the rendezvous but before bytewax started leaves the others
waiting in timely's start-up; it must be able to rendezvous again:
- a restarted process other than 0 asks again and gets the same R from process 0,
  which keeps answering until its own bytewax builds the production dataflow (the
  first time bytewax calls the job's source, `signal_start`). Until then no execution
  has run, so R is still right; after it, an execution may have written, so process 0
  stops answering (a process restarted then waits for the new process 0: losing a
  process stops the whole timely cluster);
- a restarted process 0 finds its decision in its directory and answers with it, as
  long as its bytewax had not started (the decision is deleted at that moment).
Deleting snapshots >= R is idempotent, so answering R twice does no harm.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import socketserver
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bytewax.inputs import FixedPartitionedSource, Source

from connectors.recovery_store.errors import RecoveryStoreError, init_command
from connectors.recovery_store.resume_epoch import PartitionProgress, resume_epoch_of

log = logging.getLogger(__name__)

DEFAULT_PORT = 9998
DEFAULT_TIMEOUT_SECONDS = 300.0
DECISION_FILE = "waxstreams-resume-decision.json"
_RETRY_SECONDS = 0.5
_SETTINGS = "RECOVERY_RENDEZVOUS_PORT"
_TIMEOUT = "RECOVERY_RENDEZVOUS_TIMEOUT_SECONDS"


@dataclass(frozen=True)
class Cluster:
    """This process's place in the cluster, as `python -m bytewax.run` is told it."""

    process_id: int
    addresses: tuple[str, ...]  # host:port of every process, in process order

    @property
    def coordinator_host(self) -> str:
        return self.addresses[0].rsplit(":", 1)[0]


def cluster_from(argv: Sequence[str], environ: Mapping[str, str]) -> Cluster | None:
    """The cluster bytewax.run forms from the same arguments (bytewax/run.py `_parse_args`);
    None for a single process."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-i", "--process-id", default=environ.get("BYTEWAX_PROCESS_ID"))
    parser.add_argument("-a", "--addresses", default=environ.get("BYTEWAX_ADDRESSES"))
    known, _ = parser.parse_known_args(argv)
    process_id, addresses = known.process_id, known.addresses
    if process_id is None and "BYTEWAX_POD_NAME" in environ and "BYTEWAX_STATEFULSET_NAME" in environ:
        process_id = environ["BYTEWAX_POD_NAME"].replace(environ["BYTEWAX_STATEFULSET_NAME"] + "-", "")
    if process_id is not None and addresses is None and "BYTEWAX_HOSTFILE_PATH" in environ:
        lines = Path(environ["BYTEWAX_HOSTFILE_PATH"]).read_text().splitlines()
        addresses = ";".join(line.strip() for line in lines if line.strip())
    if process_id is None or not addresses:
        return None  # bytewax runs one process (or refuses the arguments itself)
    listed = tuple(a.strip() for a in addresses.split(";") if a.strip())
    if len(listed) < 2:
        return None
    return Cluster(int(process_id), listed)


@dataclass(frozen=True)
class RendezvousSettings:
    port: int = DEFAULT_PORT
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS


class Gathering:
    """Process 0's view: the progress reported for each partition, until every one is in.

    Pure bookkeeping: no I/O, no clock."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.partitions: dict[int, PartitionProgress] = {}

    def offer(self, process_id: int, progress: Sequence[PartitionProgress]) -> str | None:
        """Take a process's report (again: a restarted process reports the same rows); an error, or None."""
        for part in progress:
            if part.count != self.count:
                return (
                    f"process {process_id} holds partition {part.index} of a {part.count}-partition store, "
                    f"process 0 one of {self.count}: give every process a partition of the same store "
                    f"(`{init_command('DIR', self.count)} --part <process id>`)"
                )
        for part in progress:
            self.partitions[part.index] = part
        return None

    def missing(self) -> list[int]:
        return sorted(set(range(self.count)) - set(self.partitions))

    def resume_epoch(self) -> int | None:
        """bytewax's R once every partition reported, else None."""
        if self.missing():
            return None
        return resume_epoch_of(self.partitions.values())


class Coordinator:
    """Process 0: gathers the reports, decides R once, answers it until bytewax starts."""

    def __init__(
        self,
        directory: Path,
        local: list[PartitionProgress],
        settings: RendezvousSettings,
        cluster: tuple[str, ...] = (),
    ) -> None:
        self.directory, self.local, self.settings = directory, local, settings
        self.cluster = cluster  # its processes' addresses: a process of another cluster is refused
        self.gathering = Gathering(local[0].count)
        self.decided = threading.Condition()
        self.epoch: int | None = _reusable_decision(directory, local)
        self.server: _Server | None = None
        self.stopping = threading.Lock()
        if self.epoch is None:
            self.gathering.offer(0, local)

    def offer(self, process_id: int, progress: list[PartitionProgress]) -> str | None:
        with self.decided:
            if self.epoch is not None:
                return None  # decided (maybe by an earlier process 0): a restarted process gets the same R
            error = self.gathering.offer(process_id, progress)
            if error is None:
                epoch = self.gathering.resume_epoch()
                if epoch is not None:
                    _record_decision(self.directory, epoch, self.local)
                    self.epoch = epoch
                    self.decided.notify_all()
            return error

    def wait(self, timeout: float | None) -> int:
        with self.decided:
            self.decided.wait_for(lambda: self.epoch is not None, timeout)
            if self.epoch is None:
                msg = (
                    f"recovery rendezvous: process 0 waited {timeout or 0:g} s ({_TIMEOUT}) for recovery partitions "
                    f"{self.gathering.missing()} of {self.gathering.count}: start every process of the cluster "
                    f"(-a/--addresses, -i/--process-id or the hostfile), each with its part of the store "
                    f"(`{init_command('DIR', self.gathering.count)} --part <process id>`) and the same {_SETTINGS}"
                )
                raise RecoveryStoreError(msg)
            return self.epoch

    def serve(self, host: str) -> None:
        coordinator = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.connection.settimeout(coordinator.settings.timeout_seconds)
                try:
                    request = json.loads(self.rfile.readline())
                    progress = [PartitionProgress.from_json(p) for p in request["partitions"]]
                    error = coordinator.foreign(request.get("cluster")) or coordinator.offer(
                        int(request["process"]), progress
                    )
                    answer: dict[str, Any] = {"error": error} if error else {"resume_epoch": coordinator.wait(None)}
                except (ValueError, KeyError, TypeError, OSError) as exc:
                    answer = {"error": f"recovery rendezvous: process 0 could not read the request ({exc})"}
                try:
                    self.wfile.write(json.dumps(answer).encode() + b"\n")
                except OSError:
                    pass  # the asking process died: it asks again when restarted

        try:
            server = _Server((host, self.settings.port), Handler)
        except OSError as exc:
            msg = (
                f"recovery rendezvous: process 0 cannot listen on {host}:{self.settings.port} ({exc.strerror}): "
                f"set {_SETTINGS} to a free port, the same for every process of the cluster"
            )
            raise RecoveryStoreError(msg) from None
        self.server = server
        threading.Thread(target=server.serve_forever, name="recovery-rendezvous", daemon=True).start()

    def foreign(self, cluster: list[str] | None) -> str | None:
        """An error for a process of another cluster (two clusters on one host and port), else None."""
        if not self.cluster or cluster is None or tuple(cluster) == self.cluster:
            return None
        return (
            f"recovery rendezvous: port {self.settings.port} is process 0's of another cluster "
            f"({';'.join(self.cluster)}, not {';'.join(cluster)}): give each cluster its own {_SETTINGS}"
        )

    def execution_started(self) -> None:
        """bytewax built the production dataflow: every process is past the rendezvous, and
        from now on partitions may change, so R is no longer answered, here or after a restart."""
        with self.stopping:  # every worker of the process calls it
            (self.directory / DECISION_FILE).unlink(missing_ok=True)
            if self.server is not None:
                self.server.shutdown()
                self.server.server_close()
                self.server = None
                log.info("recovery rendezvous: the cluster started; process 0 stopped answering")


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True  # a restarted process 0 listens again at once
    daemon_threads = True


def _record_decision(directory: Path, epoch: int, local: list[PartitionProgress]) -> None:
    scratch = directory / f".{DECISION_FILE}.{uuid.uuid4().hex}"
    scratch.write_text(json.dumps({"resume_epoch": epoch, "local": [p.to_json() for p in local]}) + "\n")
    os.replace(scratch, directory / DECISION_FILE)


def _reusable_decision(directory: Path, local: list[PartitionProgress]) -> int | None:
    """The R an earlier process 0 decided, if its bytewax never started (so nothing has changed since)."""
    path = directory / DECISION_FILE
    try:
        recorded = json.loads(path.read_text())
        unchanged = {PartitionProgress.from_json(p) for p in recorded["local"]} == set(local)
        epoch = int(recorded["resume_epoch"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        log.warning("recovery rendezvous: %s is unreadable: gathering the progress again", path)
        return None
    if not unchanged:  # cannot happen unless the partitions were replaced: decide afresh
        log.warning("recovery rendezvous: %s is of other partitions: gathering the progress again", path)
        return None
    log.info("recovery rendezvous: resuming the decision of an earlier process 0 (epoch %d)", epoch)
    return epoch


def ask(
    host: str,
    port: int,
    process_id: int,
    progress: list[PartitionProgress],
    timeout: float,
    cluster: tuple[str, ...] = (),
) -> int:
    """Report to process 0 and wait for R; retries while process 0 is not (yet, or again) listening."""
    asked: dict[str, Any] = {"process": process_id, "partitions": [p.to_json() for p in progress]}
    if cluster:
        asked["cluster"] = list(cluster)
    request = json.dumps(asked).encode() + b"\n"
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            msg = (
                f"recovery rendezvous: process {process_id} got no resume epoch from process 0 at {host}:{port} "
                f"within {timeout:g} s ({_TIMEOUT}): start process 0 (it waits for every process), and give every "
                f"process the same {_SETTINGS} and -a/--addresses"
            )
            raise RecoveryStoreError(msg)
        try:
            with socket.create_connection((host, port), timeout=min(left, 5)) as conn:
                conn.settimeout(left)
                conn.sendall(request)
                line = conn.makefile("rb").readline()
        except OSError:
            line = b""
        if line:
            try:
                answer = json.loads(line)
                if "error" in answer:
                    raise RecoveryStoreError(answer["error"])
                return int(answer["resume_epoch"])
            except (ValueError, KeyError, TypeError):
                msg = (
                    f"recovery rendezvous: {host}:{port} answered process {process_id} with something other than a "
                    f"resume epoch: set {_SETTINGS} to a port nothing else uses, the same for every process"
                )
                raise RecoveryStoreError(msg) from None
        time.sleep(min(_RETRY_SECONDS, max(deadline - time.monotonic(), 0)))  # not up, or went away: ask again


_coordinator: Coordinator | None = None  # process 0's, until bytewax starts


class ResumeAgreement:
    """`recovery_store.resume_epoch.AgreeResumeEpoch` for one process of a cluster."""

    def __init__(self, cluster: Cluster, settings: RendezvousSettings) -> None:
        self.cluster, self.settings = cluster, settings

    def __call__(self, directory: Path, local: list[PartitionProgress]) -> int:
        global _coordinator
        host = self.cluster.coordinator_host
        if self.cluster.process_id != 0:
            log.info("recovery rendezvous: asking process 0 at %s:%d for the resume epoch", host, self.settings.port)
            epoch = ask(
                host,
                self.settings.port,
                self.cluster.process_id,
                local,
                self.settings.timeout_seconds,
                self.cluster.addresses,
            )
        else:
            coordinator = Coordinator(directory, local, self.settings, self.cluster.addresses)
            coordinator.serve(host)
            _coordinator = coordinator
            log.info(
                "recovery rendezvous: process 0 waits on %s:%d for the progress of %d processes",
                host,
                self.settings.port,
                len(self.cluster.addresses),
            )
            epoch = coordinator.wait(self.settings.timeout_seconds)
        log.info("recovery rendezvous: the cluster resumes from epoch %d", epoch)
        return epoch


def signal_start(source: Source) -> Source:
    """`source`, telling process 0's coordinator when bytewax first calls it (the execution is built)."""
    if _coordinator is None or not isinstance(source, FixedPartitionedSource):
        return source
    return _SignallingSource(source, _coordinator)


class _SignallingSource(FixedPartitionedSource):
    def __init__(self, inner: FixedPartitionedSource, coordinator: Coordinator) -> None:
        self.inner, self.coordinator = inner, coordinator

    def list_parts(self) -> list[str]:
        # Called by every worker while bytewax builds the production dataflow: after the
        # whole cluster connected and before anything is written to the store.
        self.coordinator.execution_started()
        return self.inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> Any:
        return self.inner.build_part(step_id, for_part, resume_state)
