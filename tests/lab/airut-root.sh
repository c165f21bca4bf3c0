#!/bin/bash
# airut-root.sh ROOT HOSTNAME : airut and the lab's stand-ins for the internet, installed
# into the nspawn lab guest's root filesystem.
# - the current source into guest-venv, as a package would install it, and airut's
#   units pointed at that venv (install-units.sh);
# - the stand-ins for the internet (stand-ins.sh).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
. "$HERE/lab.env"
ROOT=${1:?usage: airut-root.sh ROOT HOSTNAME}; NAME=${2:?usage: airut-root.sh ROOT HOSTNAME}
"$HERE/stand-ins.sh" "$ROOT" "$NAME"
rm -rf "$REPO/build"  # stale modules of earlier builds would be installed too
"$AIRUT_LAB/guest-venv/bin/pip" install -q --no-deps --force-reinstall --no-build-isolation "$REPO" >&2
"$HERE/install-units.sh" "$ROOT"
