#!/bin/bash
# demo.sh : `make demo`. Builds the lab if needed, boots the guest with airut's
# daemons running as systemd units, creates a sample git repository, mails a task
# through the guest's postfix and shows the threaded answer in the sender's mailbox,
# continues the conversation with `airut submit`, and shows what happened.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lab.env"
RUN=$AIRUT_LAB/demo
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

bash "$HERE/build.sh"
bash "$HERE/down.sh" 10 2>/dev/null || true
rm -rf "$RUN"
say "booting the guest (systemd-nspawn, systemd 252, podman)"
bash "$HERE/up.sh" "$RUN" >/dev/null
G="$HERE/guest.sh"

say "a sample repository: /srv/git/demo.git"
$G sh -ec 'rm -rf /tmp/seed && mkdir -p /srv/git /tmp/seed && cd /tmp/seed && git init -q -b main
  printf "# Demo project\n\nA repository for airut'"'"'s demo.\n" > README.md
  mkdir -p .airut && printf "url_prefixes:\n  - host: api.anthropic.com\n    path: /v1/messages*\n    methods: [POST]\n  - host: api.anthropic.com\n    path: /api/claude_code/*\n    methods: [GET]\n" > .airut/network-allowlist.yaml
  git add -A && git -c user.name=Demo -c user.email=demo@example.com commit -qm "Start the demo project"
  git clone -q --bare /tmp/seed /srv/git/demo.git'

say "configuration: /etc/airut/airut.yaml"
install -D -m644 "$HERE/demo.yaml" "$AIRUT_LAB/guest/etc/airut/airut.yaml"
$G airut check-config

say "starting airut.target, and the guest's mail server (postfix, dovecot)"
$G systemctl daemon-reload
$G systemctl enable -q airut.target airut-runner.service airut-proxy-dns.service \
  airut-firewall.service airut-demo-model.service airut-email@demo.service
$G systemctl start dovecot.service postfix.service
$G systemctl start airut.target airut-demo-model.service airut-email@demo.service
$G systemctl --no-pager list-units 'airut*'

say "a task by mail: alice@corp.test writes to airut@corp.test"
cp "$HERE/demo-mail.py" "$RUN/srv/demo-mail.py"
$G python3 /srv/demo-mail.py "Have a look around and leave a note."
conv=$(cat "$RUN/srv/demo-conversation")

say "airut submit --conversation $conv \"Thanks, anything else?\""
reply=$($G airut submit --json --conversation "$conv" "Thanks, anything else?")
python3 - "$reply" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
print(r["text"])
print(f"\noutcome: {r['outcome']}   conversation: {r['conversation_id']}   task: {r['task_id']}")
print(f"the task ran in the transient unit: {r['unit']}")
PY

say "journalctl AIRUT_CONVERSATION=$conv (the mail, both tasks, their units, the proxy)"
$G journalctl --no-pager -o short AIRUT_CONVERSATION="$conv" | grep -v ' podman\[' || true

say "the agent's workspace: /var/lib/airut/conversations/$conv/workspace (owned by the container's uid, not root)"
$G sh -c "cd /var/lib/airut/conversations/$conv/workspace && ls -ln NOTES.md && git -c safe.directory=\"*\" status --short && cat NOTES.md"

say "its network log: every request it made, through airut-proxy"
$G cat "/var/lib/airut/conversations/$conv/network.log"

say "the dashboard (airut-web, in the guest on 127.0.0.1:5200): /api/health"
$G python3 -c 'import urllib.request as u; print(u.urlopen("http://127.0.0.1:5200/api/health").read().decode())' || true

cat <<MSG

The guest keeps running. Try:
  $HERE/dashboard.sh      (then open http://127.0.0.1:5200 in a browser on this machine)
  $HERE/guest.sh airut submit --conversation $conv "One more thing?"
  $HERE/guest.sh python3 /srv/demo-mail.py "Another task, by mail"
  $HERE/guest.sh systemctl status airut-runner
  $HERE/guest.sh journalctl -f AIRUT_CONVERSATION=$conv
Stop it with: make lab-down
MSG
