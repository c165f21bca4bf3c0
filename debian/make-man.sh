#!/bin/sh
# make-man.sh VENV OUTDIR : airut's manual pages, made by help2man from each program's
# --help, run from the virtual environment just built (its scripts' first line names
# the installed path, /usr/lib/airut/bin/python, which does not exist at build time).
set -e
VENV=$(cd "$1" && pwd); OUT=$2
VERSION=$(dpkg-parsechangelog -S Version)
mkdir -p "$OUT"
page() {  # page NAME SECTION WHAT
  printf '#!/bin/sh\nexec %s/bin/python %s/bin/%s "$@"\n' "$VENV" "$VENV" "$1" > "$OUT/$1"
  chmod +x "$OUT/$1"
  "$OUT/$1" --help > /dev/null  # a program that cannot start fails the build
  help2man --no-info --no-discard-stderr --version-string="$VERSION" --section="$2" \
    --name="$3" --output="$OUT/$1.$2" "$OUT/$1"
  rm "$OUT/$1"
}
page airut 1 "hand coding work to Claude Code: the command for users and operators"
page airut-runner 8 "airut's runner: one transient systemd unit per task"
page airut-proxy 8 "airut's egress proxy: the allowlist between tasks and the network"
page airut-email 8 "airut's email channel for one repository"
page airut-demo-model 8 "an offline stand-in for Anthropic's Messages API"
