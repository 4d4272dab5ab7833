"""OAUTHBEARER tokens made in Python and handed to librdkafka as confluent-kafka's `oauth_cb`.

Two sources, both through `TokenCallback`:
- `KAFKA_SASL_MECHANISM=AWS_MSK_IAM`: Amazon MSK's IAM sign-in. The token is AWS's own
  signer's (`aws-msk-iam-sasl-signer-python`): a SigV4-presigned `kafka-cluster:Connect`
  URL, base64url, signed with the pod's AWS credentials (IRSA, EKS Pod Identity, instance
  role or AWS_ACCESS_KEY_ID...), valid 15 minutes;
- `KAFKA_OAUTH_TOKEN_PROVIDER=module:function`: any other token source,
  `function(sasl.oauthbearer.config) -> (token, expiry in epoch seconds)`.

Refresh: librdkafka calls the callback again at 80 % of the lifetime the expiry it was
given leaves, on its own background thread, so the expiry must be epoch *seconds* (the
signer returns milliseconds; a millisecond expiry reads as 50,000 years and the token is
never refreshed). Each client asks for its own token; one recently made is shared
(`reuse_token`) so that N partition consumers do not sign N times.

Why a token callback made bytewax's consumer fail with `SystemError: _PyErr_SetObject:
exception <class 'tuple'> ...` in `consume()`, and the worker hang: with `oauth_cb` set,
confluent-kafka's Consumer() blocks until the first token is set, sleeping in whole seconds
(>= 1 s); bytewax's KafkaSource asks for statistics every 1000 ms, so the first statistics
were taken before its `assign()`, and its `stats_cb` raised KeyError (the partition is not
in them), which confluent-kafka on Python 3.11 re-raises from the still-unnormalized value
(a tuple) as that SystemError. Nothing was wrong with the callback. Fix: with a token
callback the first statistics come after the longest token wait (`STATISTICS_INTERVAL_MS`),
when the partition is assigned.
"""

from __future__ import annotations

import importlib
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from connectors.errors import WaxstreamsError

log = logging.getLogger(__name__)

MSK_IAM = "AWS_MSK_IAM"
PROVIDER = "KAFKA_OAUTH_TOKEN_PROVIDER"
SIGNER_PACKAGE = "aws-msk-iam-sasl-signer-python==1.0.2"

# confluent-kafka waits up to 10 s for the first token, then gives up: statistics first
# taken later than that are always taken after the source assigned its partition.
TOKEN_WAIT_S = 10
STATISTICS_INTERVAL_MS = 15_000
REFRESH_FRACTION = 0.8  # librdkafka refreshes at this part of the lifetime left
REUSE_MIN_LEFT = 0.5  # a token is shared while at least this part of its lifetime is left
_MAX_LIFETIME_S = 7 * 24 * 3600  # a longer one is an expiry in milliseconds by mistake

# b-1.mycluster.abc123.c2.kafka.eu-west-1.amazonaws.com, boot-x.c1.kafka-serverless.us-east-1.amazonaws.com
_MSK_HOST = re.compile(r"\.kafka(?:-serverless)?\.([a-z]{2}(?:-[a-z]+)+-\d+)\.amazonaws\.com(?:\.cn)?$")

Provider = Callable[[str], Any]


class TokenError(WaxstreamsError, ValueError):
    """A token cannot be made; the message names the setting and the fix."""


# -- pure rules ------------------------------------------------------------------------------


def region_for(brokers: Sequence[str], env: Mapping[str, str]) -> str:
    """The region MSK IAM tokens are signed for: the brokers' MSK host names, else AWS_REGION."""
    found = {m.group(1) for b in brokers if (m := _MSK_HOST.search(b.rpartition(":")[0].lower()))}
    if len(found) == 1:
        return found.pop()
    if len(found) > 1:
        msg = f"KAFKA_BROKERS names brokers in several AWS regions ({', '.join(sorted(found))}): keep one"
        raise TokenError(msg)
    region = env.get("AWS_REGION", "").strip() or env.get("AWS_DEFAULT_REGION", "").strip()
    if not region:
        msg = f"KAFKA_SASL_MECHANISM={MSK_IAM} needs the cluster's AWS region: set AWS_REGION (e.g. eu-west-1)"
        raise TokenError(msg)
    return region


def expiry_seconds(expiry_ms: float) -> float:
    """The signer's expiry (epoch ms) as librdkafka's callback wants it (epoch s)."""
    return expiry_ms / 1000


def check_expiry(expiry_s: float, now_s: float, source: str) -> float:
    """`expiry_s` if it is a plausible epoch-seconds expiry in the future; else TokenError."""
    if expiry_s <= now_s:
        msg = f"{source} returned a token that expired {now_s - expiry_s:.0f} s ago: check the clock"
        raise TokenError(msg)
    if expiry_s - now_s > _MAX_LIFETIME_S:
        years = (expiry_s - now_s) / 31_557_600
        msg = f"{source} returned an expiry {years:.0f} years ahead: return epoch seconds, not milliseconds"
        raise TokenError(msg)
    return expiry_s


def refresh_at(now_s: float, expiry_s: float) -> float:
    """When librdkafka asks for the next token, given one valid until `expiry_s` at `now_s`."""
    return now_s + REFRESH_FRACTION * (expiry_s - now_s)


def reuse_token(issued_s: float, expiry_s: float, now_s: float) -> bool:
    """Whether a token made at `issued_s` may be handed to another client at `now_s`.

    Only while half of its lifetime is left: that client's refresh then comes at least
    0.4 lifetimes later and still 0.1 lifetime (90 s for MSK's 15 min) before expiry."""
    return expiry_s - now_s >= REUSE_MIN_LEFT * (expiry_s - issued_s)


# -- sources ----------------------------------------------------------------------------------


def msk_iam_provider(region: str) -> Provider:
    """AWS's MSK signer with the pod's credentials; one-line errors when it cannot sign."""
    try:
        from aws_msk_iam_sasl_signer import MSKAuthTokenProvider
    except ImportError:
        msg = f"KAFKA_SASL_MECHANISM={MSK_IAM} needs AWS's MSK token signer: pip install {SIGNER_PACKAGE}"
        raise TokenError(msg) from None
    credentials = _pod_credentials()

    def sign(_config: str) -> tuple[str, float]:
        token, expiry_ms = MSKAuthTokenProvider.generate_auth_token_from_credentials_provider(region, credentials)
        return token, expiry_seconds(expiry_ms)

    return sign


def _pod_credentials() -> Any:
    """The default chain, resolved once and kept: botocore refreshes role credentials (IRSA,
    EKS Pod Identity, instance role) before they expire, without an STS call per token.
    botocore is imported here: only MSK IAM needs it, and it costs about 0.1 s of start-up
    CPU to every other Kafka job."""
    import botocore.session
    from botocore.credentials import CredentialProvider
    from botocore.exceptions import BotoCoreError

    class PodCredentials(CredentialProvider):  # type: ignore[misc]
        METHOD = "waxstreams-default-chain"

        def __init__(self) -> None:
            super().__init__()
            self._session = botocore.session.Session()
            self._credentials: Any = None

        def load(self) -> Any:
            if self._credentials is None:  # not kept while missing: a role may be attached later
                try:
                    self._credentials = self._session.get_credentials()
                except BotoCoreError as exc:
                    msg = f"KAFKA_SASL_MECHANISM={MSK_IAM}: AWS credentials could not be loaded ({exc})"
                    raise TokenError(msg) from None
            if self._credentials is None or not self._credentials.access_key:
                self._credentials = None
                msg = (
                    f"KAFKA_SASL_MECHANISM={MSK_IAM} found no AWS credentials: give the pod an IAM role "
                    "(IRSA or EKS Pod Identity) or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                )
                raise TokenError(msg)
            return self._credentials

    return PodCredentials()


def resolve_provider(spec: str) -> Provider:
    module_name, colon, attr = spec.partition(":")
    if not colon or not module_name or not attr:
        msg = f"{PROVIDER}={spec!r} is not module:function: e.g. mypackage.tokens:token"
        raise TokenError(msg)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        msg = f"{PROVIDER}={spec}: cannot import {module_name} ({exc}): install it"
        raise TokenError(msg) from None
    provider = getattr(module, attr, None)
    if not callable(provider):
        msg = f"{PROVIDER}={spec}: {module_name} has no function {attr}"
        raise TokenError(msg)
    return provider


class TokenCallback:
    """confluent-kafka's `oauth_cb`: always returns `(token, expiry epoch s)` or raises.

    Raising is the safe failure: confluent-kafka then reports the token as failed and
    librdkafka asks again; a wrong return shape instead leaves the client without a token
    and without a retry. The token is never logged."""

    def __init__(self, provider: Provider, source: str, auth_fix: str) -> None:
        self.source = source  # the setting that chose the provider, for messages
        self.auth_fix = auth_fix  # what to check when the broker refuses the tokens
        self._provider = provider
        self._lock = threading.Lock()  # clients' background threads ask at once
        self._cached: tuple[str, float, float] | None = None  # token, issued, expiry
        self.last_error: str | None = None

    def __call__(self, oauthbearer_config: str) -> tuple[str, float]:
        now = time.time()
        with self._lock:
            if self._cached is not None and reuse_token(self._cached[1], self._cached[2], now):
                return self._cached[0], self._cached[2]
            try:
                token, expiry = self._make(oauthbearer_config, now)
            except Exception as exc:
                reason = str(exc) if isinstance(exc, TokenError) else f"{self.source}: {type(exc).__name__}: {exc}"
                if reason != self.last_error:
                    log.warning("Kafka OAUTHBEARER token not made: %s", reason)
                self.last_error = reason
                raise
            log.log(
                logging.INFO if self._cached is None else logging.DEBUG,
                "Kafka OAUTHBEARER token from %s: valid %.0f s, librdkafka asks for the next in about %.0f s",
                self.source,
                expiry - now,
                refresh_at(now, expiry) - now,
            )
            self._cached, self.last_error = (token, now, expiry), None
            return token, expiry

    def _make(self, oauthbearer_config: str, now: float) -> tuple[str, float]:
        result = self._provider(oauthbearer_config)
        if not (isinstance(result, tuple | list) and len(result) >= 2 and isinstance(result[0], str) and result[0]):
            msg = f"{self.source} returned {type(result).__name__}: return (token, expiry epoch seconds)"
            raise TokenError(msg)
        if not isinstance(result[1], int | float):
            msg = f"{self.source} returned an expiry of type {type(result[1]).__name__}: return a number"
            raise TokenError(msg)
        return result[0], check_expiry(float(result[1]), now, self.source)

    def client_config(self, properties: Mapping[str, str]) -> dict[str, Any]:
        """`properties` with this callback; statistics first taken after the longest token wait,
        which bytewax's source takes over its own 1 s (see above: the SystemError)."""
        return {"statistics.interval.ms": str(STATISTICS_INTERVAL_MS), **properties, "oauth_cb": self}

    def check(self) -> None:
        """Make one token now (at start): a missing library, credentials or region fails here, in one line."""
        try:
            self("")
        except TokenError:
            raise
        except Exception as exc:
            raise TokenError(self.last_error or str(exc)) from None


def msk_iam_properties(properties: dict[str, str], sources: dict[str, str]) -> str:
    """KAFKA_SASL_MECHANISM=AWS_MSK_IAM as librdkafka properties: OAUTHBEARER, over TLS unless
    set otherwise (MSK's IAM port, 9098, is TLS); returns the security protocol."""
    properties["sasl.mechanism"] = "OAUTHBEARER"
    if "security.protocol" not in properties:
        properties["security.protocol"], sources["security.protocol"] = "SASL_SSL", sources["sasl.mechanism"]
    return properties["security.protocol"]


def from_settings(
    mechanism: str, properties: Mapping[str, str], sources: Mapping[str, str], env: Mapping[str, str]
) -> TokenCallback | None:
    """The token callback the settings ask for (checked against the other properties), or None."""
    brokers = [b.strip() for b in env.get("KAFKA_BROKERS", "").split(",") if b.strip()]
    token = token_callback(sources.get("sasl.mechanism", ""), mechanism, env, brokers)
    if token is not None:
        check_token_settings(token, properties, sources)
    return token


def token_callback(
    mechanism_setting: str, mechanism: str, env: Mapping[str, str], brokers: Sequence[str]
) -> TokenCallback | None:
    """The callback the settings ask for, or None."""
    spec = env.get(PROVIDER, "").strip()
    if mechanism == MSK_IAM:
        if spec:
            msg = f"{mechanism_setting}={MSK_IAM} and {PROVIDER} both make tokens: keep one"
            raise TokenError(msg)
        region = region_for(brokers, env)
        fix = "check the pod's IAM role: its policy needs kafka-cluster:Connect on the cluster"
        return TokenCallback(msk_iam_provider(region), f"{mechanism_setting}={MSK_IAM} (region {region})", fix)
    if spec:
        if mechanism != "OAUTHBEARER":
            msg = f"{PROVIDER} makes OAUTHBEARER tokens: set KAFKA_SASL_MECHANISM=OAUTHBEARER"
            raise TokenError(msg)
        return TokenCallback(resolve_provider(spec), f"{PROVIDER}={spec}", f"check the tokens {PROVIDER}={spec} makes")
    return None


def check_token_settings(token: TokenCallback, properties: Mapping[str, str], sources: Mapping[str, str]) -> None:
    """Properties that would fight the token callback; TokenError naming the setting."""
    method = properties.get("sasl.oauthbearer.method", "default").lower()
    if method != "default" or "enable.sasl.oauthbearer.unsecure.jwt" in properties:
        prop = "sasl.oauthbearer.method" if method != "default" else "enable.sasl.oauthbearer.unsecure.jwt"
        msg = f"{sources[prop]} sets {prop}, but {token.source} makes the tokens: remove it"
        raise TokenError(msg)
    interval = properties.get("statistics.interval.ms", "0")
    if interval.isdigit() and 0 < int(interval) < STATISTICS_INTERVAL_MS:
        msg = (
            f"{sources['statistics.interval.ms']} sets statistics.interval.ms={interval}: with {token.source} "
            f"use {STATISTICS_INTERVAL_MS} or more (a consumer waits up to {TOKEN_WAIT_S} s for its first token)"
        )
        raise TokenError(msg)
