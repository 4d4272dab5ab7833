"""bytewax 0.21.1's recovery store, as the jobs set it up, check it and repair it before a resume.

- `resume.py`: what a job starts from (`prepare_resume`), and dropping the snapshots a
  crash left past the resume epoch.
- `resume_epoch.py`: the epoch bytewax resumes from, computed from every partition's
  progress (pure).
- `partition_files.py`: bytewax's partitions on disk (one SQLite file each): check,
  create, read progress, delete snapshots.
- `namespace.py`: the store's sink namespace, the run identity beside the partitions.
- `state_settings.py`: the settings that shape the stored state, recorded and checked.
- `errors.py`: the store's one error type and the command that makes a store.
- `__main__.py`: `python -m connectors.recovery_store init DIR --partitions N`.
"""
