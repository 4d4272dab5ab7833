"""The jobs.

In a job's process (`python -m bytewax.run`), the cycle collector is held off while the
job's modules are imported, and on again once the run starts (whatever the flow, a job's or
not): the imports make some 70,000 objects it tracks and next to no garbage, and at CPython's
default thresholds it ran about 180 times over them (about 45 ms of CPU before a run could
start). A job's start freezes them anyway (`skeleton.tune_garbage_collector`): they are never
collected.
"""

import functools
import gc
import sys

_main = sys.modules.get("__main__")
if getattr(getattr(_main, "__spec__", None), "name", None) == "bytewax.run" and callable(
    _run := getattr(_main, "cli_main", None)
):
    gc.disable()

    @functools.wraps(_run)
    def _collector_on_as_the_run_starts(**kwargs):  # type: ignore[no-untyped-def]
        gc.enable()
        return _run(**kwargs)

    _main.cli_main = _collector_on_as_the_run_starts  # type: ignore[union-attr]
