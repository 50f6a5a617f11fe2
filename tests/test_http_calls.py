"""HTTP calls share one TLS context per process (``kfrelease.httpcalls``).

``httpx.get`` and ``httpx.Client()`` build and load a new TLS context on every call (~20 ms of CPU each): readiness
probes and health checks made that a fifth of the test workers' CPU. These tests hold the helpers to one context,
the context to httpx's verification, and the tree to the helpers."""

from __future__ import annotations

import ast
import asyncio
import http.server
import ssl
import threading
from pathlib import Path

import httpx
import pytest

from kfrelease import httpcalls

ROOT = Path(__file__).resolve().parents[1]
#: httpx's module-level calls and clients that build a TLS context of their own each time
OWN_CONTEXT = {"get", "post", "put", "patch", "delete", "head", "options", "request", "stream", "Client", "AsyncClient"}
#: the helpers themselves, and this file (which calls httpx directly for the contrast)
EXEMPT = ("httpcalls.py", "test_http_calls.py")
CHECKED = ("kfrelease", "serving", "components", "pipelines", "tests", "bench", "scripts")


class _Ok(http.server.BaseHTTPRequestHandler):
    def _answer(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def local_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def contexts_built(monkeypatch) -> list[int]:
    """Counts the TLS contexts built from here on (httpx builds its own with ``ssl.create_default_context``)."""
    built: list[int] = []
    real = ssl.create_default_context

    def counting(*args, **kwargs):
        built.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counting)
    httpcalls.tls.cache_clear()
    yield built
    httpcalls.tls.cache_clear()


def test_every_call_and_client_of_the_helpers_shares_one_tls_context(local_url, contexts_built):
    for _ in range(10):
        assert httpcalls.get(local_url, timeout=5).status_code == 200
        assert httpcalls.post(local_url, json={"a": 1}, timeout=5).status_code == 200
        assert httpcalls.put(local_url, content=b"x", timeout=5).status_code == 200
        with httpcalls.client(timeout=5) as client:
            assert client.get(local_url).status_code == 200
    assert len(contexts_built) == 1
    # what the helpers replace builds one per call: the count above would have been 40
    httpx.get(local_url, timeout=5)
    with httpx.Client(timeout=5):
        pass
    assert len(contexts_built) == 3


async def _async_get(url: str) -> int:
    async with httpcalls.async_client(timeout=5) as client:
        return (await client.get(url)).status_code


def test_the_async_client_shares_it_too(local_url, contexts_built):
    assert [asyncio.run(_async_get(local_url)) for _ in range(3)] == [200] * 3
    assert len(contexts_built) == 1


def test_the_shared_context_verifies_certificates_and_hostnames_as_httpx_does():
    httpcalls.tls.cache_clear()
    ctx = httpcalls.tls()
    assert ctx is httpcalls.tls()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.cert_store_stats()["x509_ca"] == httpx.create_ssl_context().cert_store_stats()["x509_ca"] > 0


def own_context_calls(root: Path) -> list[str]:
    """``path:line: httpx.X(`` of each call under ``root`` that builds a TLS context of its own."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.name in EXEMPT or "__pycache__" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            f = node.func if isinstance(node, ast.Call) else None
            httpx_call = isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "httpx"
            if httpx_call and f.attr in OWN_CONTEXT:
                rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                found.append(f"{rel.as_posix()}:{node.lineno}: httpx.{f.attr}(")
    return found


def test_the_tree_calls_http_only_through_the_helpers():
    found = [hit for folder in CHECKED for hit in own_context_calls(ROOT / folder)]
    assert not found, "use kfrelease.httpcalls (one TLS context per process) instead of:\n" + "\n".join(found)


def test_the_scan_finds_each_way_of_building_a_context(tmp_path):
    (tmp_path / "m.py").write_text(
        "import httpx\nhttpx.get('u')\nwith httpx.Client() as c:\n    pass\nhttpx.AsyncClient()\nhttpx.stream('GET', 'u')\n"
        "x = httpx.HTTPError\n"
    )
    hits = sorted(
        h.split(": ", 1)[0].rsplit(":", 1)[1] + " " + h.rsplit(": ", 1)[1] for h in own_context_calls(tmp_path)
    )
    assert hits == ["2 httpx.get(", "3 httpx.Client(", "5 httpx.AsyncClient(", "6 httpx.stream("]
