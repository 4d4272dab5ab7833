"""The jobs.

In a job's process (`python -m bytewax.run`), the cycle collector is held off from here until
the job's start tunes it (`skeleton.tune_garbage_collector`): the imports that follow make some
70,000 objects it tracks and next to no garbage, and at CPython's default thresholds it ran
about 180 times over them (about 45 ms of CPU before a run could start). Start-up freezes
them anyway: they are never collected.
"""

import gc
import sys

if getattr(getattr(sys.modules.get("__main__"), "__spec__", None), "name", None) == "bytewax.run":
    gc.disable()
