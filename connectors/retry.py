"""The one retry loop: a call is retried on transient failures with capped exponential backoff
until a deadline, then stops with the policy's error, one line naming the fix.

A `RetryPolicy` says which failures are transient, how long to keep trying, which failures
retrying cannot cure (stop at once), and what the stop says. A WaxstreamsError raised by the
call itself is never retried: it already names its fix.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from connectors.errors import WaxstreamsError

log = logging.getLogger(__name__)
T = TypeVar("T")


def _curable(exc: Exception) -> str | None:
    return None


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class RetryPolicy:
    service: str  # what the log lines and the message start with: "S3", "Delta"
    retry_on: tuple[type[Exception], ...]  # the failures retried (unless `incurable` says otherwise)
    error: type[WaxstreamsError]  # what the loop stops with
    give_up_after: float  # seconds from the first attempt
    fix: str  # the out-of-time message's fix, e.g. "check S3_ENDPOINT_URL and the network"
    on_stop: str  # what stopping means for the data (logged with the message; "" = the caller decides, no log)
    incurable: Callable[[Exception], str | None] = _curable  # a failure retrying cannot cure: its one line
    describe: Callable[[Exception], str] = str  # the failure, as the out-of-time message shows it
    on_retry: Callable[[], None] = _nothing  # e.g. a retry counter
    logger: logging.Logger = log  # the caller's, so the lines keep their origin
    first_delay: float = 0.2
    max_delay: float = 5.0


def retry(
    call: Callable[[], T],
    what: str,
    policy: RetryPolicy,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`call()`, retried as `policy` says; `what` names the call in the log and the message."""
    deadline = clock() + policy.give_up_after
    delay = policy.first_delay
    while True:
        try:
            return call()
        except WaxstreamsError:
            raise
        except policy.retry_on as exc:
            msg = policy.incurable(exc)
            if msg is None and clock() + delay > deadline:
                msg = (
                    f"{policy.service} {what} still failing after {policy.give_up_after:.0f}s "
                    f"({policy.describe(exc)}); {policy.fix}"
                )
            if msg is not None:
                if policy.on_stop:  # logged here too: bytewax may abort on a sink exception without printing it
                    policy.logger.error("%s; stopping: %s", msg, policy.on_stop)
                raise policy.error(msg) from None
            policy.logger.warning(
                "%s %s failed (%s); retrying in %.1fs", policy.service, what, type(exc).__name__, delay
            )
            policy.on_retry()
            sleep(delay)
            delay = min(delay * 2, policy.max_delay)
