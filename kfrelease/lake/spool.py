"""The one durable spool: a write-ahead file of JSON lines, delivered oldest first, with back-off.

Everything that must not lose a record on its way to somewhere that may be down goes through a ``Spool``:
the prediction logger (events on their way to the log sink), the log sink and the feedback service (lines
on their way to the lake, ``kfrelease.collectors.sink.BatchWriter``) and the Pushgateway pusher
(``kfrelease.monitoring.push``).

A spool is a directory of segments ``<seq>-<uuid>.jsonl``, one JSON document a line. ``append`` writes
lines to the open segment with one ``os.write`` (``sync``: and an fsync before it returns, so an
acknowledged line survives a crash of the machine; without it, a kill of the process); ``rotate`` closes
it. ``drain`` hands each closed segment, oldest first, to a ``deliver`` function and deletes it once
everything in it is delivered; what is not delivered stays (the undelivered rest of a segment is rewritten
in its place, so a segment keeps its name, which the lake's batch keys are derived from), and the spool
backs off (``Backoff``: tenacity's exponential wait) before its owner tries again. Delivery is at least
once: the receivers drop duplicates (the sink by event key, the lake by batch key, the Pushgateway by
replacing a group). A torn last line (a crash in the middle of a write) is skipped with a warning.

Several spools may share a directory (two processes pushing monitoring results, a retired logger still
draining beside its successor): a segment is locked (``flock``) while it is open for appends and while it
is being delivered, and ``drain`` passes over a locked one, so nothing is delivered half written or twice
at once, and nothing is appended to a deleted file.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import tenacity

log = logging.getLogger(__name__)


class Backoff:
    """When to try again after failures in a row: ``first`` seconds, doubling, at most ``most``
    (``tenacity.wait_exponential``)."""

    def __init__(self, first: float, most: float, clock: Callable[[], float] = time.monotonic):
        self._wait = tenacity.wait_exponential(multiplier=first, min=first, max=most)
        self._clock = clock
        self.failures = 0
        self.retry_at = 0.0

    def failed(self) -> float:
        """Count a failure; the seconds until the next try."""
        self.failures += 1
        state = tenacity.RetryCallState(None, None, (), {})
        state.attempt_number = self.failures
        delay = self._wait(state)
        self.retry_at = self._clock() + delay
        return delay

    def succeeded(self) -> None:
        self.failures, self.retry_at = 0, 0.0

    def ready(self) -> bool:
        return self._clock() >= self.retry_at

    def remaining(self) -> float:
        return max(0.0, self.retry_at - self._clock())


def _seq(path: Path) -> int:
    """A segment's sequence number (``<seq>-<uuid>.jsonl``, or an older logger's ``<seq>.jsonl``)."""
    return int(path.name.split("-")[0].split(".")[0])


def read_lines(segment: Path, fd: int | None = None) -> list[bytes]:
    """The complete lines of a segment (through ``fd`` when given; a torn last line is skipped with a
    warning)."""
    lines = []
    with open(segment if fd is None else fd, "rb", closefd=fd is None) as fh:
        for raw in fh:
            if not raw.strip():
                continue
            if not raw.endswith(b"\n"):
                log.warning("skipping a torn last line in %s", segment)
                continue
            lines.append(raw)
    return lines


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


class Spool:
    """A write-ahead file of JSON lines in ``directory`` (see the module docstring). ``max_bytes``: lines
    that would take the spool above it are refused (``append`` returns False: the caller counts them lost)."""

    def __init__(
        self,
        directory: str | Path,
        *,
        sync: bool = True,
        max_bytes: int | None = None,
        backoff: Backoff | None = None,
    ):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sync = sync
        self.max_bytes = max_bytes
        self.backoff = backoff or Backoff(0.5, 10.0)
        self.lock = threading.Lock()
        for tmp in [*self.dir.glob("*.tmp"), *self.dir.glob("*.new")]:  # a rewrite or an opening a crash cut
            if time.time() - tmp.stat().st_mtime > 60:
                tmp.unlink(missing_ok=True)
        closed = self._listed()
        self._next = _seq(closed[-1]) + 1 if closed else 0
        self._fd: int | None = None
        self._open: Path | None = None
        self.open_lines = 0
        self.opened_at = 0.0
        self.pending = sum(len(read_lines(p)) for p in closed)  # lines not yet delivered
        self.bytes = sum(p.stat().st_size for p in closed)

    def _listed(self) -> list[Path]:
        return sorted((p for p in self.dir.glob("*.jsonl") if p != self._open_path()), key=_seq)

    def _open_path(self) -> Path | None:
        return getattr(self, "_open", None)

    def closed(self) -> list[Path]:
        """Closed segments, oldest first (this spool's open one left out; another's is locked, see
        ``drain``). Listed under the lock: an append may open a new segment at any moment, and a listing taken
        outside it could take that open file for a closed one (it would then be delivered half written and
        deleted, and the lines appended after it lost)."""
        with self.lock:
            return self._listed()

    def append(self, lines: list[bytes]) -> bool:
        """Write ``lines`` (each ending in a newline) to the open segment, in one write; with ``sync``, fsync'ed
        before returning. False (nothing written) when they would take the spool above ``max_bytes``."""
        data = b"".join(lines)
        with self.lock:
            if self.max_bytes is not None and self.bytes + len(data) > self.max_bytes:
                return False
            if self._fd is None:
                self._open = self.dir / f"{self._next:012d}-{uuid.uuid4().hex}.jsonl"
                self._next += 1
                # locked before it has its name: no other spool's drain can take it while it is open
                new = self._open.with_suffix(".new")
                self._fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                fcntl.flock(self._fd, fcntl.LOCK_EX)
                os.rename(new, self._open)
                self.opened_at = time.monotonic()
                self.open_lines = 0
            written = os.write(self._fd, data)
            while written < len(data):  # a short write (rare: a signal, a full disk): write the rest
                written += os.write(self._fd, data[written:])
            if self.sync:
                os.fsync(self._fd)
            self.open_lines += len(lines)
            self.pending += len(lines)
            self.bytes += len(data)
        return True

    def rotate(self) -> None:
        """Close the open segment, so that ``drain`` delivers it."""
        with self.lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd, self._open, self.open_lines = None, None, 0

    def age(self) -> float:
        """Seconds since the open segment was opened (0 when none is open)."""
        return time.monotonic() - self.opened_at if self._fd is not None else 0.0

    def lines(self) -> list[bytes]:
        """Every line of the closed segments, oldest first (what a restart finds undelivered)."""
        return [line for segment in self.closed() for line in read_lines(segment)]

    def drain(self, deliver: Callable[[Path, list[bytes]], int]) -> bool:
        """Hand each closed segment, oldest first, to ``deliver(segment, lines)``, which returns how many of
        the lines, from the first, are done with (delivered, or refused for good). A segment done with is
        deleted; at the first that is not (or when ``deliver`` raises), the rest is kept, the back-off counts a
        failure, and False is returned. True when every closed segment is delivered. A segment another spool
        on this directory holds (open, or being delivered) is passed over."""
        for segment in self.closed():
            try:
                fd = os.open(segment, os.O_RDONLY)
            except FileNotFoundError:  # delivered by another spool on this directory
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                if not _same_file(fd, segment):  # rewritten by another spool meanwhile: next time
                    continue
                if not self._deliver(segment, fd, deliver):
                    return False
            finally:
                os.close(fd)
        self.backoff.succeeded()
        return True

    def _deliver(self, segment: Path, fd: int, deliver: Callable[[Path, list[bytes]], int]) -> bool:
        lines = read_lines(segment, fd)
        try:
            done = deliver(segment, lines)
        except Exception as exc:  # noqa: BLE001 - kept for the next try, whatever the receiver's failure
            delay = self.backoff.failed()
            log.warning("%s: delivery failed (%s); kept, next try in %.1f s", segment, exc, delay)
            return False
        self._delivered(done)
        size = os.fstat(fd).st_size
        if done < len(lines):
            self._keep(segment, lines[done:], size)
            self.backoff.failed()
            return False
        segment.unlink()
        with self.lock:
            self.bytes -= size
        return True

    def _delivered(self, n: int) -> None:
        with self.lock:
            self.pending = max(0, self.pending - n)

    def _keep(self, segment: Path, rest: list[bytes], size: int) -> None:
        """Rewrite a segment with its undelivered rest, atomically, under the same name."""
        tmp = segment.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.writelines(rest)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, segment)
        with self.lock:
            self.bytes += sum(len(x) for x in rest) - size

    def close(self) -> None:
        self.rotate()
