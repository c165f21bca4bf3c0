"""bench/proxy --load: airut-proxy under load from many tasks at once.

K clients (1, 4, 8, 16), each a container on a task network of its own with its own
policy, run for --seconds at the same time, in three ways: one keep-alive HTTPS
connection for many 1 KiB responses, a new TLS connection per 1 KiB response, and
1 MiB responses over keep-alive. The same clients on podman's own network talking to
the same server directly are the floor, measured in the same run. Reported: requests
(or MiB) per second over all clients, p50 latency, and the proxy's CPU time per
request (its cgroup's CPUUsageNSec before and after: steadier than rates on a shared
machine), and each worker's RSS at the end of each point. Then the noisy neighbour:
one quiet task making a small request every 100 ms while 8 others (and then just one,
on the other shard) open new TLS connections as fast as they can; the quiet task's
p50/p95.

Variants (bench/proxy.py --workers): N workers sharded by the firewall's map; N@CPUS
the same with every proxy unit pinned to CPUS (CPUAffinity=, e.g. 2@0: two workers
on one core, to see how the numbers grow with cores); Nreuse: N workers all listening
on one port with SO_REUSEPORT (the kernel spreads connections, not tasks, over them;
bench only: a sitecustomize patches the workers' bind, and the map sends every
network to that port).
"""

from __future__ import annotations

import json
import re
import time

from airut_core.sandbox import MAX_WORKERS, PROXY_PORT, worker_port
from bench.common import IMAGE, percentile
from bench.proxy import bench_policy, rss_kib, write_policy
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


def main_pids(lab: Lab) -> dict[str, str]:
    """Each proxy unit's main process, from one systemctl call."""
    out = lab.guest("systemctl", "show", "-p", "Id", "-p", "MainPID",
                    *proxy_units(lab)).stdout
    pids = {}
    for block in out.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines())
        pids[props["Id"]] = props["MainPID"]
    return pids


def proxy_cpu_ns(lab: Lab) -> int:
    """CPU time of every worker and the DNS responder together (utime + stime from
    /proc: the nspawn guest's cgroups do not account CPUUsageNSec)."""
    stats = lab.guest("cat", *(f"/proc/{pid}/stat" for pid in main_pids(lab).values())).stdout
    hz = int(lab.guest("getconf", "CLK_TCK").stdout)
    # fields after the ")" closing the command name: utime and stime are the 12th and 13th
    ticks = sum(int(f[11]) + int(f[12])
                for f in (line.rpartition(")")[2].split() for line in stats.splitlines()))
    return ticks * 1_000_000_000 // hz


def proxy_rss_mib(lab: Lab) -> dict[str, float]:
    """RSS of each worker and of the responder, by unit."""
    return {unit: rss_kib(lab, pid) / 1024 for unit, pid in main_pids(lab).items()}


def rss_text(rss: dict[str, float]) -> str:
    workers = [v for unit, v in sorted(rss.items()) if unit.startswith("airut-proxy@")]
    dns = rss.get("airut-proxy-dns.service", 0.0)
    return (f"workers {' + '.join(f'{v:.0f}' for v in workers)} MiB, responder {dns:.0f} MiB, "
            f"all {sum(rss.values()):.0f} MiB")


REUSEPORT = f"""\
# bench/proxy_load's SO_REUSEPORT variant: every worker binds the first worker's port.
import os, socket
if os.environ.get("AIRUT_BENCH_REUSEPORT"):
    _bind = socket.socket.bind
    def bind(self, address):
        if isinstance(address, tuple) and {PROXY_PORT} <= address[1] < {PROXY_PORT + MAX_WORKERS}:
            self.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            address = (address[0], {PROXY_PORT}, *address[2:])
        return _bind(self, address)
    socket.socket.bind = bind
"""


BENCH_FILES = ("/etc/systemd/system/airut-proxy@.service.d/90-bench.conf",
               "/etc/systemd/system/airut-proxy-dns.service.d/90-bench.conf",
               "/etc/systemd/system/airut-firewall.service.d/90-bench.conf",
               "/usr/local/lib/airut-bench")


def unvary(lab: Lab) -> None:
    """Remove every variant's drop-ins: the guest's /etc outlives the run, and a
    leftover would silently turn the next run (or test) into a variant."""
    lab.guest("rm", "-rf", *BENCH_FILES)
    lab.guest("systemctl", "daemon-reload")


def vary(lab: Lab, count: int, cpus: str | None, reuse: bool) -> None:
    """Turn the booted lab (proxy.workers = count) into the variant asked for, and
    check that it took: the firewall's map and each worker's affinity."""
    unvary(lab)
    units = [f"airut-proxy@{i}.service" for i in range(count)] + ["airut-proxy-dns.service",
                                                                   "airut-firewall.service"]
    drop_ins: dict[str, list[str]] = {}
    if cpus is not None:
        for unit in ("airut-proxy@.service", "airut-proxy-dns.service"):
            drop_ins.setdefault(unit, []).append(f"CPUAffinity={cpus}")
    if reuse:
        lab.put_file("/usr/local/lib/airut-bench/sitecustomize.py", REUSEPORT)
        drop_ins.setdefault("airut-proxy@.service", []).append(
            "Environment=AIRUT_BENCH_REUSEPORT=1 PYTHONPATH=/usr/local/lib/airut-bench")
        drop_ins["airut-firewall.service"] = ["Environment=AIRUT_PROXY_WORKERS=1"]
    for unit, lines in drop_ins.items():
        lab.put_file(f"/etc/systemd/system/{unit}.d/90-bench.conf",
                     "[Service]\n" + "".join(f"{line}\n" for line in lines))
    lab.guest("systemctl", "daemon-reload")
    lab.guest("systemctl", "restart", *units)  # each worker is ready (Type=notify) after
    table = lab.guest("nft", "list", "table", "inet", "airut").stdout
    ports = {int(p) for p in re.findall(r"10\.199\.\d+\.0/24 : (\d+)", table)}
    expected = {PROXY_PORT} if reuse else {worker_port(w) for w in range(count)}
    assert ports == expected, f"the firewall's map sends task networks to {ports}"
    for unit, pid in main_pids(lab).items():
        allowed = lab.guest("taskset", "-cp", pid).stdout.split(":")[-1].strip()
        assert cpus is None or allowed == cpus, f"{unit} runs on CPUs {allowed}"
    if reuse:
        listening = lab.guest("ss", "-Hltnp", f"sport = :{PROXY_PORT}").stdout
        assert listening.count("pid=") >= count, \
            f"not every worker listens on {PROXY_PORT} with SO_REUSEPORT:\n{listening}"


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
            "rss": proxy_rss_mib(lab)}


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
    print(f"RSS after the last point: {rss_text(rows[-1][2]['rss'])}")
    print(f"\nairut-proxy under load: {seconds:g} s per point, each client on its own task "
          "network; CPU-ms per request is the proxy's")
    print("| clients | keep-alive req/s, p50 | new TLS conn/s, p50 | 1 MiB: MiB/s | "
          "proxy CPU-ms per req (keep-alive / new TLS / MiB) | errors | largest worker RSS | "
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
              f"{max(max(g[0]['rss'].values()) for g in got.values()):.0f} MiB | "
              f"{ka[1]['rate']:,.0f} / {tls[1]['rate']:,.0f} / {bulk[1]['mib_s']:,.0f} |")


def neighbour(lab: Lab, seconds: float, noisy: int) -> list[float]:
    """The quiet task's latencies while `noisy` tasks burst (new TLS per request);
    at least 20 s, so its p95 rests on ~100 requests."""
    seconds = max(seconds, 20.0)
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
