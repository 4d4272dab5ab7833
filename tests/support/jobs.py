"""Jobs as a user runs them: `python -m bytewax.run` in its own process, in the foreground
(run_dataflow, run_cluster) or in the background, killable like a crashed pod (Job); and the
one `wait_for` the tests poll a condition with."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devstack.processes import child_setup, free_port

ROOT = Path(__file__).resolve().parents[2]
# What the tests run, per job; the Kubernetes manifests must run the same (tests/deploy).
FLOWS = {
    "movie-impressions": "dataflows.movie_impressions:flow",
    "booking-correlation": "dataflows.booking_correlation:flow",
}


def bytewax_argv(
    target: str,
    *,
    workers: int = 1,
    recovery: Path | None = None,
    snapshot_s: int = 1,
    backup_s: int = 0,
    cluster: tuple[str, int] | None = None,
) -> list[str]:
    """The `python -m bytewax.run` command line, the only place the tests build it.

    `backup_s`: bytewax's -b, the seconds of snapshot history it keeps (epochs are 1 s here);
    `cluster`: (bytewax's -a addresses, this process's -i) for one process of several.
    """
    argv = [sys.executable, "-m", "bytewax.run", target, "-w", str(workers)]
    if recovery is not None:
        argv += ["-r", str(recovery), "-s", str(snapshot_s), "-b", str(backup_s)]
    if cluster is not None:
        argv += ["-a", cluster[0], "-i", str(cluster[1])]
    return argv


def run_dataflow(
    target: str,
    env: dict[str, str],
    *,
    workers: int = 1,
    recovery: Path | None = None,
    timeout: float = 300,
    backup_s: int = 0,
) -> subprocess.CompletedProcess:
    """Run a dataflow the way a user does, in its own process, to its end."""
    if recovery is None:
        env = {"ALLOW_NO_RECOVERY": "true", **env}  # the jobs refuse to run without a store unless told
    return subprocess.run(
        bytewax_argv(target, workers=workers, recovery=recovery, backup_s=backup_s),
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        preexec_fn=child_setup(),
    )


def init_recovery(path: Path, partitions: int = 1, part: int | None = None) -> Path:
    """A store of `partitions`; with `part`, only that partition, as a pod's own volume holds it."""
    path.mkdir(parents=True, exist_ok=True)
    if part is None:
        subprocess.run([sys.executable, "-m", "bytewax.recovery", str(path), str(partitions)], check=True)
    else:
        init = ["init", str(path), "--partitions", str(partitions), "--part", str(part)]
        subprocess.run([sys.executable, "-m", "connectors.recovery_store", *init], cwd=ROOT, check=True)
    return path


def cluster_addresses(processes: int) -> str:
    """bytewax's -a: a free loopback port per process."""
    return ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))


def run_cluster(
    target: str, env: dict[str, str], *, processes: int, recovery: Path | list[Path], timeout: float = 300
) -> list[subprocess.CompletedProcess]:
    """Run a dataflow as `processes` processes of 1 worker on loopback, the way pods run it:
    sharing one recovery directory, or each with its own (a list, in process order)."""
    recoveries = recovery if isinstance(recovery, list) else [recovery] * processes
    env = {"RECOVERY_RENDEZVOUS_PORT": str(free_port()), **env}  # its own: clusters of parallel tests must not meet
    addresses = cluster_addresses(processes)
    procs = [
        subprocess.Popen(
            bytewax_argv(target, recovery=recoveries[i], cluster=(addresses, i)),
            env={**os.environ, **env},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=child_setup(),
        )
        for i in range(processes)
    ]
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
                q.communicate()  # reaped, pipes closed: nothing leaks into the next test as a warning
            raise
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results


def failed_processes(results: list[subprocess.CompletedProcess]) -> str:
    """The processes of a cluster run that did not exit 0, with their exit codes and the ends of
    their logs, whole (an assertion's repr of a list would cut them in the middle); "" if none."""
    return "\n\n".join(
        f"process {i} exited {r.returncode}:\n{r.stderr[-3000:]}" for i, r in enumerate(results) if r.returncode != 0
    )


class Job:
    """A dataflow run in the background as `python -m bytewax.run`, killable like a crashed pod."""

    def __init__(
        self,
        target: str,
        env: dict[str, str],
        log: Path,
        *,
        workers: int = 1,
        recovery: Path | None = None,
        snapshot_s: int = 1,
        cluster: tuple[str, int] | None = None,
        backup_s: int = 0,
    ) -> None:
        """`cluster`: (bytewax's -a addresses, this process's -i) for one process of several;
        `backup_s`: bytewax's -b, the seconds of snapshot history it keeps."""
        argv = bytewax_argv(
            target, workers=workers, recovery=recovery, snapshot_s=snapshot_s, backup_s=backup_s, cluster=cluster
        )
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                argv,
                env={**os.environ, **env},
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=child_setup(),
            )

    def kill(self) -> None:
        """SIGKILL, no goodbye: what a crash or an OOM kill looks like."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def pause(self) -> None:
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 30.0,
    what: str = "condition",
    job: Job | None = None,
    interval: float = 0.2,
) -> Any:
    """Poll `condition` until it returns something truthy, and return that; fail after `timeout`,
    or at once if `job` exits meanwhile (with the end of its output)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if job is not None and job.process.poll() is not None:
            msg = f"the job exited ({job.process.returncode}) while waiting for {what}:\n{job.output()[-3000:]}"
            raise AssertionError(msg)
        if time.monotonic() > deadline:
            msg = f"timed out after {timeout} s waiting for {what}"
            if job is not None:
                msg += f"; the job's output ends:\n{job.output()[-3000:]}"
            raise AssertionError(msg)
        time.sleep(interval)
