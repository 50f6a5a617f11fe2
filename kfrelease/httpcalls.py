"""HTTP calls from kfrelease's processes: httpx, with one TLS context per process.

``httpx.get(url)`` and ``httpx.Client()`` each build a new ``ssl.SSLContext`` and load certifi's CA bundle into it:
~20 ms of CPU per call (measured here: 21 ms per ``httpx.Client()``, 0.07 ms with a context handed in), also for
``http://`` URLs that never open TLS. Readiness probes, health checks, the watchdog, the release's signal reads
and the traffic generators call every 50 ms to a few seconds, in every service and test: that context was a fifth
of the test workers' CPU (py-spy over a whole ``make test``). Here the context is built once, as httpx builds it
(``httpx.create_ssl_context()``: certifi's bundle, ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` honoured), and every
call and client gets it. Everything else is httpx's own signature: these are the only entry points kfrelease,
its tests and benchmarks use (``tests/test_http_calls.py`` holds the rest of the tree to that).
"""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def tls() -> ssl.SSLContext:
    """The process's one TLS context (built on first use; a forked child keeps using its parent's)."""
    return httpx.create_ssl_context()


def client(**kwargs) -> httpx.Client:
    """``httpx.Client(**kwargs)`` with the process's TLS context."""
    return httpx.Client(verify=tls(), **kwargs)


def async_client(**kwargs) -> httpx.AsyncClient:
    """``httpx.AsyncClient(**kwargs)`` with the process's TLS context."""
    return httpx.AsyncClient(verify=tls(), **kwargs)


def get(url: str, **kwargs) -> httpx.Response:
    """``httpx.get``, with the process's TLS context."""
    return httpx.get(url, verify=tls(), **kwargs)


def post(url: str, **kwargs) -> httpx.Response:
    """``httpx.post``, with the process's TLS context."""
    return httpx.post(url, verify=tls(), **kwargs)


def put(url: str, **kwargs) -> httpx.Response:
    """``httpx.put``, with the process's TLS context."""
    return httpx.put(url, verify=tls(), **kwargs)
