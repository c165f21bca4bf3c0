"""`airut-proxy --firewall N`: load airut's nftables ruleset (airut.nft) for N proxy
workers. The file holds everything but the map from task networks to workers, which
is written here: task network k (10.199.k.0/24) to worker k mod N, port 29080 + k mod N,
the same rule the runner uses to know a task's worker (airut_core.sandbox.worker_of).
nft replaces the table atomically, so a running task never sees it half loaded.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from airut_core.sandbox import MAX_WORKERS, SUBNET_POOL, subnet, worker_of, worker_port

TEMPLATE = Path("/usr/share/airut/airut.nft")
SUBNETS = 1 << (24 - SUBNET_POOL.prefixlen)


def render(template: str, workers: int) -> str:
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"{workers} proxy workers: between 1 and {MAX_WORKERS}")
    mapping = ", ".join(f"{subnet(k)} : {worker_port(worker_of(subnet(k), workers))}"
                        for k in range(SUBNETS))
    ports = ", ".join(str(worker_port(w)) for w in range(workers))
    return template.replace("@WORKERS@", f"{{ {mapping} }}").replace("@PORTS@", ports)


def main(workers: int, template: Path = TEMPLATE) -> int:
    try:
        ruleset = render(template.read_text(), workers)
    except (OSError, ValueError) as e:
        print(f"airut-proxy --firewall: {e}", file=sys.stderr)
        return 1
    done = subprocess.run(["nft", "-f", "-"], input=ruleset, text=True)
    return done.returncode
