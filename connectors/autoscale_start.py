"""Start one process of a job's cluster from its replica count; restart it when the count changes.

    python -m connectors.autoscale_start dataflows.booking_correlation:flow -w 1 -s 10 -b 0

is what a pod runs (k8s/) and what the local supervisor runs per process (devstack/autoscale.py),
instead of `python -m bytewax.run`. Before each start it:
1. reads the replica count (`CLUSTER_REPLICAS`): `statefulset` asks the Kubernetes API for
   the pod's StatefulSet's `spec.replicas` (what an HPA or KEDA sets), with the pod's
   service account; `file:PATH` reads `{"replicas": N, "id": ...}` (the local supervisor);
   a number is a fixed count;
2. derives this process's id (its ordinal: `CLUSTER_ORDINAL`, else the `-N` ending of
   `BYTEWAX_POD_NAME` or the host name) and every process's address (`CLUSTER_ADDRESSES`:
   a template with `{ordinal}`, or a `;` list at least as long as the count);
3. lays out the recovery store so any count from the minimum up finds all of it: the
   store has `BYTEWAX_RECOVERY_PARTS` partitions (the minimum process count), partition i
   on process i's volume, so they are all on processes that always run; a process past
   them holds none (bytewax reads and writes partitions wherever the cluster holds them);
   every process writes the same sink namespace (from the StatefulSet's identity, or
   the supervisor's), so a sink partition that moves to another process on a rescale
   keeps its run's namespace even before its first snapshot;
4. runs `python -m bytewax.run TARGET -a ADDRESSES -i ORDINAL [options]` as its child.

While the child runs it reads the count every `CLUSTER_REPLICAS_POLL_SECONDS` (5). When the
count changes it stops the child and starts it again with the new count: every process of
the cluster does so, so the whole cluster restarts together and resumes from the recovery
store (the processes agree on the resume epoch first: connectors/rendezvous.py). A process
whose ordinal is past the count (being removed) waits for its end. When the child exits on
its own, the process exits with its code (Kubernetes restarts the pod as before), unless
the count changed meanwhile (a peer went away in the rescale): then it restarts at once.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from connectors.autoscale_replicas import Replicas, ReplicasError, replicas_from
from connectors.env import Env
from connectors.errors import ConfigError, WaxstreamsError
from connectors.recovery_store.namespace import NAMESPACE_FILE
from connectors.recovery_store.partition_files import init_store
from connectors.recovery_store.resume import recovery_directory

log = logging.getLogger(__name__)

DEFAULT_POLL_SECONDS = 5.0
STOP_GRACE_SECONDS = 10.0
# The child is told its place with -a/-i only; bytewax.run would derive one from these too.
_PLACE_VARIABLES = frozenset(
    {"BYTEWAX_POD_NAME", "BYTEWAX_STATEFULSET_NAME", "BYTEWAX_HOSTFILE_PATH", "BYTEWAX_PROCESS_ID", "BYTEWAX_ADDRESSES"}
)


class StartError(ReplicasError, ConfigError):
    """A setting of the cluster start-up is wrong; the message names it and the fix."""


# The plan: pure ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    count: int  # processes in the cluster
    ordinal: int  # this process's id
    addresses: tuple[str, ...]
    partitions: int  # of the recovery store: process i < partitions holds partition i

    @property
    def holds_partition(self) -> bool:
        return self.ordinal < self.partitions

    def bytewax_args(self) -> list[str]:
        if self.count == 1:
            return []
        return ["-a", ";".join(self.addresses), "-i", str(self.ordinal)]


def ordinal_from(environ: Mapping[str, str]) -> int:
    if environ.get("CLUSTER_ORDINAL", "").strip():
        try:
            return int(environ["CLUSTER_ORDINAL"])
        except ValueError:
            msg = (
                f"CLUSTER_ORDINAL={environ['CLUSTER_ORDINAL']!r} is not a number: set this process's index (0, 1, ...)"
            )
            raise StartError(msg) from None
    name = environ.get("BYTEWAX_POD_NAME") or environ.get("HOSTNAME", "")
    match = re.search(r"-(\d+)$", name)
    if match is None:
        msg = (
            f"cannot tell this process's index from the pod name {name!r}: run it as a StatefulSet pod "
            "(BYTEWAX_POD_NAME from metadata.name, ending in -<ordinal>) or set CLUSTER_ORDINAL"
        )
        raise StartError(msg)
    return int(match.group(1))


def addresses_for(spec: str, count: int) -> tuple[str, ...]:
    """Every process's host:port from `CLUSTER_ADDRESSES`: a template with {ordinal}, or a ; list."""
    if "{ordinal}" in spec:
        return tuple(spec.replace("{ordinal}", str(i)) for i in range(count))
    listed = tuple(a.strip() for a in spec.split(";") if a.strip())
    if len(listed) < count:
        msg = (
            f"CLUSTER_ADDRESSES lists {len(listed)} addresses for {count} processes: give a template such as "
            "'job-{ordinal}.job:9999', or one address per process up to the maximum count"
        )
        raise StartError(msg)
    return listed[:count]


def plan(count: int, ordinal: int, address_spec: str, partitions: int) -> Plan:
    if partitions < 1:
        msg = f"BYTEWAX_RECOVERY_PARTS={partitions}: set it to the minimum process count (>= 1)"
        raise StartError(msg)
    if count < partitions:
        msg = (
            f"the replica count {count} is below BYTEWAX_RECOVERY_PARTS={partitions}: the recovery partitions live on "
            f"processes 0..{partitions - 1}, so the cluster needs them all; keep the minimum count (HPA minReplicas) "
            "at BYTEWAX_RECOVERY_PARTS"
        )
        raise StartError(msg)
    return Plan(count, ordinal, addresses_for(address_spec, count), partitions)


def namespace_of(identity: str) -> str:
    """A sink namespace (connectors/recovery_store/namespace.py's form) every process derives alike."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", identity)[:64]


# The store's layout --------------------------------------------------------------------------


def prepare_store(directory: Path, plan: Plan, namespace: str | None) -> str:
    """This process's share of the recovery store (created once); says what it holds."""
    directory.mkdir(parents=True, exist_ok=True)
    if namespace is not None:
        _write_namespace(directory, namespace)
    if plan.holds_partition:
        return init_store(directory, plan.partitions, only=plan.ordinal)
    stray = sorted(p.name for p in directory.glob("*.sqlite3"))
    if stray:
        msg = (
            f"recovery directory {directory} of process {plan.ordinal} holds {', '.join(stray)}, but the store's "
            f"{plan.partitions} partitions (BYTEWAX_RECOVERY_PARTS) belong on processes 0..{plan.partitions - 1}: "
            "move each part-<i>.sqlite3 to process i's volume, or raise BYTEWAX_RECOVERY_PARTS to the store's size"
        )
        raise StartError(msg)
    return f"recovery directory {directory}: no partition here (processes 0..{plan.partitions - 1} hold them)"


def _write_namespace(directory: Path, namespace: str) -> None:
    path = directory / NAMESPACE_FILE
    if not path.exists():
        scratch = directory / f".{NAMESPACE_FILE}.{uuid.uuid4().hex}"
        scratch.write_text(namespace + "\n")
        try:
            os.link(scratch, path)  # atomic, and never replaces one already there
        except FileExistsError:
            pass
        finally:
            scratch.unlink()
    held = path.read_text().strip()
    if held != namespace:
        log.warning(
            "recovery directory %s: sink namespace %s, not the cluster's %s (a store made before the cluster "
            "named it): a sink partition without state on this process writes under its own",
            directory,
            held,
            namespace,
        )


# The process ---------------------------------------------------------------------------------


@dataclass
class Settings:
    target: str
    passthrough: list[str]  # bytewax.run options (-w, -s, -b, -r)
    directory: Path | None
    partitions: int
    address_spec: str
    ordinal: int
    poll_s: float

    @classmethod
    def from_env(cls, argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
        if not argv:
            msg = "usage: python -m connectors.autoscale_start MODULE:FLOW [python -m bytewax.run options]"
            raise StartError(msg)
        spec = environ.get("CLUSTER_ADDRESSES", "").strip()
        if not spec:
            msg = "CLUSTER_ADDRESSES is not set: give the processes' host:port as a template ('job-{ordinal}.job:9999')"
            raise StartError(msg)
        env = Env(environ, StartError)
        partitions = int(env.number("BYTEWAX_RECOVERY_PARTS", 1, minimum=1, integer=True))
        poll_s = env.number("CLUSTER_REPLICAS_POLL_SECONDS", DEFAULT_POLL_SECONDS, minimum=0.1)
        return cls(
            argv[0],
            list(argv[1:]),
            recovery_directory(argv[1:], environ),
            partitions,
            spec,
            ordinal_from(environ),
            poll_s,
        )


class ClusterProcess:
    """Runs the child for the current count; restarts it when the count changes."""

    def __init__(
        self,
        settings: Settings,
        replicas: Replicas,
        environ: Mapping[str, str],
        launcher: Sequence[str] = (sys.executable, "-m", "bytewax.run"),
    ) -> None:
        self.settings, self.replicas, self.launcher = settings, replicas, list(launcher)
        self.env = {k: v for k, v in environ.items() if k not in _PLACE_VARIABLES}
        self.child: subprocess.Popen | None = None
        self.stopping = threading.Event()

    def read_count(self) -> int | None:
        try:
            return self.replicas.count()
        except (OSError, ValueError, KeyError, TypeError) as exc:  # the API or the file, briefly away
            log.warning("cluster: cannot read the replica count (%s); keeping %s", exc, "the current one")
            return None

    def terminate(self, *_: object) -> None:
        """SIGTERM: the pod is going away; so does the child."""
        self.stopping.set()
        self._stop_child()

    def run(self) -> int:
        namespace = None
        while not self.stopping.is_set():
            count = self.read_count()
            if count is None:
                self.stopping.wait(self.settings.poll_s)
                continue
            if self.settings.ordinal >= count:
                log.info(
                    "cluster: process %d is past the count %d: waiting to be removed", self.settings.ordinal, count
                )
                self._wait_for_change(count)
                continue
            current = plan(count, self.settings.ordinal, self.settings.address_spec, self.settings.partitions)
            if self.settings.directory is not None:
                if namespace is None:
                    identity = self.replicas.identity()
                    namespace = namespace_of(identity) if identity else None
                log.info("cluster: %s", prepare_store(self.settings.directory, current, namespace))
            rc = self._run_child(current)
            if rc is not None:
                return rc
        return 0

    def _run_child(self, current: Plan) -> int | None:
        """The child's exit code, or None when the count changed (start again)."""
        argv = [*self.launcher, self.settings.target, *current.bytewax_args()]
        log.info(
            "cluster: starting process %d of %d (%s)",
            current.ordinal,
            current.count,
            " ".join(argv[len(self.launcher) :]),
        )
        self.child = subprocess.Popen([*argv, *self.settings.passthrough], env=self.env, preexec_fn=_die_with_parent)
        while True:
            if self.stopping.wait(self.settings.poll_s if self.child.poll() is None else 0):
                return self.child.wait()
            rc = self.child.poll()
            count = self.read_count()
            if count is not None and count != current.count:
                log.info("cluster: the replica count changed %d -> %d: restarting with it", current.count, count)
                self._stop_child()
                return None
            if rc is not None:
                log.info("cluster: process %d exited with %d", current.ordinal, rc)
                return rc

    def _wait_for_change(self, count: int) -> None:
        while not self.stopping.wait(self.settings.poll_s):
            now = self.read_count()
            if now is not None and now != count:
                return

    def _stop_child(self) -> None:
        child = self.child
        if child is None or child.poll() is not None:
            return
        child.terminate()
        try:
            child.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _die_with_parent() -> None:
    """The child gets SIGKILL if this process dies, however it dies: never a bytewax left behind."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (linux/prctl.h)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env(sys.argv[1:] if argv is None else argv, os.environ)
        process = ClusterProcess(settings, replicas_from(os.environ), os.environ)
        signal.signal(signal.SIGTERM, process.terminate)  # as PID 1 in a pod, unhandled SIGTERM is ignored
        signal.signal(signal.SIGINT, process.terminate)
        return process.run()
    except WaxstreamsError as exc:
        print(f"autoscale_start: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
