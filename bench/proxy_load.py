"""bench/proxy --load: airut-proxy under load from many tasks at once.

K clients (1, 4, 8, 16), each a container on a task network of its own with its own
policy, run for --seconds at the same time, in three ways: one keep-alive HTTPS
connection for many 1 KiB responses, a new TLS connection per 1 KiB response, and
1 MiB responses over keep-alive. The same clients on podman's own network talking to
the same server directly are the floor, measured in the same run. Reported: requests
(or MiB) per second over all clients, p50 latency, and the proxy's CPU time per
request (its cgroup's CPUUsageNSec before and after: steadier than rates on a shared
machine), and its RSS at the end of each point. Then the noisy neighbour: one quiet
task making a small request every 100 ms while 8 others open new TLS connections as
fast as they can; the quiet task's p50/p95.
"""

from __future__ import annotations

import json
import time

from bench.common import IMAGE, percentile
from bench.proxy import bench_policy, write_policy
from tests.system.lab import Lab

CLIENT = r"""
import http.client, json, ssl, sys, time
host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
start, seconds = float(sys.argv[4]), float(sys.argv[5])
ctx = ssl.create_default_context(cafile="/bench-ca.pem")
path = "/stream/bytes?size=%d&seconds=0" % (1 << 20 if mode == "bulk" else 1024)
while time.time() < start:
    time.sleep(0.005)
times, size, errors = [], 0, 0
conn = None
end = start + seconds
while time.time() < end:
    t = time.perf_counter()
    try:
        if conn is None or mode == "new_tls":
            if conn is not None:
                conn.close()
            conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=30)
        conn.request("GET", path)
        r = conn.getresponse()
        size += len(r.read())
        if r.status != 200:
            errors += 1
    except OSError:
        errors += 1
        conn = None
        continue
    times.append(time.perf_counter() - t)
    if mode == "quiet":
        time.sleep(0.1)
print(json.dumps({"times": times, "bytes": size, "errors": errors}))
"""
MODES = ("keepalive", "new_tls", "bulk")
FIRST_SUBNET = 200  # bench clients' task subnets: 10.199.200.0/24 onwards


def proxy_units(lab: Lab) -> list[str]:
    out = lab.guest("systemctl", "list-units", "--plain", "--no-legend", "--state=active",
                    "airut-proxy@*.service", "airut-proxy-dns.service").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def proxy_cpu_ns(lab: Lab) -> int:
    """CPU time of every worker and the DNS responder together."""
    total = 0
    for unit in proxy_units(lab):
        out = lab.guest("systemctl", "show", "-p", "CPUUsageNSec", "--value",
                        unit).stdout.strip()
        total += int(out) if out.isdigit() else 0
    return total


def proxy_rss_mib(lab: Lab) -> float:
    """RSS of the workers and the responder together."""
    total = 0
    for unit in proxy_units(lab):
        pid = lab.guest("systemctl", "show", "-p", "MainPID", "--value", unit).stdout.strip()
        status = lab.guest("cat", f"/proc/{pid}/status", check=False).stdout
        total += next((int(line.split()[1]) for line in status.splitlines()
                       if line.startswith("VmRSS:")), 0)
    return total / 1024


def networks(lab: Lab, clients: int) -> None:
    for i in range(clients):
        n = FIRST_SUBNET + i
        lab.guest("podman", "network", "create", "--internal", "--disable-dns", "--subnet",
                  f"10.199.{n}.0/24", "--gateway", f"10.199.{n}.1", f"bench-load-{i}",
                  check=False)
        write_policy(lab, bench_policy(f"bench-load-{i}", n))
    time.sleep(1)  # the proxy reloads its policies on the doorbell


def clean(lab: Lab, clients: int) -> None:
    for i in range(clients):
        lab.guest("podman", "network", "rm", "-f", f"bench-load-{i}", check=False)
        lab.guest("rm", "-f", f"/run/airut/policies/bench-load-{i}.json")


def point(lab: Lab, clients: int, mode: str, seconds: float, direct: bool,
          modes: list[str] | None = None) -> dict:
    """One point: all clients at once; returns rates, latencies and the proxy's CPU
    (with modes, client i runs modes[i]; "quiet" results are also kept apart)."""
    lab.put_file("/tmp/bench-client.py", CLIENT)
    lab.guest("sh", "-c", "echo '10.88.0.1 allowed.test' > /tmp/bench-hosts")
    start = time.time() + 3 + clients * 0.4  # every container is up by then
    names = []
    for i in range(clients):
        name = f"bench-load-client-{i}"
        names.append(name)
        if direct:
            where = ["--network=podman", "-v", "/tmp/bench-hosts:/etc/hosts:ro",
                     "-v", "/etc/airut/lab-tls/ca.pem:/bench-ca.pem:ro"]
            port = "8443"
        else:
            where = [f"--network=bench-load-{i}", f"--dns=10.199.{FIRST_SUBNET + i}.1",
                     "--no-hosts",
                     "-v", "/var/lib/airut-proxy/mitmproxy-ca-cert.pem:/bench-ca.pem:ro"]
            port = "443"
        lab.guest("podman", "run", "-d", "--name", name, "--pull=never", *where,
                  "-v", "/tmp/bench-client.py:/client.py:ro", IMAGE, "python3", "/client.py",
                  "allowed.test", port, modes[i] if modes else mode, str(start), str(seconds))
    while time.time() < start:
        time.sleep(0.05)
    cpu_before = proxy_cpu_ns(lab)
    lab.guest("podman", "wait", *names, timeout=seconds + 120)
    cpu_after = proxy_cpu_ns(lab)
    results = []
    for name in names:
        out = lab.guest("podman", "logs", name).stdout.strip().splitlines()
        results.append(json.loads(out[-1]))
        lab.guest("podman", "rm", "-f", name)
    quiet = [t for i, r in enumerate(results) if modes and modes[i] == "quiet"
             for t in r["times"]]
    times = [t for r in results for t in r["times"]]
    count = len(times)
    return {"quiet": quiet, "rate": count / seconds,
            "mib_s": sum(r["bytes"] for r in results) / seconds / 2**20,
            "p50_ms": percentile(times, 50) * 1000 if times else 0.0,
            "errors": sum(r["errors"] for r in results),
            "cpu_ms_per_request": (cpu_after - cpu_before) / 1e6 / count if count else 0.0,
            "rss_mib": proxy_rss_mib(lab)}


def load(lab: Lab, counts: list[int], seconds: float) -> None:
    networks(lab, max(counts))
    rows = []
    try:
        for clients in counts:
            for mode in MODES:
                proxied = point(lab, clients, mode, seconds, direct=False)
                direct = point(lab, clients, mode, seconds, direct=True)
                rows.append((clients, mode, proxied, direct))
                print(f"  {clients:2} clients {mode:9} proxied {describe(mode, proxied)}   "
                      f"direct {describe(mode, direct)}", flush=True)
    finally:
        clean(lab, max(counts))
    print(f"\nairut-proxy under load: {seconds:g} s per point, each client on its own task "
          "network; CPU-ms per request is the proxy's")
    print("| clients | keep-alive req/s, p50 | new TLS conn/s, p50 | 1 MiB: MiB/s | "
          "proxy CPU-ms per req (keep-alive / new TLS / MiB) | errors | proxy RSS | "
          "direct: keep-alive / new TLS / MiB/s |")
    print("|---|---|---|---|---|---|---|---|")
    for clients in counts:
        got = {mode: (p, d) for c, mode, p, d in rows if c == clients}
        ka, tls, bulk = got["keepalive"], got["new_tls"], got["bulk"]
        print(f"| {clients} | {ka[0]['rate']:,.0f}, {ka[0]['p50_ms']:.1f} ms | "
              f"{tls[0]['rate']:,.0f}, {tls[0]['p50_ms']:.1f} ms | {bulk[0]['mib_s']:,.0f} | "
              f"{ka[0]['cpu_ms_per_request']:.2f} / {tls[0]['cpu_ms_per_request']:.2f} / "
              f"{bulk[0]['cpu_ms_per_request']:.1f} | "
              f"{sum(g[0]['errors'] for g in got.values())} | "
              f"{max(g[0]['rss_mib'] for g in got.values()):.0f} MiB | "
              f"{ka[1]['rate']:,.0f} / {tls[1]['rate']:,.0f} / {bulk[1]['mib_s']:,.0f} |")


def neighbour(lab: Lab, seconds: float, noisy: int = 8) -> list[float]:
    """The quiet task's latencies while `noisy` tasks burst (new TLS per request)."""
    networks(lab, noisy + 1)
    try:
        got = point(lab, noisy + 1, "new_tls", seconds, direct=False,
                    modes=["new_tls"] * noisy + ["quiet"])
    finally:
        clean(lab, noisy + 1)
    return got["quiet"]


def describe(mode: str, result: dict) -> str:
    amount = (f"{result['mib_s']:7.1f} MiB/s" if mode == "bulk"
              else f"{result['rate']:7.0f} req/s")
    return f"{amount} p50 {result['p50_ms']:6.1f} ms err {result['errors']}"
