#!/bin/bash
# dashboard.sh [PORT] : the running lab guest's dashboard on this machine, at
# http://127.0.0.1:PORT (5200 by default), until Ctrl-C. The guest has a network of
# its own; each connection is relayed into it (tests/system/forward.py).
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
. "$HERE/lab.env"
L=$(cat "/run/sdlab-$AIRUT_GUEST.leader" 2>/dev/null) || { echo "the lab guest is not running" >&2; exit 1; }
cd "$REPO" && exec "$AIRUT_LAB/venv/bin/python" -m tests.system.forward --leader "$L" --port "${1:-5200}"
