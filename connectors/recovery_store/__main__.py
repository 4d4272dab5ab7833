"""Set up a recovery store, so a wrong `-r` is one line instead of a Rust panic:

python -m connectors.recovery_store init DIR --partitions N   # idempotent, creates DIR
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from connectors.recovery_store.errors import RecoveryStoreError
from connectors.recovery_store.partition_files import init_store


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m connectors.recovery_store", description="Set up a recovery store for the jobs."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="create DIR and its recovery partitions (idempotent)")
    init.add_argument("directory", type=Path, metavar="DIR")
    init.add_argument("--partitions", type=int, default=1, help="partitions of the store (default 1)")
    init.add_argument("--part", type=int, default=None, help="create only this partition (one volume per pod)")
    args = parser.parse_args(argv)
    try:
        print(init_store(args.directory, args.partitions, args.part))
    except (RecoveryStoreError, OSError) as exc:
        print(f"recovery_store: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
