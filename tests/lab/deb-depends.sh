#!/bin/bash
# deb-depends.sh DEB : what `apt install ./DEB` pulls from the distribution, as a
# comma-separated list for mmdebstrap --include: "a (>= 1), b | c, d" -> a,b,d (the
# first of each alternative, without versions). The clean machines that install the
# package have no network, so these are in place before it comes.
set -euo pipefail
DEB=${1:?usage: deb-depends.sh DEB}
{ dpkg-deb -f "$DEB" Depends; dpkg-deb -f "$DEB" Pre-Depends; } | tr ',' '\n' \
  | sed -e 's/|.*//' -e 's/(.*)//' -e 's/ //g' | grep -v '^$' | sort -u | paste -sd, -
