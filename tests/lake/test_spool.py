"""The one durable spool (``kfrelease.lake.spool``): what is appended is delivered oldest first, exactly the
undelivered rest is kept (under the segment's own name), a failure backs off (tenacity), a restart finds
what was left, and two spools on one directory never deliver a segment half written or twice at once."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import orjson
import pytest

from kfrelease.lake.spool import Backoff, Spool


def lines(*ids) -> list[bytes]:
    return [orjson.dumps({"id": i}) + b"\n" for i in ids]


def ids_of(batch: list[bytes]) -> list:
    return [orjson.loads(x)["id"] for x in batch]


def test_lines_are_delivered_oldest_first_and_delivered_segments_are_deleted(tmp_path):
    spool = Spool(tmp_path)
    assert spool.append(lines(1, 2)) and spool.append(lines(3))
    spool.rotate()
    assert spool.append(lines(4))
    spool.rotate()
    got = []
    assert spool.drain(lambda segment, batch: got.append(ids_of(batch)) or len(batch))
    assert got == [[1, 2, 3], [4]] and spool.pending == 0 and spool.bytes == 0
    assert list(tmp_path.glob("*.jsonl")) == []


def test_the_undelivered_rest_is_kept_under_the_same_name_and_the_spool_backs_off(tmp_path):
    now = [100.0]
    spool = Spool(tmp_path, backoff=Backoff(0.5, 4.0, clock=lambda: now[0]))
    spool.append(lines(1, 2, 3))
    spool.rotate()
    (segment,) = spool.closed()
    assert not spool.drain(lambda s, batch: 1)  # the receiver took only the first line
    assert spool.closed() == [segment] and ids_of(spool.lines()) == [2, 3] and spool.pending == 2
    assert not spool.backoff.ready() and spool.backoff.remaining() == 0.5
    assert not spool.drain(lambda s, batch: 1 / 0)  # a receiver that raises: everything kept
    assert ids_of(spool.lines()) == [2, 3] and spool.backoff.remaining() == 1.0
    delays = [spool.backoff.failed() for _ in range(4)]
    assert delays == [2.0, 4.0, 4.0, 4.0]  # doubling, at most 4 s
    assert spool.drain(lambda s, batch: len(batch)) and spool.backoff.ready() and spool.pending == 0


def test_a_restart_finds_what_was_not_delivered_and_a_torn_last_line_is_skipped(tmp_path):
    first = Spool(tmp_path, sync=False)
    first.append(lines("a", "b"))
    first.close()
    (segment,) = Spool(tmp_path).closed()
    with open(segment, "ab") as fh:
        fh.write(b'{"id": "tor')  # a crash in the middle of a write
    again = Spool(tmp_path)
    assert again.pending == 2 and ids_of(again.lines()) == ["a", "b"]
    assert again.append(lines("c"))  # the restarted spool opens a segment of its own, after the old ones
    again.rotate()
    got = []
    assert again.drain(lambda s, batch: got.extend(ids_of(batch)) or len(batch))
    assert got == ["a", "b", "c"]


def test_a_full_spool_refuses_lines_instead_of_growing(tmp_path):
    spool = Spool(tmp_path, max_bytes=40)
    assert spool.append(lines(1, 2))
    assert not spool.append(lines(3, 4, 5))
    assert spool.pending == 2


def test_an_appended_line_survives_a_kill_of_the_process_without_an_fsync(tmp_path):
    """``sync=False`` (the prediction logger): one unbuffered write before ``append`` returns, so a SIGKILL
    right after it loses nothing."""
    script = (
        "import os, signal, sys\n"
        "from kfrelease.lake.spool import Spool\n"
        "spool = Spool(sys.argv[1], sync=False)\n"
        'spool.append([b\'{"id": "answered"}\\n\'])\n'
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], timeout=60, check=False)
    assert proc.returncode == -9
    assert ids_of(Spool(tmp_path).lines()) == ["answered"]


def test_a_segment_open_in_another_spool_on_the_directory_is_passed_over(tmp_path):
    writer, drainer = Spool(tmp_path), Spool(tmp_path)
    writer.append(lines("open"))
    delivered = []
    assert drainer.drain(lambda s, batch: delivered.extend(ids_of(batch)) or len(batch))
    assert delivered == [] and ids_of(writer.lines()) == []  # still open: not taken, not deleted
    writer.rotate()
    assert drainer.drain(lambda s, batch: delivered.extend(ids_of(batch)) or len(batch))
    assert delivered == ["open"]


def test_appends_and_drains_racing_on_one_directory_lose_nothing_and_deliver_each_line_once(tmp_path):
    """Two spools (a retired prediction logger draining beside its successor) and four appending threads:
    every line is delivered exactly once although segments are rotated and drained all the time."""
    spools = [Spool(tmp_path), Spool(tmp_path)]
    delivered: list = []
    lock = threading.Lock()
    done = threading.Event()

    def deliver(segment, batch):
        with lock:
            delivered.extend(ids_of(batch))
        return len(batch)

    def append(t: int) -> None:
        spool = spools[t % 2]
        for i in range(300):
            assert spool.append(lines(f"{t}-{i}"))
            if i % 7 == 0:
                spool.rotate()

    def drain(spool) -> None:
        while not done.is_set():
            spool.drain(deliver)

    drainers = [threading.Thread(target=drain, args=(s,)) for s in spools]
    appenders = [threading.Thread(target=append, args=(t,)) for t in range(4)]
    for t in drainers + appenders:
        t.start()
    for t in appenders:
        t.join()
    done.set()
    for t in drainers:
        t.join()
    for spool in spools:
        spool.rotate()
    assert spools[0].drain(deliver)
    assert sorted(delivered) == sorted(f"{t}-{i}" for t in range(4) for i in range(300))
    assert len(delivered) == len(set(delivered)) == 1200
    assert [p for p in tmp_path.iterdir() if p.suffix in (".jsonl", ".tmp")] == []


@pytest.mark.parametrize("sync", [True, False])
def test_what_append_wrote_is_in_the_file_when_it_returns(tmp_path, sync):
    spool = Spool(tmp_path, sync=sync)
    spool.append(lines("x"))
    (segment,) = [p for p in tmp_path.glob("*.jsonl")]
    assert os.path.getsize(segment) == len(lines("x")[0])
