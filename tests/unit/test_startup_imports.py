"""What a job's process imports before its flow can start: only what the flow needs.

Each check runs in a fresh interpreter, as `python -m bytewax.run` would import the job.
"""

from __future__ import annotations

import json
import os
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


def test_the_s3_clients_model_loader_knows_the_services_botocore_lists() -> None:
    from botocore.loaders import Loader

    from connectors.sinks.s3_client import _session, quick_loader

    botocores = Loader()
    quick = quick_loader(botocores.search_paths)
    for type_name in ("service-2", "paginators-1", "waiters-2", "endpoint-rule-set-1"):
        listed = botocores.list_available_services(type_name)
        known = quick.list_available_services(type_name)
        every_folder = {
            entry.name for path in botocores.search_paths if os.path.isdir(path) for entry in os.scandir(path)
        }
        assert {name for name in every_folder if name in known} == set(listed), type_name
        assert list(known) == listed and len(known) == len(listed)
        assert "no-such-service" not in known and "" not in known and "s3/.." not in known
    # The session's clients load their models through it.
    loader = _session().get_component("data_loader")
    assert type(loader).__qualname__ == type(quick).__qualname__ and loader.search_paths == botocores.search_paths
    assert "s3" in loader.list_available_services("service-2")


def first_client_in_a_fresh_process(before: str) -> dict[str, int]:
    code = (
        "import gc, json\n"
        "from connectors.sinks.s3_client import S3Location\n"
        f"{before}\n"
        "frozen = gc.get_freeze_count()\n"
        "S3Location('bucket', 'prefix', 'http://127.0.0.1:9', 'us-east-1').client()\n"
        "print(json.dumps({'enabled': gc.isenabled(), 'frozen_before': frozen, 'frozen': gc.get_freeze_count()}))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def test_a_job_process_freezes_the_first_s3_clients_objects_and_collects_again_after() -> None:
    # A job froze its start-up objects (skeleton.tune_garbage_collector) before the S3 checks made
    # the first client: botocore's modules and models are frozen with them, never walked again.
    job = first_client_in_a_fresh_process("gc.freeze()")
    assert job["enabled"] and job["frozen"] > job["frozen_before"] + 50_000


def test_any_other_process_keeps_its_collector_as_it_was() -> None:
    assert first_client_in_a_fresh_process("") == {"enabled": True, "frozen_before": 0, "frozen": 0}
    assert first_client_in_a_fresh_process("gc.disable()")["enabled"] is False
