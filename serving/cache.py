"""Optional inference cache: results of repeated identical inputs.

Off by default. ``--cache lru`` (or ``lru:N`` for N entries, default 100,000) keeps results in an
in-process LRU; ``--cache redis://host:port/db`` keeps them in Redis (shared by every replica, entries expire
after ``KFRELEASE_CACHE_TTL`` seconds, default 3600). One entry is one *instance* (a feature row), keyed
by the model name, the model version and the exact values of the row (its float64 bytes; its JSON when
the model takes categories), so a new version never
answers from an old version's entries and a batch can mix hits and misses. Hits and misses are counted in
``kfrelease_predictor_cache_total{result="hit"|"miss"}``.

A cache that fails (Redis down) never fails a prediction: the lookup counts as a miss
(``result="error"``) and the model answers.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import threading
from collections import OrderedDict

import numpy as np
import orjson
from prometheus_client import Counter

from kfrelease.config import setting

log = logging.getLogger(__name__)

CACHE_LOOKUPS = Counter(
    "kfrelease_predictor_cache",
    "Inference-cache lookups per instance, by result (hit, miss, error).",
    ["model", "version", "result"],
)


class InferenceCache:
    """Interface: ``get_many(rows) -> list[float | None]`` and ``put_many(rows, values)``."""

    def __init__(self, model: str, version: str):
        self.model = model
        self.version = version
        self._hit = CACHE_LOOKUPS.labels(model, version, "hit")
        self._miss = CACHE_LOOKUPS.labels(model, version, "miss")
        self._error = CACHE_LOOKUPS.labels(model, version, "error")

    @staticmethod
    def row_bytes(row: np.ndarray) -> bytes:
        """The exact values of one checked row: its float64 bytes, or its JSON when it holds categories."""
        return row.tobytes() if row.dtype != object else orjson.dumps(row.tolist())

    def key(self, row: np.ndarray) -> bytes:
        return self.row_bytes(row)

    def get_many(self, rows: np.ndarray) -> list[float | None]:
        raise NotImplementedError

    def put_many(self, rows: np.ndarray, values: np.ndarray) -> None:
        raise NotImplementedError

    def _count(self, found: list[float | None]) -> None:
        hits = sum(v is not None for v in found)
        if hits:
            self._hit.inc(hits)
        if len(found) - hits:
            self._miss.inc(len(found) - hits)


class LRUCache(InferenceCache):
    def __init__(self, model: str, version: str, max_entries: int = 100_000):
        super().__init__(model, version)
        self.max_entries = max_entries
        self._data: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, rows: np.ndarray) -> list[float | None]:
        out: list[float | None] = []
        with self._lock:
            for row in rows:
                k = self.key(row)
                v = self._data.get(k)
                if v is not None:
                    self._data.move_to_end(k)
                out.append(v)
        self._count(out)
        return out

    def put_many(self, rows: np.ndarray, values: np.ndarray) -> None:
        with self._lock:
            for row, v in zip(rows, values):
                self._data[self.key(row)] = float(v)
                self._data.move_to_end(self.key(row))
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class RedisCache(InferenceCache):
    """Entries ``kfrelease:cache:<model>:<version>:<sha256 of the row>`` holding the float64 result."""

    def __init__(self, model: str, version: str, url: str, ttl_seconds: int = 3600):
        super().__init__(model, version)
        import redis  # the PyPI client (pinned in setup.py); imported only when Redis is configured

        self.client = redis.Redis.from_url(url, socket_timeout=0.2, socket_connect_timeout=0.2)
        self.ttl = ttl_seconds
        self.prefix = f"kfrelease:cache:{model}:{version}:".encode()

    def key(self, row: np.ndarray) -> bytes:
        return self.prefix + hashlib.sha256(self.row_bytes(row)).hexdigest().encode()

    def get_many(self, rows: np.ndarray) -> list[float | None]:
        try:
            raw = self.client.mget([self.key(r) for r in rows])
        except Exception as exc:  # noqa: BLE001 - a cache outage is a miss, never a failed prediction
            log.warning("inference cache unavailable (%s); answering without it", exc)
            self._error.inc(len(rows))
            return [None] * len(rows)
        out = [struct.unpack("<d", v)[0] if v is not None and len(v) == 8 else None for v in raw]
        self._count(out)
        return out

    def put_many(self, rows: np.ndarray, values: np.ndarray) -> None:
        try:
            pipe = self.client.pipeline(transaction=False)
            for row, v in zip(rows, values):
                pipe.set(self.key(row), struct.pack("<d", float(v)), ex=self.ttl)
            pipe.execute()
        except Exception as exc:  # noqa: BLE001
            log.warning("could not store results in the inference cache: %s", exc)


def cache_from_option(option: str | None, model: str, version: str) -> InferenceCache | None:
    """``None``/``""``/``off`` -> no cache; ``lru`` or ``lru:N``; ``redis://...``."""
    from kfrelease.errors import ConfigError

    if not option or option == "off":
        return None
    if option == "lru" or option.startswith("lru:"):
        size = option.partition(":")[2]
        if size and not size.isdigit():
            raise ConfigError(f"--cache {option!r}: the LRU size must be a whole number, e.g. lru:50000")
        return LRUCache(model, version, int(size) if size else 100_000)
    if option.startswith(("redis://", "rediss://", "unix://")):
        ttl = setting("KFRELEASE_CACHE_TTL")
        return RedisCache(model, version, option, ttl)
    raise ConfigError(f"--cache {option!r} is not understood; use off, lru, lru:N or redis://host:port/db")
