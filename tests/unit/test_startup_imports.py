"""What a job's process imports before its flow can start: only what the flow needs.

Each check runs in a fresh interpreter, as `python -m bytewax.run` would import the job.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# botocore's client machinery (about 0.1 s of CPU to import): made by the first S3 client,
# which the object sink makes beside the broker checks, or by MSK IAM's credentials.
BOTOCORE_CLIENT = ("botocore.session", "botocore.client", "botocore.config")


def imported_by(statement: str) -> set[str]:
    code = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_importing_the_jobs_leaves_botocore_clients_to_the_first_client() -> None:
    modules = imported_by("import dataflows.movie_impressions, dataflows.booking_correlation")
    assert "connectors.sinks.s3_client" in modules  # the module is there, its client machinery is not
    assert "connectors.transports.kafka_token" in modules
    assert modules.isdisjoint(BOTOCORE_CLIENT), sorted(modules & set(BOTOCORE_CLIENT))


def test_the_first_s3_client_brings_botocore() -> None:
    modules = imported_by(
        "from connectors.sinks.s3_client import S3Location\n"
        "S3Location('bucket', 'prefix', 'http://127.0.0.1:9', 'us-east-1').client()"
    )
    assert set(BOTOCORE_CLIENT) <= modules
