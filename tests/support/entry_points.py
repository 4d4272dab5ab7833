"""A flow run in this process the ways bytewax runs it: 1 worker, 2 workers of one process, and
2 processes of 1 worker (cluster_main on loopback, a thread per process), as the
`entry_point` fixture, parametrized over the three (bytewax's own tests do the same)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import timedelta

import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig
from bytewax.testing import cluster_main, run_main

from devstack.processes import free_port


@dataclass(frozen=True)
class EntryPoint:
    workers_per_process: int
    processes: int = 1
    timeout_s: float = 300  # a process left hanging after its peer failed fails the test instead

    @property
    def workers(self) -> int:
        return self.workers_per_process * self.processes

    def __call__(
        self, flow: Dataflow, *, epoch_interval: timedelta | None = None, recovery_config: RecoveryConfig | None = None
    ) -> None:
        """Run `flow` to its end; a process's exception is raised here."""
        if self.processes == 1 and self.workers_per_process == 1:
            run_main(flow, epoch_interval=epoch_interval, recovery_config=recovery_config)
            return
        if self.processes == 1:
            cluster_main(
                flow,
                [],
                0,
                epoch_interval=epoch_interval,
                recovery_config=recovery_config,
                worker_count_per_proc=self.workers_per_process,
            )
            return
        addresses = [f"127.0.0.1:{free_port()}" for _ in range(self.processes)]
        errors: list[BaseException] = []

        def process(proc_id: int) -> None:
            try:
                cluster_main(
                    flow,
                    addresses,
                    proc_id,
                    epoch_interval=epoch_interval,
                    recovery_config=recovery_config,
                    worker_count_per_proc=self.workers_per_process,
                )
            except BaseException as exc:  # handed to the test's thread below
                errors.append(exc)

        threads = [threading.Thread(target=process, args=(i,), daemon=True) for i in range(self.processes)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.timeout_s)
        if errors:
            # A failed process's peers see it as a panic of their send threads: raise the failure itself.
            raise next((e for e in errors if isinstance(e, Exception)), errors[0])
        if any(thread.is_alive() for thread in threads):
            msg = f"a process of {self.processes} did not finish within {self.timeout_s} s"
            raise AssertionError(msg)


ONE_WORKER = EntryPoint(1)
TWO_WORKERS = EntryPoint(2)
TWO_PROCESSES = EntryPoint(1, processes=2)


# The ids "1" and "2" are the worker counts the tests were parametrized with before.
@pytest.fixture(params=[ONE_WORKER, TWO_WORKERS, TWO_PROCESSES], ids=["1", "2", "2-processes"])
def entry_point(request: pytest.FixtureRequest) -> EntryPoint:
    return request.param
