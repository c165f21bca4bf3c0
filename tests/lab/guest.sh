#!/bin/bash
# guest.sh CMD... : run a command inside the running lab guest (all its namespaces).
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lab.env"
L=$(cat "/run/sdlab-$AIRUT_GUEST.leader" 2>/dev/null) || { echo "the lab guest is not running" >&2; exit 1; }
exec nsenter -t "$L" -a "$@"
