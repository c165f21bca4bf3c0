"""The guard that keeps one bad item from stopping a loop."""

from __future__ import annotations

import logging
import multiprocessing
import os
from pathlib import Path

import pytest

from airut_core.guard import INTERRUPTED, Guard, Permanent

log = logging.getLogger("test.guard")


def boom(message: str = "boom"):
    def work():
        raise RuntimeError(message)
    return work


def test_a_failing_item_backs_off_and_the_others_go_on():
    guard = Guard("item", log, limit=3, delay=60)
    done = []
    assert not guard.run("bad", boom())
    assert guard.run("good", lambda: done.append("good"))
    assert done == ["good"]
    assert guard.waiting("bad")
    assert not guard.run("bad", lambda: done.append("bad"))  # still backing off
    assert done == ["good"]
    assert 59 < guard.next_due() <= 60
    assert guard.failures("bad")[0]["reason"] == "RuntimeError: boom"


def test_quarantine_on_the_limit_with_every_reason():
    guard = Guard("item", log, limit=3, delay=0)
    aside = []
    for i in range(3):
        guard.run("bad", boom(f"try {i}"), quarantine=aside.append)
    assert [f["reason"] for f in aside[0]] == [f"RuntimeError: try {i}" for i in range(3)]
    assert guard.keys() == [] and guard.quarantined_total == 1 and guard.failed_total == 3


def test_permanent_failures_are_set_aside_at_once():
    guard = Guard("item", log, limit=5, delay=0)
    aside = []

    def work():
        raise Permanent("unknown repository")
    guard.run("bad", work, quarantine=aside.append)
    assert len(aside) == 1 and "unknown repository" in aside[0][0]["reason"]


def test_a_quarantine_that_fails_is_retried_not_raised():
    guard = Guard("item", log, limit=1, delay=0, max_delay=0)

    def broken_quarantine(failures):
        raise OSError("disk full")
    assert not guard.run("bad", boom(), quarantine=broken_quarantine)
    aside = []
    guard.run("bad", boom(), quarantine=aside.append)
    assert len(aside) == 1


def test_success_forgets_the_failures(tmp_path):
    guard = Guard("item", log, limit=3, delay=0, store=tmp_path)
    guard.run("flaky", boom())
    assert list(tmp_path.iterdir())
    assert guard.run("flaky", lambda: None)
    assert guard.failures("flaky") == [] and not list(tmp_path.glob("*.json"))


def _die_in_work(store: str) -> None:
    guard = Guard("item", log, limit=3, delay=0, store=Path(store))
    guard.run("poison", lambda: os._exit(9))  # like a SIGKILL from the watchdog


def test_an_item_that_kills_the_process_counts_and_is_set_aside(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for _ in range(3):
        p = ctx.Process(target=_die_in_work, args=(str(tmp_path),))
        p.start()
        p.join(10)
        assert p.exitcode == 9
    guard = Guard("item", log, limit=3, delay=0, store=tmp_path)
    assert [f["reason"] for f in guard.failures("poison")] == [INTERRUPTED] * 3
    aside, ran = [], []
    assert not guard.run("poison", lambda: ran.append(1), quarantine=aside.append)
    assert ran == [] and len(aside[0]) == 3  # not tried a fourth time


def test_interruptions_count_apart_up_to_their_own_limit(tmp_path):
    """A process killed from outside while on an innocent item is weak evidence: with
    crash_limit above limit, three interruptions do not set the item aside, five do;
    failures seen still count against limit."""
    ctx = multiprocessing.get_context("fork")

    def die(times: int) -> None:
        for _ in range(times):
            p = ctx.Process(target=_die_in_work, args=(str(tmp_path),))
            p.start()
            p.join(10)
            assert p.exitcode == 9
    die(3)
    guard = Guard("item", log, limit=3, delay=0, store=tmp_path, crash_limit=5)
    aside: list = []
    guard.run("poison", boom(), quarantine=aside.append)  # 3 interruptions + 1 failure
    assert aside == [] and len(guard.failures("poison")) == 4
    guard.run("poison", boom(), quarantine=aside.append)
    guard.run("poison", boom(), quarantine=aside.append)  # the third failure seen
    assert len(aside) == 1
    die(5)
    guard = Guard("item", log, limit=3, delay=0, store=tmp_path, crash_limit=5)
    ran: list = []
    assert not guard.run("poison", lambda: ran.append(1), quarantine=aside.append)
    assert ran == [] and len(aside[1]) == 5


def test_a_corrupt_store_file_starts_the_count_again(tmp_path):
    guard = Guard("item", log, limit=3, delay=0, store=tmp_path)
    guard.run("x", boom())
    for f in tmp_path.glob("*.json"):
        f.write_text("{not json")
    again = Guard("item", log, limit=3, delay=0, store=tmp_path)
    assert again.failures("x") == []


@pytest.mark.parametrize("delay,count,expected", [(1, 1, 1), (1, 3, 4), (10, 10, 30)])
def test_back_off_doubles_up_to_the_maximum(delay, count, expected):
    guard = Guard("item", log, limit=100, delay=delay, max_delay=30)
    for _ in range(count):
        guard._entry("x").next_try = 0  # as if the wait were over
        guard.run("x", boom())
    assert guard.next_due() == pytest.approx(expected, abs=0.5)
