"""`python -m devstack.autoscale`: a job as local processes that scale themselves, as on Kubernetes.

Each process is `python -m connectors.autoscale_start` (what a pod runs), told its ordinal
and reading the replica count from a file (`CLUSTER_REPLICAS=file:...`) instead of the
StatefulSet. This module plays the other parts:
- the StatefulSet (`LocalCluster`): keeps processes 0..N-1 running, restarts one that
  exits (the kubelet), stops those past N, each with its own recovery directory;
- the autoscaler (`Autoscaler`): every period it reads the processes' own metrics
  (`process_cpu_seconds_total` on each one's METRICS_PORT), applies the scaling rule
  (connectors/autoscale_policy.py, windows shortened by the arguments) and writes the
  new count.

    make up && python -m devstack.autoscale --job booking-correlation --min 1 --max 2
    # in another shell, a load ramp:
    python -m producers.bookings --count 200000 --rate 0
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from connectors.autoscale_policy import Sample, ScalingRule, decide
from devstack.processes import child_setup, free_port

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
TARGETS = {
    "movie-impressions": "dataflows.movie_impressions:flow",
    "booking-correlation": "dataflows.booking_correlation:flow",
}
_CPU = re.compile(r"^process_cpu_seconds_total (\S+)$", re.MULTILINE)


@dataclass
class _Process:
    popen: subprocess.Popen
    log: Path


@dataclass
class LocalCluster:
    """Processes 0..count-1 of a job, each through the pods' start-up (connectors/autoscale_start.py)."""

    target: str
    env: dict[str, str]
    workdir: Path
    minimum: int
    maximum: int
    snapshot_s: int = 1
    poll_s: float = 0.5
    count: int = 0
    processes: dict[int, _Process] = field(default_factory=dict)
    starts: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.replicas_file = self.workdir / "replicas.json"
        try:  # the cluster's name outlives a restart of the supervisor, as its recovery directories do
            self.identity = json.loads(self.replicas_file.read_text())["id"]
        except (OSError, ValueError, KeyError):
            self.identity = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
        self.addresses = [f"127.0.0.1:{free_port()}" for _ in range(self.maximum)]
        self.metrics_ports = [free_port() for _ in range(self.maximum)]
        self.common_env = {
            **self.env,
            "CLUSTER_REPLICAS": f"file:{self.replicas_file}",
            "CLUSTER_ADDRESSES": ";".join(self.addresses),
            "CLUSTER_REPLICAS_POLL_SECONDS": str(self.poll_s),
            "BYTEWAX_RECOVERY_PARTS": str(self.minimum),
            "RECOVERY_RENDEZVOUS_PORT": self.env.get("RECOVERY_RENDEZVOUS_PORT", str(free_port())),
        }
        self._cpu: dict[int, tuple[float, float]] = {}  # ordinal -> (time, cpu seconds) last read

    def directory(self, ordinal: int) -> Path:
        return self.workdir / f"process-{ordinal}"

    def scale_to(self, count: int, **env: str) -> None:
        """Write the new count (the running processes restart with it), stop those past it, start the missing."""
        if not 1 <= count <= self.maximum:
            msg = f"process count {count}: this cluster runs 1..{self.maximum}"
            raise ValueError(msg)
        self.common_env.update(env)
        scratch = self.replicas_file.with_suffix(".tmp")
        scratch.write_text(json.dumps({"replicas": count, "id": self.identity}))
        os.replace(scratch, self.replicas_file)
        log.info("autoscale: %d -> %d processes", self.count, count)
        self.count = count
        for ordinal in sorted(self.processes):
            if ordinal >= count:
                self._stop(ordinal)
        self.ensure_running()
        self._cpu.clear()

    def ensure_running(self) -> list[int]:
        """Start processes 0..count-1 that are not running (as the kubelet restarts a pod); which were."""
        started = []
        for ordinal in range(self.count):
            process = self.processes.get(ordinal)
            if process is None or process.popen.poll() is not None:
                self._start(ordinal)
                started.append(ordinal)
        return started

    def _start(self, ordinal: int) -> None:
        self.starts[ordinal] = self.starts.get(ordinal, 0) + 1
        log_file = self.workdir / f"process-{ordinal}-start-{self.starts[ordinal]}.log"
        env = {
            **os.environ,
            **self.common_env,
            "CLUSTER_ORDINAL": str(ordinal),
            "METRICS_PORT": str(self.metrics_ports[ordinal]),
        }
        argv = [sys.executable, "-m", "connectors.autoscale_start", self.target, "-w", "1"]
        argv += ["-r", str(self.directory(ordinal)), "-s", str(self.snapshot_s), "-b", "0"]
        with log_file.open("ab") as out:
            popen = subprocess.Popen(
                argv,
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its bytewax child is in its group: one kill takes both, as a pod's
                preexec_fn=child_setup(),
            )
        self.processes[ordinal] = _Process(popen, log_file)

    def _stop(self, ordinal: int) -> None:
        process = self.processes.pop(ordinal)
        _signal_group(process.popen, signal.SIGTERM)
        try:
            process.popen.wait(15)
        except subprocess.TimeoutExpired:
            _signal_group(process.popen, signal.SIGKILL)
            process.popen.wait()

    def kill(self) -> None:
        """SIGKILL every process and its child at once: a node lost, every pod evicted."""
        for process in self.processes.values():
            _signal_group(process.popen, signal.SIGKILL)
        for process in self.processes.values():
            process.popen.wait()

    def stop(self) -> None:
        for ordinal in sorted(self.processes):
            self._stop(ordinal)

    def wait(self, timeout: float) -> list[int]:
        """Exit codes of the running processes once all have ended (a bounded run)."""
        deadline = time.monotonic() + timeout
        codes = []
        for ordinal in sorted(self.processes):
            try:
                codes.append(self.processes[ordinal].popen.wait(max(deadline - time.monotonic(), 0.1)))
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        return codes

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(self.workdir.glob("*.log")))

    def cpu_utilisation(self) -> float | None:
        """CPU seconds per second used by the processes' jobs, over one CPU each (0.0 .. 1.0);
        None while any of them has no two readings yet (starting, restarting)."""
        rates = []
        now = time.monotonic()
        for ordinal in range(self.count):
            seconds = _scrape_cpu(self.metrics_ports[ordinal])
            previous = self._cpu.get(ordinal)
            if seconds is None:
                self._cpu.pop(ordinal, None)
                continue
            self._cpu[ordinal] = (now, seconds)
            if previous is not None and seconds >= previous[1] and now > previous[0]:
                rates.append((seconds - previous[1]) / (now - previous[0]))
        if len(rates) < self.count:
            return None
        return sum(rates) / self.count


def _signal_group(popen: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(popen.pid, sig)
    except ProcessLookupError:
        pass


def _scrape_cpu(port: int) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            match = _CPU.search(response.read().decode())
    except OSError:
        return None
    return float(match.group(1)) if match else None


@dataclass
class Autoscaler:
    """The HPA's part: samples the cluster's CPU every period, applies the rule, sets the count.

    One sample per period, the CPU averaged over it (as CloudWatch's one-minute datapoints):
    shorter samples would see each snapshot's burst as load and keep an idle job up."""

    cluster: LocalCluster
    rule: ScalingRule
    # After a rescale the processes stop, start, rejoin and catch up: seconds of low CPU that
    # are the restart, not a quiet job. Their samples are not counted (KDA does not judge its
    # metric while it is AUTOSCALING either).
    settle_s: float = 10.0
    settled_at: float = 0.0
    decisions: list[tuple[float, int, int, str]] = field(default_factory=list)  # (time, from, to, why)
    samples: list[Sample] = field(default_factory=list)
    history: list[tuple[float, int, float | None]] = field(default_factory=list)  # (time, count, CPU)

    def step(self) -> None:
        self.cluster.ensure_running()
        now = time.monotonic()
        cpu = self.cluster.cpu_utilisation()
        self.history.append((time.time(), self.cluster.count, cpu))
        if cpu is not None and now >= self.settled_at:
            self.samples.append(Sample(now, cpu))
        keep = self.rule.period_s * max(self.rule.up_periods, self.rule.down_periods) + self.rule.period_s
        self.samples = [s for s in self.samples if s.at > now - keep]
        decision = decide(self.samples, now, self.cluster.count, self.cluster.minimum, self.cluster.maximum, self.rule)
        if decision.count != self.cluster.count:
            log.info("autoscale: %s (CPU %s)", decision.reason, f"{cpu:.0%}" if cpu is not None else "unknown")
            self.decisions.append((time.time(), self.cluster.count, decision.count, decision.reason))
            self.cluster.scale_to(decision.count)
            self.samples = []  # a new cluster: a new series, as KDA starts one after a rescale
            self.settled_at = now + self.settle_s

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.rule.period_s):
            self.step()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.autoscale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", choices=sorted(TARGETS), default="booking-correlation")
    parser.add_argument("--min", type=int, default=1, help="minimum processes (the store's partitions)")
    parser.add_argument("--max", type=int, default=2, help="maximum processes")
    parser.add_argument("--period", type=float, default=5.0, help="seconds per datapoint (KDA: 60)")
    parser.add_argument("--up-periods", type=int, default=3, help="datapoints >= --up-threshold to scale up (KDA: 15)")
    parser.add_argument(
        "--down-periods", type=int, default=12, help="datapoints < --down-threshold to scale down (KDA: 360)"
    )
    parser.add_argument("--up-threshold", type=float, default=0.75)
    # KDA's 10 % is of a KPU; an idle local process holding keyed state uses 5-15 % of a core.
    parser.add_argument("--down-threshold", type=float, default=0.20)
    parser.add_argument("--workdir", type=Path, default=ROOT / ".cache" / "autoscale")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rule = ScalingRule(args.period, args.up_threshold, args.up_periods, args.down_threshold, args.down_periods)
    workdir = args.workdir / args.job
    cluster = LocalCluster(TARGETS[args.job], {}, workdir, args.min, args.max, snapshot_s=10)  # as k8s/ does
    log.info("autoscale: %s as %d..%d local processes; logs and recovery in %s", args.job, args.min, args.max, workdir)
    cluster.scale_to(args.min)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        Autoscaler(cluster, rule).run(stop)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
