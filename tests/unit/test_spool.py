"""The spool's rules, checked on a real filesystem with real processes."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
import time

import pytest

from airut_core.paths import Spool
from airut_core.spool import (
    Doorbell,
    RecordError,
    Stage,
    new_name,
    record_failure,
    write_atomic,
)


@pytest.fixture
def spool(tmp_path):
    return Spool(tmp_path / "spool").ensure()


def test_put_read_and_names_in_creation_order(spool):
    names = [new_name() for _ in range(5)]
    for i, name in enumerate(reversed(names)):
        spool.incoming.put(name, {"n": i})
    assert spool.incoming.names() == sorted(names)
    assert spool.incoming.read(names[0]) == {"n": 4}


def test_names_sort_by_time():
    first = new_name()
    time.sleep(0.002)
    assert new_name() > first


def test_scan_ignores_tmp_and_foreign_files(spool):
    (spool.incoming.tmp / "half.json").write_text("{")
    (spool.incoming.path / "notes.txt").write_text("x")
    (spool.incoming.path / ".hidden.json").write_text("{}")
    assert spool.incoming.names() == []


def test_writer_killed_before_the_rename_leaves_no_visible_record(spool):
    # The writer dies like a SIGKILL (no cleanup) the moment it would rename.
    code = ("import os, sys; from airut_core import spool;"
            "spool.os.rename = lambda *a, **k: os._exit(70);"
            "spool.Stage(sys.argv[1]).put('victim', {'a': 1})")
    result = subprocess.run([sys.executable, "-c", code, str(spool.incoming.path)])
    assert result.returncode == 70  # died between the fsync and the rename
    assert spool.incoming.names() == []
    assert not spool.incoming.exists("victim")
    leftovers = list(spool.incoming.tmp.iterdir())
    assert len(leftovers) == 1 and leftovers[0].read_text().startswith("{")
    assert spool.incoming.clean_tmp(max_age=0) == 1
    assert list(spool.incoming.tmp.iterdir()) == []


def test_failed_write_cleans_its_temporary_file(tmp_path):
    target = tmp_path / "missing-dir" / "x.json"
    with pytest.raises(FileNotFoundError):
        write_atomic(target, b"data", tmp_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def _claimer(root, barrier, queue):
    spool = Spool(root)
    barrier.wait()
    won = []
    for name in spool.incoming.names():
        if spool.incoming.move_to(name, spool.active):
            won.append(name)
    queue.put(won)


@pytest.mark.parametrize("round_", range(20))
def test_concurrent_claimers_never_claim_the_same_record(tmp_path, round_):
    spool = Spool(tmp_path / "spool").ensure()
    names = {new_name() for _ in range(150)}
    for name in names:
        spool.incoming.put(name, {})
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(spool.root, barrier, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    claimed = [n for won in results for n in won]
    assert len(claimed) == len(set(claimed)), "a record was claimed twice"
    assert set(claimed) == names
    assert set(spool.active.names()) == names and spool.incoming.names() == []


def test_third_failure_quarantines_with_the_reasons(spool):
    failed = spool.failed("active")
    spool.active.put("t1", {"x": 1})
    for i in range(1, 4):
        record = spool.active.read("t1")
        gone = record_failure(spool.active, "t1", record, f"reason {i}", failed)
        assert gone == (i == 3)
    assert not spool.active.exists("t1")
    quarantined = failed.read("t1")
    assert [f["reason"] for f in quarantined["failures"]] == ["reason 1", "reason 2",
                                                              "reason 3"]
    assert quarantined["x"] == 1


def test_failures_survive_a_reread(spool):
    spool.active.put("t1", {})
    record_failure(spool.active, "t1", spool.active.read("t1"), "boom", spool.failed("active"))
    assert spool.active.read("t1")["failures"][0]["reason"] == "boom"


def test_clean_removes_only_old_records(spool):
    spool.incoming.put("old", {})
    spool.incoming.put("new", {})
    past = time.time() - 3600
    os.utime(spool.incoming.file("old"), (past, past))
    assert spool.incoming.clean(max_age=60) == ["old"]
    assert spool.incoming.names() == ["new"]


def test_unreadable_record_is_a_record_error(spool):
    spool.incoming.file("bad").write_text("{not json")
    with pytest.raises(RecordError, match="not valid JSON"):
        spool.incoming.read("bad")
    spool.incoming.file("list").write_text("[1]")
    with pytest.raises(RecordError, match="JSON object"):
        spool.incoming.read("list")


def test_doorbell_rings_on_rename_and_times_out_otherwise(spool):
    bell = Doorbell([spool.incoming.path])
    try:
        started = time.monotonic()
        assert bell.wait(0.2) is False
        assert time.monotonic() - started >= 0.15
        threading.Timer(0.1, lambda: spool.incoming.put(new_name(), {})).start()
        assert bell.wait(5) is True
    finally:
        bell.close()


def test_doorbell_is_only_a_hint(spool):
    """A record that arrived while nobody listened is found by the scan."""
    spool.incoming.put("early", {})
    bell = Doorbell([spool.incoming.path])
    try:
        assert bell.wait(0.05) is False
        assert spool.incoming.names() == ["early"]
    finally:
        bell.close()


def test_move_to_reports_a_lost_race(spool):
    stage = Stage(spool.root / "other").ensure()
    assert spool.incoming.move_to("nothing", stage) is False


def test_a_link_in_a_stage_is_not_followed(spool, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text('{"schema": "airut.task/1", "text": "from elsewhere"}')
    (spool.incoming.path / "linked.json").symlink_to(secret)
    with pytest.raises(RecordError, match="symbolic link"):
        spool.incoming.read("linked")


def test_an_oversized_record_is_refused_unread(spool):
    from airut_core.spool import RECORD_MAX
    (spool.incoming.path / "huge.json").write_bytes(b"[" * (RECORD_MAX + 10))
    with pytest.raises(RecordError, match="larger than"):
        spool.incoming.read("huge")


def test_a_link_planted_as_tmp_is_not_written_through(spool, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    stage = spool.incoming
    for entry in stage.tmp.iterdir():
        entry.unlink()
    stage.tmp.rmdir()
    stage.tmp.symlink_to(elsewhere)  # what a less trusted writer of the stage could do
    with pytest.raises(OSError):
        stage.put("x", {"a": 1})
    assert list(elsewhere.iterdir()) == []


def test_a_record_with_a_huge_number_is_unreadable_not_an_error(spool):
    (spool.incoming.path / "big.json").write_text('{"a": ' + "9" * 5000 + "}")
    with pytest.raises(RecordError):
        spool.incoming.read("big")
