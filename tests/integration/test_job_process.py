"""How a job's process starts and ends under `python -m bytewax.run`: the cycle collector is
held off while the job's modules are imported (dataflows/__init__.py) and on while it runs; a
run that ends without error runs the exit handlers, flushes its output and exits 0 without the
interpreter's teardown (connectors/engine.exit_when_run_ends); a run that fails ends as Python
ends it."""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.support.jobs import run_dataflow

# A flow built by the jobs' own `skeleton.flow_from_env`. The module keeps an object whose
# finaliser only the interpreter's teardown runs, and registers an exit handler; both leave a
# line in MARKS. FAIL=1 makes the step raise mid-run; PLAIN=1 builds it without the jobs' start.
FLOW = textwrap.dedent(
    """
    import atexit
    import gc
    import os

    from bytewax import operators as op
    from bytewax.connectors.stdio import StdOutSink
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSource

    from dataflows import skeleton

    MARKS = os.open(os.environ["MARKS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(MARKS, b"import:gc-on\\n" if gc.isenabled() else b"import:gc-off\\n")


    class TornDown:
        def __del__(self, write=os.write, fd=MARKS):
            write(fd, b"teardown\\n")


    KEPT = TornDown()
    atexit.register(os.write, MARKS, b"atexit\\n")


    def step(x):
        if x == 1:
            os.write(MARKS, b"run:gc-on\\n" if gc.isenabled() else b"run:gc-off\\n")
        if os.environ.get("FAIL") and x == 2:
            raise RuntimeError("the step failed")
        return x * 10


    def build(environ, argv):
        flow = Dataflow("exit")
        op.output("out", op.map("step", op.input("in", flow, TestingSource([1, 2, 3])), step), StdOutSink())
        return flow


    def __getattr__(name):
        if name == "flow" and os.environ.get("PLAIN"):  # a flow the jobs' start does not build
            return build(os.environ, [])
        if name == "flow":
            return skeleton.flow_from_env("exit", build)
        raise AttributeError(name)
    """
)


def run(tmp_path: Path, **env: str):
    (tmp_path / "exit_flow.py").write_text(FLOW)
    marks = tmp_path / "marks"
    result = run_dataflow("exit_flow:flow", {"PYTHONPATH": str(tmp_path), "MARKS": str(marks), **env}, timeout=120)
    return result, marks.read_text().split() if marks.exists() else []


def test_a_run_that_ends_runs_the_exit_handlers_and_flushes_but_skips_the_teardown(tmp_path: Path) -> None:
    result, marks = run(tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["10", "20", "30"]  # buffered output is flushed
    assert marks[2:] == ["atexit"]  # the finaliser that only teardown runs did not run


def test_a_run_that_fails_ends_as_python_ends_it(tmp_path: Path) -> None:
    result, marks = run(tmp_path, FAIL="1")
    assert result.returncode == 1
    assert "the step failed" in result.stderr
    assert marks[2:] == ["atexit", "teardown"]


def test_the_collector_is_held_off_while_the_job_is_imported_and_on_while_it_runs(tmp_path: Path) -> None:
    result, marks = run(tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert marks[:2] == ["import:gc-off", "run:gc-on"]


def test_the_collector_is_on_while_any_flow_runs_that_imported_the_jobs(tmp_path: Path) -> None:
    result, marks = run(tmp_path, PLAIN="1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert marks[:2] == ["import:gc-off", "run:gc-on"]
