"""The proxy's workers in the lab (two: proxy.workers 2): the firewall sends task network
k to worker k mod 2, each worker enforces the same policy, and a worker that dies is
restarted by systemd while the other keeps serving its own tasks."""

from __future__ import annotations

import json
import time

import pytest

from airut_core.sandbox import Allowlist, PolicyRecord, subnet
from tests.system.lab import LAB_UPSTREAMS, wait_until

CA = "/var/lib/airut-proxy/mitmproxy-ca-cert.pem"
SHARDS = (250, 251)  # task networks of worker 0 and worker 1


def probe(k: int) -> str:
    return ("code() { curl -sS --cacert /ca.pem -o /dev/null -w '%{http_code} ' \"$@\"; }; "
            "code https://allowed.test/probe; code https://blocked.test/; "
            f"code http://{gateway(k)}/; code -X POST https://paths.test/open/x; "
            "getent hosts anything.example | cut -d' ' -f1")


def gateway(k: int) -> str:
    return f"10.199.{k}.1"


@pytest.fixture(scope="module")
def shards(lab):
    """A task network and policy for each worker, as the runner would make them."""
    for k in SHARDS:
        lab.guest("podman", "network", "create", "--internal", "--disable-dns", "--subnet",
                  subnet(k), "--gateway", gateway(k), f"shard-{k}", check=False)
        policy = PolicyRecord(
            task_id=f"shard-{k}", conversation_id="0a1b2c3d", repo="demo", subnet=subnet(k),
            network_log="/dev/null", allowed_private_networks=[LAB_UPSTREAMS],
            allowlist=Allowlist(domains=["allowed.test"]))
        lab.guest("sh", "-c", f"umask 027; cat > /run/airut/policies/.shard-{k} && "
                  f"chgrp airut-proxy /run/airut/policies/.shard-{k} && "
                  f"mv /run/airut/policies/.shard-{k} /run/airut/policies/shard-{k}.json",
                  input=json.dumps(policy.to_dict()))
    time.sleep(1)  # the proxy processes reload on the doorbell
    yield
    for k in SHARDS:
        lab.guest("rm", "-f", f"/run/airut/policies/shard-{k}.json")
        lab.guest("podman", "network", "rm", "-f", f"shard-{k}", check=False)


def client(lab, k: int, script: str, detach: bool = False):
    run = ["podman", "run", "--rm", "--pull=never", f"--network=shard-{k}",
           f"--dns={gateway(k)}", "--no-hosts", "-v", f"{CA}:/ca.pem:ro"]
    if detach:
        run = ["podman", "run", "-d", "--name", f"shard-client-{k}", *run[3:]]
    return lab.guest(*run, "localhost/airut-base:latest", "sh", "-c", script, timeout=120)


def main_pid(lab, unit: str) -> str:
    return lab.unit_properties(unit, "MainPID")["MainPID"]


@pytest.mark.parametrize("k", SHARDS)
def test_each_worker_enforces_the_policy_of_its_task_networks(lab, shards, k):
    out = client(lab, k, probe(k)).stdout.split()
    # allowed, not listed, an address (the gateway's own), a host not listed; DNS: the
    # gateway
    assert out == ["200", "403", "403", "403", gateway(k)], out
    worker = f"airut-proxy@{k % 2}.service"
    journal = lab.journal("-u", worker, "AIRUT_TASK=" + f"shard-{k}")
    assert "BLOCKED GET blocked.test / -> 403" in journal, journal
    other = lab.journal("-u", f"airut-proxy@{1 - k % 2}.service", f"AIRUT_TASK=shard-{k}")
    assert "blocked.test" not in other  # the other worker never saw this network


def test_a_killed_worker_is_restarted_while_the_other_keeps_serving(lab, shards):
    busy = ("for i in $(seq 24); do curl -sS --cacert /ca.pem -o /dev/null "
            "-w '%{http_code} ' https://allowed.test/steady-$i; sleep 0.25; done")
    client(lab, SHARDS[0], busy, detach=True)  # worker 0's task, for ~6 s
    victim = "airut-proxy@1.service"
    before = main_pid(lab, victim)
    time.sleep(1)
    lab.guest("kill", "-9", before)
    wait_until(lambda: lab.unit_properties(victim, "ActiveState")["ActiveState"] == "active"
               and main_pid(lab, victim) not in ("0", before), 30, "worker 1 restarted")
    lab.guest("podman", "wait", "shard-client-250", timeout=60)
    codes = lab.guest("podman", "logs", "shard-client-250").stdout.split()
    lab.guest("podman", "rm", "-f", "shard-client-250")
    assert codes == ["200"] * 24, codes  # worker 0's task never noticed
    assert int(lab.unit_properties(victim, "NRestarts")["NRestarts"]) >= 1
    after = client(lab, SHARDS[1], probe(SHARDS[1])).stdout.split()
    assert after[:2] == ["200", "403"], after  # and worker 1 serves its task again
