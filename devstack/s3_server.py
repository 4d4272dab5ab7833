"""`python -m devstack.s3_server -H 127.0.0.1 -p PORT`: moto's S3 server (moto's own WSGI app,
as `moto.server` serves it), minus per-request costs that are not S3's.

It is served by waitress rather than werkzeug's development server, which `moto.server`
uses: werkzeug closes every connection, starts a thread per request and drains each
socket after the response, about two thirds of the server's CPU per PUT (py-spy). On a
two-core machine the server shares the cores with the job it serves, so in `make bench`
that cost was charged to the job. Waitress keeps connections alive, as S3 does, and
serves them from a fixed pool of threads. Where it differs from werkzeug in what moto or a
client sees, it is mended below (an empty PUT expecting 100-continue, metadata header
names, the raw path). It drops request headers with an underscore in their name (moto's
werkzeug handler keeps them, for S3 metadata keys); ours send none.

Writes to a key are made atomic, as S3's are: moto checks a conditional write's
condition (`If-None-Match: *`, `If-Match`) and stores the object as two steps, so two
concurrent creates of one key could both succeed, and one writer's Delta log commit
vanished under another's (seen in the Delta sink's 4-writer test, about 1 run in 3).

moto's dispatcher finds the service of every request by listing its own package folder
and testing each entry with `isdir` (about a fifth of its CPU per S3 PUT, measured with
py-spy); the list cannot change while it runs, so it is taken once.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import re
import threading
from collections.abc import Callable
from typing import Any

import waitress
from moto import backends
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.s3.responses import S3Response
from waitress.parser import HTTPRequestParser
from waitress.task import WSGITask

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

_parse_header = HTTPRequestParser.parse_header


def _parse_header_no_continue_without_body(self: HTTPRequestParser, header_plus: bytes) -> None:
    """waitress answers `Expect: 100-continue` with 100 and then waits for a body even when
    Content-Length is 0, so botocore's empty PUTs (a resume's claims) would hang: a request
    with no body has nothing to continue."""
    _parse_header(self, header_plus)
    if not self.chunked and self.content_length == 0:
        self.expect_continue = False


HTTPRequestParser.parse_header = _parse_header_no_continue_without_body  # type: ignore[method-assign]

_build_response_header = WSGITask.build_response_header
_METADATA_HEADER = re.compile(rb"\r\nx-amz-meta-([^:\r]*):", re.IGNORECASE)


def _build_response_header_metadata_lowercase(self: WSGITask) -> bytes:
    """waitress capitalises response header names (`X-Amz-Meta-Key`), and a client takes an
    object's metadata keys from them; S3 sends them in lowercase, as it stores them."""
    return _METADATA_HEADER.sub(lambda m: b"\r\nx-amz-meta-" + m.group(1).lower() + b":", _build_response_header(self))


WSGITask.build_response_header = _build_response_header_metadata_lowercase  # type: ignore[method-assign]


def _with_raw_uri(app: Callable[..., Any]) -> Callable[..., Any]:
    """moto takes an S3 key from the path as it arrived (`RAW_URI`, which werkzeug sets), else
    from the decoded path, where `a%2Fb` and `a/b` are one key; waitress calls it `REQUEST_URI`."""

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        environ.setdefault("RAW_URI", environ.get("REQUEST_URI", ""))
        return app(environ, start_response)

    return serve


THREADS = 8  # concurrent requests: the sink's partitions upload in parallel, tests run several writers
# Open connections: past this waitress stops accepting, and a client's request waits unanswered.
# Clients keep idle connections in their pools (S3 has no such bound); the tests' crashed
# writers never close theirs, and idle ones close after waitress' channel timeout (2 min).
CONNECTIONS = 4_000


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devstack.s3_server", description=__doc__)
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args()
    os.environ.setdefault("MOTO_PORT", str(args.port))  # moto builds its own URLs from it
    logging.getLogger("waitress").setLevel(logging.ERROR)  # not a line per idle client it closes
    app = _with_raw_uri(DomainDispatcherApplication(create_backend_app))
    waitress.serve(
        app, host=args.host, port=args.port, threads=THREADS, connection_limit=CONNECTIONS, asyncore_use_poll=True
    )


if __name__ == "__main__":
    main()
