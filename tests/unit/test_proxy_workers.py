"""The proxy's workers: which worker serves a task network, the firewall's map that
sends it there (checked by nft itself), and one CA for every worker."""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from airut_core.sandbox import SUBNET_POOL, subnet, worker_of, worker_port, workers
from airut_proxy import daemon, firewall

TEMPLATE = Path(__file__).resolve().parents[2] / "units" / "airut.nft"


def test_task_networks_are_spread_round_robin_over_the_workers():
    assert [worker_of(subnet(k), 3) for k in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert {worker_of(subnet(k), 1) for k in range(256)} == {0}
    assert workers(5, 3) == 5 and workers(1000, 3) == 64  # as the operator says


@pytest.mark.parametrize(("cores", "max_tasks", "expected"),
                         [(2, 3, 2), (16, 3, 3), (16, 100, 16), (128, 100, 64), (None, 3, 1)])
def test_by_default_one_worker_per_core_but_not_more_than_tasks(monkeypatch, cores,
                                                                 max_tasks, expected):
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert workers(0, max_tasks) == expected


@pytest.mark.parametrize("count", [1, 2, 3, 64])
def test_the_firewall_map_sends_each_network_to_its_worker(count):
    ruleset = firewall.render(TEMPLATE.read_text(), count)
    assert "@WORKERS@" not in ruleset and "@PORTS@" not in ruleset
    for k in (0, 1, 2, 5, 255):
        assert f"{subnet(k)} : {worker_port(k % count)}" in ruleset
    assert ruleset.count(str(SUBNET_POOL.network_address)[:7]) >= 256
    if shutil.which("nft"):  # nft's own check of the whole ruleset (-c: nothing loaded)
        checked = subprocess.run(["nft", "-c", "-f", "-"], input=ruleset, text=True,
                                 capture_output=True)
        assert checked.returncode == 0, checked.stderr


def test_a_worker_count_out_of_range_loads_nothing(tmp_path):
    with pytest.raises(ValueError):
        firewall.render(TEMPLATE.read_text(), 0)
    assert firewall.main(65, TEMPLATE) == 1
    assert firewall.main(2, tmp_path / "missing.nft") == 1


def test_workers_starting_together_make_one_ca(tmp_path):
    threads = [threading.Thread(target=daemon.make_ca, args=(tmp_path,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = (tmp_path / "mitmproxy-ca-cert.pem").read_bytes()
    daemon.make_ca(tmp_path)  # a restarted worker keeps it
    assert (tmp_path / "mitmproxy-ca-cert.pem").read_bytes() == first
