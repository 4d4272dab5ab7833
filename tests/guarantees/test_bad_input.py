"""Bad input never stops the job and is never silently dropped (property-based)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from dataflows.dead_letters import DeadLetter, LateEvent
from dataflows.event_time import NO_WATERMARK
from dataflows.impressions.decode import MovieImpression, decode_impression
from dataflows.impressions.slicing import slice_batch
from dataflows.impressions.windows import WindowSlice
from dataflows.untrusted_json import InvalidEvent
from producers.kafka_producer import produce_messages
from producers.movie_impressions import TrafficShape, generate
from tests.support.data import make_topics, read_s3_rows, read_topic
from tests.support.factories import record_batch, tally_dict
from tests.support.jobs import FLOWS, init_recovery, run_dataflow
from tests.support.oracles import expected_rows, raw_of

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
# Ids: any non-blank text without control characters (the input rules, dataflows/untrusted_json.py).
id_text = st.text(st.characters(blacklist_categories=["Cc", "Cs"]), min_size=1, max_size=8).filter(str.strip)
valid_event = st.fixed_dictionaries(
    {
        "movieId": id_text | st.integers(0, 10**6),
        "userId": id_text | st.integers(0, 10**6),
        "timestamp": st.integers(1_000_000_000_000, 2_000_000_000_000),
    }
)
wrong_type = st.sampled_from(["movieId", "userId", "timestamp"]).flatmap(
    lambda field: valid_event.flatmap(
        lambda event: (
            st.lists(st.integers(), max_size=2)
            | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
            | st.floats(allow_nan=False)
            | st.booleans()
            | st.none()
            | st.just("")
        ).map(lambda bad: json.dumps({**event, field: bad}).encode())
    )
)

# Messages that are invalid by construction (the oracle must not ask the code under test).
bad_messages = st.one_of(
    st.binary(max_size=200).map(lambda b: b"\xff" + b),  # never UTF-8 JSON
    json_values.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.text(max_size=8).filter(lambda k: k != "movieId"), json_values, max_size=5).map(
        lambda d: json.dumps(d).encode()
    ),
    wrong_type,
    st.just(b""),
    st.integers(65_537, 100_000).map(
        lambda n: b'{"movieId":"1","userId":"2","timestamp":1546845718557,"p":"' + b"x" * n + b'"}'
    ),
)


@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()) | wrong_type)
def test_decode_either_accepts_or_explains(raw: bytes) -> None:
    try:
        event = decode_impression(raw)
    except InvalidEvent as exc:
        assert str(exc)
        return
    assert isinstance(event, MovieImpression) and event.movie_id.strip() and event.user_id.strip()
    assert isinstance(event.timestamp, int)


@given(valid_event.map(lambda e: json.dumps(e).encode()))
def test_valid_events_are_accepted(raw: bytes) -> None:
    event = decode_impression(raw)
    assert event.movie_id == str(json.loads(raw)["movieId"])


@given(st.lists(bad_messages | valid_event.map(lambda e: json.dumps(e).encode()), max_size=60))
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_every_message_is_accounted_for(values: list[bytes]) -> None:
    items, _ = slice_batch(
        "0-t",
        record_batch(values),
        NO_WATERMARK,
        window_ms=900_000,
        max_out_of_orderness_ms=0,
    )
    dead = [i for i in items if isinstance(i, DeadLetter)]
    late = [i for i in items if isinstance(i, LateEvent)]
    counted = sum(c for s in items if isinstance(s, WindowSlice) for c, _ in tally_dict(s.tallies).values())
    assert len(dead) + len(late) + counted == len(values)
    assert all(d.error and values[d.position.offset] == d.raw for d in dead)


@given(st.lists(bad_messages, min_size=40, max_size=120))
@settings(
    max_examples=2,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_running_job_routes_every_bad_message_and_counts_the_good(kafka, s3, tmp_path: Path, bad: list[bytes]) -> None:
    run_id = f"{tmp_path.name[-10:]}-{len(list(tmp_path.iterdir()))}".lower().replace("_", "-")
    topics = {
        "IMPRESSIONS_TOPIC": f"bad-in-{run_id}",
        "DEAD_LETTER_TOPIC": f"bad-dead-{run_id}",
        "LATE_TOPIC": f"bad-late-{run_id}",
    }
    make_topics(kafka, *topics.values())
    s3.create_bucket(f"bad-{run_id}")
    good = list(generate(TrafficShape(count=3000, movies=4, users=10, step_ms=2000, seed=len(bad))))
    stride = max(1, len(good) // len(bad))
    mixed = [(topics["IMPRESSIONS_TOPIC"], e.key, e.value) for e in good]
    for i, value in enumerate(bad):  # spread the bad ones through the stream
        mixed.insert(i * stride + i, (topics["IMPRESSIONS_TOPIC"], b"x", value))
    produce_messages(mixed, kafka.bootstrap)
    env = {
        **topics,
        "KAFKA_BROKERS": kafka.bootstrap,
        "S3_ENDPOINT_URL": s3.endpoint_url,
        "S3_BUCKET": f"bad-{run_id}",
        "BOUNDED": "true",
    }
    result = run_dataflow(FLOWS["movie-impressions"], env, recovery=init_recovery(tmp_path / run_id))
    assert result.returncode == 0, result.stderr[-2000:]
    dead = [json.loads(v) for _, v in read_topic(kafka.bootstrap, topics["DEAD_LETTER_TOPIC"])]
    assert Counter(raw_of(d) for d in dead) == Counter(bad)
    assert all(d["error"] for d in dead)
    rows = read_s3_rows(s3, f"bad-{run_id}", "impressions")
    assert_frame_equal(rows.drop("object").sort("movieId", "userId", "windowStart"), expected_rows(good))
