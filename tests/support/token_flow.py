"""A tiny bytewax flow: the jobs' Kafka source and Kafka output, signed in with a token callback.

`python -m bytewax.run tests.support.token_flow:flow` with the KAFKA_* settings, `TOKEN_FLOW_IN` and
`TOKEN_FLOW_OUT` (topics): copies every record of IN to OUT through the jobs' KafkaTransport
and prints each value. `TOKEN_FLOW_COLD=1`: every client waits for a token of its own that
takes a moment to make (as the first token does on a pod, which asks STS for its role's
credentials) — the condition under which a token callback made bytewax's consumer fail.
"""

from __future__ import annotations

import os
import time

import bytewax.operators as op
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow

from connectors.transports import kafka_token
from connectors.transports.contract import OutputRecord, RecordBatch
from connectors.transports.kafka import KafkaTransport
from connectors.transports.kafka_start_position import EARLIEST
from dataflows.settings import KafkaSettings
from tests.support import oauth_tokens

COLD_TOKEN_S = 1.2


def cold(oauthbearer_config: str) -> tuple[str, float]:
    time.sleep(COLD_TOKEN_S)  # the latency of an STS call, not a wait for a condition
    return oauth_tokens.unsecured(oauthbearer_config)


def build() -> Dataflow:
    env = dict(os.environ)
    if env.get("TOKEN_FLOW_COLD") == "1":
        kafka_token.REUSE_MIN_LEFT = 2.0  # no token is shared: each client waits for its own
    settings = KafkaSettings.from_env(env)
    transport = KafkaTransport(
        settings.brokers, "token-flow", True, 100, EARLIEST, None, client=settings.client, job="token-flow"
    )

    def step(part: str, batch: RecordBatch, state: None) -> tuple[list[OutputRecord], None]:
        keys = batch.keys
        return [OutputRecord(f"{part}@{batch.offset(i)}", keys[i], batch.value(i)) for i in range(len(batch))], state

    flow = Dataflow("token_flow")
    records = op.input("in", flow, transport.source([env["TOKEN_FLOW_IN"]], step, None))
    transport.write("out", records, env["TOKEN_FLOW_OUT"])
    op.output("print", op.map("value", records, lambda record: record.value.decode()), StdOutSink())
    return flow


flow = build() if "TOKEN_FLOW_IN" in os.environ else Dataflow("token_flow_unconfigured")
