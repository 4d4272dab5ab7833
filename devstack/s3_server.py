"""`python -m devstack.s3_server -H 127.0.0.1 -p PORT`: moto's S3 server (`moto.server`), minus
two per-request costs that are not S3's.

moto's dispatcher finds the service of every request by listing its own package folder
and testing each entry with `isdir` (about a fifth of its CPU per S3 PUT, measured with
py-spy); the list cannot change while it runs, so it is taken once. And the access log
line per request is not written: the sink makes thousands of requests a minute.
"""

from __future__ import annotations

import logging

from moto import backends
from moto.server import main

_MODULES = tuple(backends.list_of_moto_modules())
backends.list_of_moto_modules = lambda: _MODULES  # type: ignore[assignment]

if __name__ == "__main__":
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    main()
