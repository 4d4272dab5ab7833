"""OAUTHBEARER token providers for the tests (KAFKA_OAUTH_TOKEN_PROVIDER=tests.support.oauth_tokens:<name>).

They make the unsecured JWS (alg "none", a "sub" claim) that Kafka's default validator
accepts: the same client path as MSK IAM's signer, which returns a signed token instead.
`TOKEN_LOG`, if set, is a file each token made is noted in (time and expiry, never the token).
"""

from __future__ import annotations

import base64
import json
import os
import time

PRINCIPAL = "waxstreams-provider"
SHORT_LIFETIME_S = 6  # a few refreshes within a test run


def unsigned_jwt(subject: str, issued_s: float, expiry_s: float) -> str:
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part({'sub': subject, 'iat': int(issued_s), 'exp': int(expiry_s)})}."


def _make(lifetime_s: float) -> tuple[str, float]:
    now = time.time()
    # The validator compares whole seconds: an expiry rounded down would end the token early.
    expiry = float(int(now + lifetime_s))
    log = os.environ.get("TOKEN_LOG")
    if log:
        with open(log, "a") as out:
            out.write(f"{now:.3f} {expiry:.0f}\n")
    return unsigned_jwt(PRINCIPAL, now, expiry), expiry


def unsecured(oauthbearer_config: str) -> tuple[str, float]:
    return _make(3600)


def short_lived(oauthbearer_config: str) -> tuple[str, float]:
    return _make(SHORT_LIFETIME_S)


def expiry_in_milliseconds(oauthbearer_config: str) -> tuple[str, float]:
    """The mistake the MSK signer invites (it returns milliseconds): refused with one line."""
    token, expiry = _make(3600)
    return token, expiry * 1000


def stale(oauthbearer_config: str) -> tuple[str, float]:
    """A token whose claims end in SHORT_LIFETIME_S while librdkafka is told an hour: never refreshed in time."""
    now = time.time()
    return unsigned_jwt(PRINCIPAL, now, now + SHORT_LIFETIME_S), now + 3600
