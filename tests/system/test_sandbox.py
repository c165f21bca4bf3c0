"""`airut sandbox run` and `airut sandbox image` in the lab: the real runner starts the
command's unit under the guest's systemd, real podman runs it in a task's confinement,
the real proxy applies the repository's allowlist and masked secrets."""

from __future__ import annotations

import subprocess
import threading

from tests.system.lab import REAL_GH_TOKEN, WRITE_ALLOWLIST, wait_until
from tests.system.test_runner import imaged_repo


def sandbox(lab, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return lab.airut("sandbox", *args, check=False, timeout=timeout)


def test_the_command_output_and_exit_code_come_back(lab):
    done = sandbox(lab, "run", "--repo", "demo", "--",
                   "sh", "-c", "echo out; echo err >&2; pwd; test -f README.md; exit 3")
    assert done.returncode == 3, done.stderr
    assert done.stdout.split() == ["out", "/workspace"]
    assert done.stderr.strip() == "err"
    assert sandbox(lab, "run", "--repo", "demo", "--", "true").returncode == 0
    # Nothing stays behind: no request, no output, no network.
    assert not list((lab.spool / "commands").glob("*.json"))
    assert not list((lab.state / "sandbox").iterdir())
    networks = lab.guest("podman", "network", "ls", "--format", "{{.Name}}").stdout
    assert "airut-sandbox-" not in networks


def test_timeout_memory_and_infrastructure_have_their_own_exit_codes(lab):
    slow = sandbox(lab, "run", "--repo", "small", "--timeout", "2", "--", "sleep", "60")
    assert slow.returncode == 124, slow.stderr
    assert "past its timeout" in slow.stderr
    # 600 MiB against the repository's 320M.
    hungry = sandbox(lab, "run", "--repo", "small", "--",
                     "perl", "-e", '$x = "a" x (600 << 20); print length $x')
    assert hungry.returncode == 137, hungry.stderr
    broken = sandbox(lab, "run", "--repo", "broken", "--", "true")
    assert broken.returncode == 125
    assert "missing.git" in broken.stderr
    missing = sandbox(lab, "run", "--repo", "demo", "--", "no-such-command")
    assert missing.returncode == 127, missing.stderr


def test_the_allowlist_and_masked_secrets_apply(lab):
    log = "/tmp/sandbox-network.log"
    done = sandbox(lab, "run", "--repo", "demo", "--network-log", log, "--", "sh", "-c",
                   "echo token=$GH_TOKEN; "
                   "curl -sS -o /dev/null -w '%{http_code}\\n' http://allowed.test/hello; "
                   "curl -sS -o /dev/null -w '%{http_code}\\n' http://blocked.test/")
    assert done.returncode == 0, done.stderr
    token, allowed, blocked = done.stdout.split()
    assert token.startswith("token=ghp_") and REAL_GH_TOKEN not in done.stdout
    assert (allowed, blocked) == ("200", "403")
    network = lab.guest("cat", log).stdout
    assert "BLOCKED GET blocked.test / -> 403 (host)" in network
    assert "ALLOWED GET allowed.test /hello -> 200" in network


def test_the_unit_and_its_limits_are_visible_while_it_runs(lab):
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(done=sandbox(
        lab, "run", "--repo", "small", "--", "sleep", "6")))
    runner.start()
    unit = wait_until(lambda: [u for u in lab.guest(
        "systemctl", "list-units", "--no-legend", "--plain", "airut-sandbox-*").stdout.split()
        if u.startswith("airut-sandbox-")], 60, "the command's unit")[0]
    props = lab.unit_properties(unit, "MemoryMax", "TasksMax", "RuntimeMaxUSec", "Slice")
    assert props["MemoryMax"] == str(320 << 20) and props["TasksMax"] == "256"
    assert props["RuntimeMaxUSec"] == "10s" and props["Slice"] == "airut-tasks.slice"
    command_id = unit.removeprefix("airut-sandbox-").removesuffix(".service")
    runner.join(60)
    assert result["done"].returncode == 0
    journal = lab.journal(f"AIRUT_SANDBOX={command_id}")
    assert "ended: exit code 0" in journal and f"started unit {unit}" in journal


def test_a_checkout_is_the_workspace_and_its_owner_container_root(lab):
    lab.guest("sh", "-ec", f"""
rm -rf /srv/checkout && mkdir -p /srv/checkout && cd /srv/checkout
printf 'hello\\n' > notes.txt
{WRITE_ALLOWLIST}
chown -R 1000:1000 /srv/checkout
""")
    done = sandbox(lab, "run", "--dir", "/srv/checkout", "--", "sh", "-c",
                   "cat notes.txt; id -u; echo made > made.txt")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["hello", "0"]
    owner = lab.guest("stat", "-c", "%u:%g", "/srv/checkout/made.txt").stdout.strip()
    assert owner == "1000:1000"
    lab.guest("chown", "root:root", "/srv/checkout")
    refused = sandbox(lab, "run", "--dir", "/srv/checkout", "--", "true")
    assert refused.returncode == 125 and "belongs to root" in refused.stderr
    lab.guest("sh", "-c", "chown 1000:1000 /srv/checkout && "
              "rm /srv/checkout/.airut/network-allowlist.yaml")
    no_allowlist = sandbox(lab, "run", "--dir", "/srv/checkout", "--", "true")
    assert no_allowlist.returncode == 125 and "network-allowlist.yaml" in no_allowlist.stderr


def test_image_hash_save_and_load_for_a_ci_cache(lab):
    lab.guest("sh", "-ec", imaged_repo("v1"))
    built = sandbox(lab, "run", "--repo", "imaged", "--", "cat", "/etc/image-version")
    assert built.returncode == 0 and built.stdout.strip() == "v1", built.stderr
    tree = sandbox(lab, "image", "hash", "--repo", "imaged").stdout.strip()
    assert tree == lab.guest("git", "-C", "/srv/git/imaged.git", "rev-parse",
                             "main:.airut/container").stdout.strip()
    # A checkout of the same content hashes the same: its image is the same.
    lab.guest("sh", "-ec", "rm -rf /srv/imaged-co && git clone -q /srv/git/imaged.git "
              "/srv/imaged-co && chown -R 1000:1000 /srv/imaged-co")
    assert sandbox(lab, "image", "hash", "--dir", "/srv/imaged-co").stdout.strip() == tree
    tag = f"localhost/airut-repo:{tree[:20]}"
    assert sandbox(lab, "image", "save", "--repo", "imaged", "/tmp/image.tar").returncode == 0
    lab.guest("podman", "rmi", "--force", tag)
    loaded = sandbox(lab, "image", "load", "/tmp/image.tar")
    assert loaded.returncode == 0 and tag in loaded.stdout, loaded.stderr
    assert lab.guest("podman", "image", "exists", tag, check=False).returncode == 0
    # The checkout's command runs in the loaded image (podman never pulls), unbuilt.
    builds = lab.journal("-u", "airut-runner").count(f"building image {tag}")
    again = sandbox(lab, "run", "--dir", "/srv/imaged-co", "--", "cat", "/etc/image-version")
    assert again.stdout.strip() == "v1", again.stderr
    assert lab.journal("-u", "airut-runner").count(f"building image {tag}") == builds
    # An image whose tag does not name its content is refused and removed again.
    forged = "localhost/airut-repo:0123456789abcdef0123"
    lab.guest("podman", "tag", tag, forged)
    lab.guest("podman", "save", "--quiet", "-o", "/tmp/forged.tar", forged)
    lab.guest("podman", "rmi", forged)
    refused = sandbox(lab, "image", "load", "/tmp/forged.tar")
    assert refused.returncode == 1 and "does not match" in refused.stderr
    assert lab.guest("podman", "image", "exists", forged, check=False).returncode == 1
