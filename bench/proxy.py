"""bench/proxy: what the network sandbox costs, measured in the lab guest in one run.

  python -m bench.proxy [--requests 200]
  python -m bench.proxy --load [--clients 1,4,8,16] [--seconds 10] [--workers 1,2,2@0,2reuse]
                                                                   (bench/proxy_load.py)

1. Added latency per HTTPS request: a client in a container on a sandboxed task
   network (DNS -> gateway -> firewall redirect -> airut-proxy -> server) against
   the same client on podman's default network talking to the same server directly;
   one keep-alive connection, and a new TLS connection per request.
2. A proxy worker's memory: idle, and with ten tasks' policies loaded.
3. Setting up and tearing down one task's network (Podman API) and policy.
4. The other design, one proxy per task: how long a fresh proxy process takes to
   listen, and what it holds in memory.
"""

from __future__ import annotations

import argparse
import json
import time

from airut_core.sandbox import Allowlist, Mask, PolicyRecord, UrlPrefix, subnet
from bench.common import booted, ms
from tests.system.lab import LAB_UPSTREAMS, Lab, base_config

CLIENT = r"""
import http.client, json, ssl, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ctx = ssl.create_default_context(cafile="/bench-ca.pem")
def timed(conn):
    t = time.perf_counter(); conn.request("GET", "/bench"); r = conn.getresponse(); r.read()
    assert r.status == 200, r.status
    return time.perf_counter() - t
keep = http.client.HTTPSConnection(host, port, context=ctx)
timed(keep)
alive = [timed(keep) for _ in range(n)]
fresh = []
for _ in range(n):
    c = http.client.HTTPSConnection(host, port, context=ctx); fresh.append(timed(c)); c.close()
print(json.dumps({"keepalive": alive, "new_tls": fresh}))
"""
BENCH_SUBNET = 240


def guest_python(lab: Lab, code: str, *args: str, timeout: float = 300) -> str:
    return lab.guest("/var/lib/airut-lab/guest-venv/bin/python", "-c", code, *args,
                     timeout=timeout).stdout


def write_policy(lab: Lab, policy: PolicyRecord) -> None:
    lab.guest("sh", "-c", f"umask 027; cat > /run/airut/policies/.{policy.task_id} && "
                          f"chgrp airut-proxy /run/airut/policies/.{policy.task_id} && "
                          f"mv /run/airut/policies/.{policy.task_id} "
                          f"/run/airut/policies/{policy.task_id}.json",
              input=json.dumps(policy.to_dict()))


def bench_policy(name: str, n: int) -> PolicyRecord:
    entries = [UrlPrefix(host=f"api{i}.example.com", path="/v1/*", methods=["GET", "POST"])
               for i in range(10)]
    return PolicyRecord(task_id=name, conversation_id="0a1b2c3d", repo="bench", subnet=subnet(n),
                        network_log="/dev/null", allowed_private_networks=[LAB_UPSTREAMS],
                        allowlist=Allowlist(domains=["allowed.test"], url_prefixes=entries),
                        masks=[Mask(env="K", surrogate="sk-ant-SURROGATE00", value="sk-ant-REAL000",
                                    scopes=["api.example.com"], headers=["x-api-key"])])


def latency(lab: Lab, requests: int) -> dict[str, dict[str, list[float]]]:
    gateway = f"10.199.{BENCH_SUBNET}.1"
    lab.guest("podman", "network", "create", "--internal", "--disable-dns", "--subnet",
              subnet(BENCH_SUBNET), "--gateway", gateway, "bench-sandboxed")
    write_policy(lab, bench_policy("bench-latency", BENCH_SUBNET))
    run = ["podman", "run", "--rm", "-i", "--pull=never", "--no-hosts"]
    try:
        proxied = lab.guest(*run, "--network=bench-sandboxed", f"--dns={gateway}",
                            "-v", "/var/lib/airut-proxy/mitmproxy-ca-cert.pem:/bench-ca.pem:ro",
                            "localhost/airut-base:latest", "python3", "-", "allowed.test", "443",
                            str(requests), input=CLIENT, timeout=600).stdout
        lab.guest("sh", "-c", "echo '10.88.0.1 allowed.test' > /tmp/bench-hosts")
        direct = lab.guest(*run, "--network=podman", "-v", "/tmp/bench-hosts:/etc/hosts:ro",
                           "-v", "/etc/airut/lab-tls/ca.pem:/bench-ca.pem:ro",
                           "localhost/airut-base:latest", "python3", "-", "allowed.test",
                           "8443", str(requests), input=CLIENT, timeout=600).stdout
    finally:
        lab.guest("rm", "-f", "/run/airut/policies/bench-latency.json")
        lab.guest("podman", "network", "rm", "-f", "bench-sandboxed")
    return {"proxied": json.loads(proxied), "direct": json.loads(direct)}


def rss_kib(lab: Lab, pid: str) -> int:
    status = lab.guest("cat", f"/proc/{pid}/status").stdout
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("VmRSS:")))


def proxy_memory(lab: Lab) -> tuple[int, int]:
    pid = lab.guest("systemctl", "show", "-p", "MainPID", "--value",
                    "airut-proxy@0").stdout.strip()
    idle = rss_kib(lab, pid)
    for i in range(10):
        write_policy(lab, bench_policy(f"bench-mem-{i}", 200 + i))
    time.sleep(1)  # the proxy reloads on the doorbell
    loaded = rss_kib(lab, pid)
    lab.guest("sh", "-c", "rm -f /run/airut/policies/bench-mem-*.json")
    return idle, loaded


SETUP = r"""
import json, sys, time
from podman import PodmanClient
n = int(sys.argv[1]); create, remove = [], []
with PodmanClient(base_url="unix:///run/podman/podman.sock") as c:
    c.version()
    for i in range(n):
        t = time.perf_counter()
        net = c.networks.create(f"bench-setup-{i}", internal=True, dns_enabled=False,
                                subnets=[{"subnet": f"10.199.{220 + i % 10}.0/24",
                                          "gateway": f"10.199.{220 + i % 10}.1"}])
        create.append(time.perf_counter() - t)
        t = time.perf_counter(); net.remove(force=True); remove.append(time.perf_counter() - t)
print(json.dumps({"create": create, "remove": remove}))
"""

PER_TASK_PROXY = r"""
import json, socket, subprocess, sys, time
starts, rss = [], []
for i in range(int(sys.argv[1])):
    t = time.perf_counter()
    p = subprocess.Popen(["/var/lib/airut-lab/guest-venv/bin/airut-proxy", "--port", "39080",
                          "--dns-port", "39053", "--policies", "/run/airut/policies",
                          "--confdir", "/var/lib/airut-proxy"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            socket.create_connection(("127.0.0.1", 39080), timeout=0.05).close(); break
        except OSError:
            time.sleep(0.01)
    starts.append(time.perf_counter() - t)
    time.sleep(0.5)
    rss.append(int(next(l.split()[1] for l in open(f"/proc/{p.pid}/status")
                        if l.startswith("VmRSS:"))))
    p.terminate(); p.wait()
print(json.dumps({"start": starts, "rss_kib": rss}))
"""


def parse_variant(spec: str) -> tuple[int, str | None, bool]:
    """'2' -> (2, None, False); '2@0' -> pinned to CPU 0; '2reuse' -> SO_REUSEPORT."""
    reuse = spec.endswith("reuse")
    count, _, cpus = spec.removesuffix("reuse").partition("@")
    return int(count), cpus or None, reuse


def run_variant(lab, spec: str, count: int, cpus: str | None, reuse: bool, args) -> None:
    from bench import proxy_load

    proxy_load.vary(lab, count, cpus, reuse)
    print(f"\n== {spec}: {count} proxy worker(s)"
          + (f", pinned to CPU {cpus}" if cpus is not None else "")
          + (", one port with SO_REUSEPORT" if reuse else ", sharded by network"))
    print(f"idle RSS: {proxy_load.rss_text(proxy_load.proxy_rss_mib(lab))}")
    if args.clients:
        proxy_load.load(lab, [int(c) for c in args.clients.split(",")],
                        args.seconds)
    for noisy in (8, 1):
        quiet = proxy_load.neighbour(lab, args.seconds, noisy)
        print(f"noisy neighbour, {spec}: a quiet task's small request while "
              f"{noisy} task(s) open TLS connections flat out: {ms(quiet)} "
              f"({len(quiet)} requests)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--load", action="store_true",
                        help="many clients at once instead (bench/proxy_load.py)")
    parser.add_argument("--clients", default="1,4,8,16")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", default="1,2",
                        help="variants to compare: N workers, N@CPUS pinned (CPUAffinity=), "
                             "Nreuse (SO_REUSEPORT on one port)")
    args = parser.parse_args()
    if args.load:
        from bench import proxy_load

        for spec in args.workers.split(","):
            count, cpus, reuse = parse_variant(spec)
            config = base_config(demo={})
            config["proxy"]["workers"] = count
            with booted(config) as lab:
                try:
                    run_variant(lab, spec, count, cpus, reuse, args)
                finally:
                    proxy_load.unvary(lab)
        return

    with booted(base_config(demo={})) as lab:
        lab.guest("systemctl", "restart", "airut-proxy@0")  # a fresh process for its memory
        time.sleep(1)
        idle, loaded = proxy_memory(lab)
        times = latency(lab, args.requests)
        setup = json.loads(guest_python(lab, SETUP, "20"))
        per_task = json.loads(guest_python(lab, PER_TASK_PROXY, "3"))
    print(f"bench/proxy: {args.requests} HTTPS requests per series, client in a container")
    for kind in ("keepalive", "new_tls"):
        p, d = times["proxied"][kind], times["direct"][kind]
        print(f"  {kind:9}  direct  {ms(d)}")
        print(f"  {kind:9}  proxied {ms(p)}   added p50 "
              f"{(sorted(p)[len(p) // 2] - sorted(d)[len(d) // 2]) * 1000:.1f} ms")
    print(f"  airut-proxy@0 RSS: idle {idle / 1024:.1f} MiB, with 10 task policies "
          f"{loaded / 1024:.1f} MiB")
    print(f"  task network create (internal, fixed subnet)  {ms(setup['create'])}")
    print(f"  task network remove                            {ms(setup['remove'])}")
    print(f"  one proxy per task instead: start to listening {ms(per_task['start'])}, "
          f"RSS {sum(per_task['rss_kib']) / len(per_task['rss_kib']) / 1024:.1f} MiB each")


if __name__ == "__main__":
    main()
