"""Commands in the sandbox: the contract (exit codes, the image's content hash) and the
runner's side, command by command, with the stand-ins of test_runner_stages for systemd
and podman (the lab's system tests run the real ones)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from airut_core import commands
from airut_core.records import CommandRecord
from airut_core.spool import Stage
from airut_runner import daemon, housekeeping
from tests.unit.test_runner_stages import FakePodman, runner, spin

__all__ = ["runner"]  # the fixture, shared


# -- exit codes -------------------------------------------------------------------------------


@pytest.mark.parametrize("marker, stop, code, outcome", [
    ({"service_result": "success", "exit_code": "exited", "exit_status": "0"}, False, 0,
     "exited"),
    ({"service_result": "exit-code", "exit_code": "exited", "exit_status": "3"}, False, 3,
     "exited"),
    ({"service_result": "timeout", "exit_code": "killed", "exit_status": "TERM"}, False, 124,
     "timeout"),
    ({"service_result": "oom-kill", "exit_code": "killed", "exit_status": "KILL"}, False, 137,
     "out_of_memory"),
    ({"service_result": "exit-code", "exit_code": "exited", "exit_status": "1",
      "oom_kills": 2}, False, 137, "out_of_memory"),
    ({"service_result": "signal", "exit_code": "killed", "exit_status": "TERM"}, False, 143,
     "exited"),
    ({"service_result": "exit-code", "exit_code": "exited", "exit_status": "143"}, True, 130,
     "stopped"),
    ({"service_result": "resources"}, False, 125, "error"),
])
def test_how_a_unit_ended_becomes_the_exit_code(marker, stop, code, outcome):
    result = commands.result_of(marker, stop_requested=stop)
    assert (result.exit_code, result.outcome) == (code, outcome)


def test_a_result_survives_the_trip_through_its_file(tmp_path):
    commands.write_result(tmp_path / "run", commands.Result(124, "timeout", "too long", "u"))
    assert commands.read_result(tmp_path / "run") == commands.Result(124, "timeout",
                                                                     "too long", "u")
    (tmp_path / "run" / commands.RESULT).write_text("[1]")
    assert commands.read_result(tmp_path / "run").exit_code == 125


# -- the image's content hash -------------------------------------------------------------------


def git(*args, cwd):
    return subprocess.run(["git", "-c", "user.name=T", "-c", "user.email=t@x", *args],
                          cwd=cwd, check=True, capture_output=True, text=True).stdout


def test_a_directory_hashes_to_the_tree_id_it_would_have_on_a_branch(tmp_path):
    repo = tmp_path / "repo"
    context = repo / ".airut" / "container"
    context.mkdir(parents=True)
    (context / "Dockerfile").write_text("FROM x\nCOPY run.sh /\n")
    (context / "run.sh").write_text("#!/bin/sh\n")
    (context / "run.sh").chmod(0o755)
    (context / "sub").mkdir()
    (context / "sub" / "a").write_text("a")
    os.symlink("run.sh", context / "link")
    git("init", "-q", "-b", "main", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "x", cwd=repo)
    committed = git("rev-parse", "HEAD:.airut/container", cwd=repo).strip()
    # Ignore files do not hide anything from the image's hash.
    (context / ".gitignore").write_text("secret\n")
    (context / "secret").write_text("s")
    assert commands.snapshot(context) != committed
    os.unlink(context / ".gitignore")
    os.unlink(context / "secret")
    copy = tmp_path / "copy"
    assert commands.snapshot(context, copy) == committed
    assert commands.snapshot(copy) == committed  # the copy is exactly what was hashed
    assert os.readlink(copy / "link") == "run.sh" and os.access(copy / "run.sh", os.X_OK)
    assert not (context / ".git").exists()


def test_a_users_checkout_is_read_as_that_user(tmp_path):
    """Root hashes a user's checkout: a context that leads to root's own files fails."""
    secret = tmp_path / "root-only"
    secret.mkdir(mode=0o700)
    (secret / "Dockerfile").write_text("FROM x\nCOPY id_rsa /\n")
    (secret / "id_rsa").write_text("PRIVATE")
    checkout = tmp_path / "checkout"
    (checkout / ".airut").mkdir(parents=True)
    os.symlink(secret, checkout / ".airut" / "container")
    os.chmod(tmp_path, 0o755)
    with pytest.raises(commands.SnapshotError, match="cannot read"):
        commands.snapshot(checkout / ".airut" / "container", tmp_path / "copy",
                          owner=(65534, 65534))
    assert not (tmp_path / "copy" / "id_rsa").exists()
    assert commands.snapshot(checkout / ".airut" / "container")  # root may read its own


def test_a_checkouts_allowlist_must_be_its_owners_file(tmp_path):
    from airut_cli import sandbox

    (tmp_path / ".airut").mkdir()
    (tmp_path / ".airut" / "network-allowlist.yaml").write_text("domains: [x.test]\n")
    assert sandbox._allowlist(tmp_path, os.getuid()) == "domains: [x.test]\n"
    with pytest.raises(sandbox.SandboxCliError, match="not a file of the checkout's owner"):
        sandbox._allowlist(tmp_path, 1000)
    assert sandbox._allowlist(tmp_path / "none", 1000) is None


def test_a_missing_directory_cannot_be_hashed(tmp_path):
    with pytest.raises(commands.SnapshotError):
        commands.snapshot(tmp_path / "none")


# -- the runner's side ----------------------------------------------------------------------------


def ask(r, **fields) -> str:
    record = CommandRecord(argv=fields.pop("argv", ["make", "test"]), requested_by="test",
                           **fields)
    return commands.submit(r.ctx.spool, record)


def result(r, cid):
    return commands.read_result(commands.run_dir(r.ctx.state_dir, cid))


def end(r, cid, **marker) -> None:
    r.ctx.systemd.units.pop(commands.unit_name(cid), None)
    r.ctx.spool.command_ends.ensure().put(cid, marker)


def test_a_command_runs_in_its_own_unit_and_leaves_nothing_behind(runner):
    cid = ask(runner, repo="demo", timeout=60)
    unit = commands.unit_name(cid)
    spin(runner, lambda: unit in runner.ctx.systemd.units)
    props = runner.ctx.systemd.units[unit]
    argv = [a.decode() for a in props[b"ExecStart"][0][1]]
    run = commands.run_dir(runner.ctx.state_dir, cid)
    [entry] = [a for a in argv if a.startswith("--entrypoint=")]
    # systemd would expand $VAR: a literal $ reaches it as $$.
    assert json.loads(entry.split("=", 1)[1].replace("$$", "$")) == [
        "/bin/sh", "-c", 'exec "$@"', "sh", "make", "test"]
    assert f"--volume={run / 'workspace'}:/workspace:rw" in argv
    assert (run / "workspace" / "README.md").exists()  # a clone of the default branch
    assert props[b"RuntimeMaxUSec"] == 60_000_000
    assert props[b"StandardOutputFileToAppend"] == str(run / "stdout").encode()
    assert f"AIRUT_SANDBOX={cid}".encode() in props[b"LogExtraFields"]
    assert not any("claude" in a for a in argv)
    assert "ANTHROPIC" not in (run / "env").read_text()
    assert f"airut-sandbox-{cid}" in runner.ctx.podman.networks
    end(runner, cid, service_result="exit-code", exit_code="exited", exit_status="3")
    spin(runner, lambda: result(runner, cid))
    assert result(runner, cid).exit_code == 3
    assert not runner.ctx.spool.commands.exists(cid)
    assert not runner.ctx.podman.networks
    assert not (run / "workspace").exists() and not (run / "env").exists()
    assert runner.ctx.uids.find(commands.uid_claim(cid)) is None


def test_a_checkout_maps_container_root_to_its_owner(runner, tmp_path):
    # The proxy and firewall checks and the proxy's group are the system tests' part.
    sandbox = runner.ctx.sandbox
    sandbox.policies = Stage(tmp_path / "policies")
    sandbox.check_ready = lambda state_of, subnet: None
    sandbox.write_policy = lambda policy: sandbox.policies.ensure().put(policy.task_id,
                                                                        policy.to_dict())
    checkout = tmp_path / "checkout"
    (checkout / ".airut").mkdir(parents=True)
    cid = ask(runner, workspace=str(checkout), workspace_owner=[1234, 1235],
              allowlist="domains: [pypi.org]\n")
    spin(runner, lambda: commands.unit_name(cid) in runner.ctx.systemd.units)
    argv = [a.decode() for a in
            runner.ctx.systemd.units[commands.unit_name(cid)][b"ExecStart"][0][1]]
    assert [a for a in argv if a.startswith(("--uidmap", "--gidmap"))] == [
        "--uidmap=0:1234:1", "--gidmap=0:1235:1"]
    assert runner.ctx.uids.find(commands.uid_claim(cid)) is None
    assert f"--volume={checkout}:/workspace:rw" in argv
    policy = sandbox.policies.read(cid)
    assert policy["allowlist"]["domains"] == ["pypi.org"]
    assert policy["network_log"] == str(commands.run_dir(runner.ctx.state_dir, cid)
                                        / "network.log")


def test_commands_that_cannot_run_say_why_and_the_others_still_run(runner, tmp_path):
    bad = "20200101T000000000-aaaaaa"
    runner.ctx.spool.commands.ensure().put(bad, {"schema": "airut.command/1", "argv": 7})
    no_allowlist = ask(runner, workspace=str(tmp_path), workspace_owner=[1000, 1000])
    as_root = ask(runner, workspace=str(tmp_path), workspace_owner=[0, 0], allowlist="{}")
    unknown = ask(runner, repo="nope")
    good = ask(runner, repo="demo")
    spin(runner, lambda: all(result(runner, c) for c in (bad, no_allowlist, as_root,
                                                           unknown)))
    assert "argv" in result(runner, bad).error
    assert "network-allowlist.yaml" in result(runner, no_allowlist).error
    assert "unprivileged user" in result(runner, as_root).error
    assert "no repository 'nope'" in result(runner, unknown).error
    assert all(result(runner, c).exit_code == 125 for c in (bad, no_allowlist, as_root,
                                                           unknown))
    spin(runner, lambda: commands.unit_name(good) in runner.ctx.systemd.units)
    assert not runner.ctx.spool.commands.exists(bad)


def test_a_stopped_command_ends_with_130_and_a_lost_one_with_125(runner):
    stopped, lost = ask(runner, repo="demo"), ask(runner, repo="demo")
    spin(runner, lambda: {commands.unit_name(stopped), commands.unit_name(lost)}
         <= set(runner.ctx.systemd.units))
    # Like systemd: a stopped unit stays until it has stopped (and written its marker).
    asked = []
    runner.ctx.systemd.stop = lambda name: asked.append(name) or True
    commands.stop(runner.ctx.spool, stopped, "test")
    spin(runner, lambda: asked == [commands.unit_name(stopped)])
    end(runner, stopped, service_result="exit-code", exit_code="exited", exit_status="143")
    runner.ctx.systemd.units.pop(commands.unit_name(lost))  # gone without a marker
    spin(runner, lambda: result(runner, stopped) and result(runner, lost))
    assert result(runner, stopped).exit_code == 130
    assert (result(runner, lost).exit_code, result(runner, lost).outcome) == (125, "lost")


def test_a_command_whose_output_outgrows_the_disk_limit_is_stopped(runner):
    cid = ask(runner, repo="demo")
    spin(runner, lambda: commands.unit_name(cid) in runner.ctx.systemd.units)
    assert runner.ctx.commands[cid].output_limit == 10 << 30  # the repository's disk limit
    runner.ctx.commands[cid].output_limit = 1000
    asked = []
    runner.ctx.systemd.stop = lambda name: asked.append(name) or True
    (commands.run_dir(runner.ctx.state_dir, cid) / "stderr").write_bytes(b"x" * 1001)
    spin(runner, lambda: asked == [commands.unit_name(cid)])
    end(runner, cid, service_result="exit-code", exit_code="exited", exit_status="143")
    spin(runner, lambda: result(runner, cid))
    assert (result(runner, cid).exit_code, result(runner, cid).outcome) == (125, "disk_limit")
    assert "passed 1000 bytes" in result(runner, cid).error


def test_a_stop_before_it_runs_ends_it_without_a_unit(runner):
    cid = ask(runner, repo="demo")
    commands.stop(runner.ctx.spool, cid, "test")
    spin(runner, lambda: result(runner, cid))
    assert result(runner, cid).exit_code == 130
    assert commands.unit_name(cid) not in runner.ctx.systemd.started


def test_a_restarted_runner_adopts_a_running_command(runner):
    cid = ask(runner, repo="demo")
    spin(runner, lambda: commands.unit_name(cid) in runner.ctx.systemd.units)
    systemd = runner.ctx.systemd
    again = daemon.Runner(runner.cfg, systemd=systemd, podman=FakePodman())
    again.adopt()
    spin(again, lambda: cid in again.ctx.commands and again.ctx.commands[cid].unit)
    assert systemd.started.count(commands.unit_name(cid)) == 1
    end(again, cid, service_result="success", exit_code="exited", exit_status="0")
    spin(again, lambda: result(again, cid))
    assert result(again, cid).exit_code == 0
    again.ctx.pool.shutdown(wait=True)


def test_housekeeping_removes_output_nobody_collected(runner):
    state, spool = runner.ctx.state_dir, runner.ctx.spool
    old = commands.run_dir(state, "20200101T000000000-aaaaaa")
    pending = commands.run_dir(state, "20200101T000000000-bbbbbb")
    fresh = commands.run_dir(state, "20200101T000000000-cccccc")
    for d in (old, pending, fresh):
        d.mkdir(parents=True)
    spool.commands.ensure().put("20200101T000000000-bbbbbb", {})
    for d in (old, pending):
        os.utime(d, (time.time() - 2 * 86400,) * 2)
    housekeeping.clean_command_runs(spool, Path(state))
    assert not old.exists() and pending.exists() and fresh.exists()

