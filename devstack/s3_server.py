"""`python -m devstack.s3_server -H 127.0.0.1 -p PORT`: moto's S3 server (`moto.server`), minus
two per-request costs that are not S3's.

Writes to a key are made atomic, as S3's are: moto checks a conditional write's
condition (`If-None-Match: *`, `If-Match`) and stores the object as two steps, so two
concurrent creates of one key could both succeed, and one writer's Delta log commit
vanished under another's (seen in the Delta sink's 4-writer test, about 1 run in 3).

moto's dispatcher finds the service of every request by listing its own package folder
and testing each entry with `isdir` (about a fifth of its CPU per S3 PUT, measured with
py-spy); the list cannot change while it runs, so it is taken once. And the access log
line per request is not written: the sink makes thousands of requests a minute.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

from moto import backends
from moto.s3.responses import S3Response
from moto.server import main

_MODULES = tuple(backends.list_of_moto_modules())
backends.list_of_moto_modules = lambda: _MODULES  # type: ignore[assignment]

_key_writes = threading.Lock()


def _atomic(handler: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(handler)
    def write(*args: Any, **kwargs: Any) -> Any:
        with _key_writes:
            return handler(*args, **kwargs)

    return write


# Every write to a key goes through these two (PUT: objects, copies, parts; POST: multipart completion).
S3Response._key_response_put = _atomic(S3Response._key_response_put)  # type: ignore[method-assign]
S3Response._key_response_post = _atomic(S3Response._key_response_post)  # type: ignore[method-assign]

if __name__ == "__main__":
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    main()
