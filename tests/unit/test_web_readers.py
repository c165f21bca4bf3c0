"""The dashboard's readers of what others write: the agent's stream-json (hostile,
growing), the proxy's network.log (appended, rewritten at its cap), cgroup files of
both versions, and the charts that draw them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airut_core import cgroup, timeline
from airut_web import charts, netlog
from tests import webstate

pytestmark = pytest.mark.unit


def write(path: Path, *events: object, raw: bytes = b"") -> None:
    with open(path, "ab") as f:
        for e in events:
            f.write(json.dumps(e).encode() + b"\n")
        f.write(raw)


# -- the agent's output ---------------------------------------------------------------


def test_a_timeline_pairs_tool_calls_with_their_results_in_order(tmp_path):
    path = tmp_path / "events.jsonl"
    write(path, *webstate.events([
        {"tool": "Bash", "input": {"command": "ls"}, "output": "README.md"},
        {"tool": "Read", "input": {"file_path": "/workspace/x"}, "output": "boom",
         "error": True},
        {"text": "Looked."}], result="All done."))
    t = timeline.Reader().read(path)
    assert [i.kind for i in t.items] == ["init", "tool", "tool", "text", "result"]
    bash, read = t.items[1], t.items[2]
    assert (bash.name, bash.detail, bash.result, bash.is_error) == ("Bash", "ls", "README.md",
                                                                     False)
    assert (read.detail, read.result, read.is_error) == ("/workspace/x", "boom", True)
    assert t.items[-1].text == "All done." and t.items[-1].facts["turns"] == 4


def test_a_growing_file_is_read_from_where_it_stopped_and_a_half_line_waits(tmp_path):
    path = tmp_path / "events.jsonl"
    reader = timeline.Reader()
    write(path, {"type": "assistant", "message": {"content": [{"type": "text", "text": "a"}]}})
    start = path.stat().st_size
    write(path, {"type": "assistant", "message": {"content": [{"type": "text", "text": "b"}]}},
          raw=b'{"type": "assistant", "message": {"content": [{"type": "text", "text": "c"')
    t = reader.read(path, start)
    assert [i.text for i in t.items] == ["b"]  # this run's part only; "c" is unfinished
    with open(path, "ab") as f:
        f.write(b"}]}}\n")
    assert [i.text for i in reader.read(path, start).items] == ["b", "c"]
    path.unlink()
    write(path, {"type": "assistant", "message": {"content": [{"type": "text", "text": "n"}]}})
    assert [i.text for i in reader.read(path, 0).items] == ["n"]  # a new file: read anew


@pytest.mark.parametrize("line", [
    b"[1, 2]", b'"text"', b"null", b'{"type": "assistant", "message": "x"}',
    b'{"type": "assistant", "message": {"content": "x"}}',
    b'{"type": "assistant", "message": {"content": [1, null, {"type": "tool_use"}]}}',
    b'{"type": "user", "message": {"content": [{"type": "tool_result", "content": {}}]}}',
    b'{"type": "result", "usage": [], "num_turns": "7", "total_cost_usd": true}',
    b'{"type": "system", "subtype": "init", "tools": 5, "model": ["x"]}',
    b"[" * 100_000, b"\xff\xfe not utf-8", b'{"a": ' + b"9" * 5000 + b"}"])
def test_hostile_lines_are_shown_or_skipped_never_fatal(tmp_path, line):
    path = tmp_path / "events.jsonl"
    write(path, raw=line + b"\n")
    write(path, {"type": "assistant", "message": {"content": [{"type": "text", "text": "ok"}]}})
    t = timeline.Reader().read(path)
    assert t.items[-1].text == "ok"


def test_overlong_lines_and_huge_outputs_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(timeline, "LINE_MAX", 3 * timeline.TEXT_MAX)
    monkeypatch.setattr(timeline, "ITEMS_MAX", 5)
    path = tmp_path / "events.jsonl"
    write(path, raw=b'{"type": "assistant", "message": "' + b"x" * 4 * timeline.TEXT_MAX
          + b'"}\n')
    for n in range(8):
        write(path, {"type": "assistant", "message": {"content": [
            {"type": "text", "text": f"t{n}" + "y" * (timeline.TEXT_MAX + 10)}]}})
    t = timeline.Reader().read(path)
    assert len(t.items) == 5 and t.dropped == 4  # the note about the skipped line, t0..t2
    last = t.items[-1].text
    assert last.startswith("t7") and "[12 more characters]" in last  # "t7" and 10 more


# -- network.log ------------------------------------------------------------------------


def test_network_lines_are_grouped_by_task_and_a_rewrite_starts_over(tmp_path):
    path = tmp_path / "network.log"
    a, b = "20261202T100000000-aaaaaa", "20261202T100000000-bbbbbb"
    path.write_text(f"2026-12-02T10:00:00.000Z {a} ALLOWED GET x.test / -> 200\n"
                    f"2026-12-02T10:00:01.000Z {b} BLOCKED GET y.test / -> 403 (host)\n"
                    f"2026-12-02T10:00:02.000Z BLOCKED DNS TXT old.proxy\n"
                    f"garbage line\n"
                    f"2026-12-02T10:00:03.000Z {a} BLOCKED GET z.test /p -> 403 (path)\n")
    reader = netlog.Reader()
    lines, counts = reader.lines(path, a)
    assert [line.detail for line in lines] == ["GET x.test / -> 200", "GET z.test /p -> 403 (path)"]
    assert counts == {"ALLOWED": 1, "BLOCKED": 1}
    with open(path, "a") as f:
        f.write(f"2026-12-02T10:00:04.000Z {a} STRIPPED x-api-key POST x.test /\n"
                f"2026-12-02T10:00:05.000Z {a} ALLOWED GET half")
    lines, counts = reader.lines(path, a)
    assert len(lines) == 3 and counts["STRIPPED"] == 1  # the half line waits
    # The proxy's cap rewrote the file: its newest half behind a NOTE.
    path.write_text("2026-12-02T10:01:00.000Z NOTE network.log reached its cap: 99 bytes\n"
                    f"2026-12-02T10:01:01.000Z {a} ALLOWED GET w.test / -> 200\n")
    lines, counts = reader.lines(path, a)
    assert [line.detail for line in lines] == ["GET w.test / -> 200"] and counts == {
        "ALLOWED": 1}


# -- cgroups ----------------------------------------------------------------------------


def test_a_units_cgroup_path_follows_its_slice():
    assert cgroup.unit_path("airut-task-x.service", "airut-tasks.slice") == \
        "airut.slice/airut-tasks.slice/airut-task-x.service"


def test_usage_reads_cgroup_v2(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    unit = tmp_path / "airut.slice/airut-tasks.slice/t.service"
    unit.mkdir(parents=True)
    (unit / "memory.current").write_text("104857600\n")
    (unit / "memory.max").write_text("335544320\n")
    (unit / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\n")
    (unit / "cpu.max").write_text("50000 100000\n")
    used = cgroup.usage("airut.slice/airut-tasks.slice/t.service", tmp_path)
    assert used == cgroup.Usage(104857600, 2500000, 335544320, 0.5)
    assert cgroup.usage("airut.slice/airut-tasks.slice/gone.service", tmp_path) is None


def test_usage_reads_cgroup_v1(tmp_path):
    rel = "airut.slice/airut-tasks.slice/t.service"
    for controller in ("memory", "cpu,cpuacct"):
        (tmp_path / controller / rel).mkdir(parents=True)
    (tmp_path / "memory" / rel / "memory.usage_in_bytes").write_text("2048\n")
    (tmp_path / "memory" / rel / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (tmp_path / "cpu,cpuacct" / rel / "cpuacct.usage").write_text("3000000000\n")
    (tmp_path / "cpu,cpuacct" / rel / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu,cpuacct" / rel / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup.usage(rel, tmp_path) == cgroup.Usage(2048, 3_000_000, None, None)


def test_samples_are_appended_capped_and_read_back_checked(tmp_path, monkeypatch):
    path = cgroup.samples_file(tmp_path, "20261202T100000000-aaaaaa")
    assert cgroup.append_sample(path, cgroup.Sample(1.0, 10, 20))
    with open(path, "a") as f:
        f.write('{"t": "x"}\n[1]\n{"t": 2, "memory": -5, "cpu_usec": true}\n')
    assert cgroup.read_samples(path) == [cgroup.Sample(1.0, 10, 20), cgroup.Sample(2.0, None,
                                                                                    None)]
    monkeypatch.setattr(cgroup, "SAMPLES_MAX_BYTES", path.stat().st_size)
    assert not cgroup.append_sample(path, cgroup.Sample(3.0, 1, 1))


# -- charts -----------------------------------------------------------------------------


def test_charts_escape_their_labels_and_draw_every_point():
    svg = charts.bars(["<b>", "x"], {"success": [1, 2], "failed": [0, 1]}, "t<script>")
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "&lt;b&gt;" in svg
    assert svg.count("<rect") == 3
    line = charts.line([(0, 1.0), (1, 2.0), (2, 4.0)], "mem", limit=4.0)
    assert line.count("<circle") == 3 and 'class="limit"' in line
    far = charts.line([(0, 1.0), (1, 2.0)], "mem", limit=1000.0)
    assert 'class="limit"' not in far and "limit 1000" in far  # named, not drawn
    assert "no samples yet" in charts.line([], "mem")
