"""An OAUTHBEARER token provider for the tests (KAFKA_OAUTH_TOKEN_PROVIDER=tests.oauth_tokens:unsecured).

It makes the unsecured JWS (alg "none") that Kafka's default validator accepts: the same
client path as a real provider such as MSK IAM's, which returns a signed token instead.
"""

from __future__ import annotations

import base64
import json
import time

PRINCIPAL = "waxstreams-provider"


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def unsecured(oauthbearer_config: str) -> tuple[str, float]:
    now = time.time()
    token = f"{_b64({'alg': 'none'})}.{_b64({'sub': PRINCIPAL, 'iat': int(now), 'exp': int(now) + 3600})}."
    return token, now + 3600
