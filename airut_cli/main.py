"""`airut`: the operator's and user's command line.

Claude Code tasks by email, Slack or the command line.

  airut submit --repo R "text"          start a conversation, print the reply
  airut submit --conversation ID "text" continue one
  airut wait TASK                       print the reply of a task submitted with --no-wait
  airut stop TASK                       ask the runner to stop a task

For operators (as root):
  airut check [--offline]               host, configuration, secrets, repositories, mail
  airut reload                          apply an edited configuration (channels follow it)
  airut status [--json]                 daemons, queue depths, running tasks
  airut tasks [--repo R] [--since 2h]   recent tasks
  airut logs TASK [-f]                  one task's story across every daemon
  airut setup claude                    install the pinned Claude Code CLI (npm)
  airut check-config                    only validate the configuration file
  airut sandbox run [--repo R] [--dir D] -- CMD   a command in a task's sandbox
  airut sandbox image hash|save|load    the image cache of CI (doc/sandbox.md)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from airut_cli.terminal import printable
from airut_core import config as config_mod
from airut_core.config import ConfigError
from airut_core.records import ReplyRecord
from airut_ingest import local

EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT = 1, 2, 3
CONFIG_HELP = "configuration file (default /etc/airut/airut.yaml, or $AIRUT_CONFIG)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="airut", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help=CONFIG_HELP)
    # --config is also taken after the subcommand (`airut check-config --config F`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help=CONFIG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("submit", parents=[common], help="submit a task through the local channel")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--repo", help="repository id (starts a new conversation)")
    target.add_argument("--conversation", help="conversation id to continue")
    p.add_argument("--model", help="model for a new conversation (default: the repository's)")
    p.add_argument("--no-wait", action="store_true", help="print the task id and return")
    _reply_options(p)
    p.add_argument("text", help="the message; '-' reads stdin, '@FILE' reads a file")

    p = sub.add_parser("wait", parents=[common], help="wait for a task's reply and print it")
    p.add_argument("task")
    _reply_options(p)

    p = sub.add_parser("stop", parents=[common], help="stop a waiting or running task")
    p.add_argument("task")

    sub.add_parser("check-config", parents=[common],
                   help="validate the configuration and summarise it")

    p = sub.add_parser("check", parents=[common],
                       help="can this host run airut with this configuration? (exit 1: no)")
    p.add_argument("--offline", action="store_true",
                   help="skip the repositories and mail servers")

    sub.add_parser("reload", parents=[common],
                   help="check the configuration, then apply it: channels follow it, "
                        "running tasks are left alone")

    p = sub.add_parser("status", parents=[common],
                       help="daemons, queue depths per stage, running tasks")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("tasks", parents=[common], help="recent tasks, newest first")
    p.add_argument("--repo", help="only this repository's")
    p.add_argument("--since", help="only this recent: 90s, 30m, 2h, 7d")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("logs", parents=[common],
                       help="one task's journal lines from every daemon and its units")
    p.add_argument("task")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")

    p = sub.add_parser("setup", help="set up what the package cannot download")
    setup_sub = p.add_subparsers(dest="setup_command", required=True)
    p = setup_sub.add_parser("claude", parents=[common],
                             help="install the pinned Claude Code CLI into the cache (npm)")
    p.add_argument("npm_args", nargs="*", metavar="NPM_ARG",
                   help="passed to npm install after --, e.g. -- --offline "
                        "--cache /srv/npm-cache")

    p = sub.add_parser("schedule", help="scheduled tasks (doc/schedules.md)")
    schedule_sub = p.add_subparsers(dest="schedule_command", required=True)
    schedule_sub.add_parser("list", parents=[common],
                            help="every schedule and its calendar (systemctl list-timers "
                                 "'airut-schedule@*' shows the next runs)")
    p = schedule_sub.add_parser("fire", parents=[common],
                                help="queue a schedule's task now (what its timer runs)")
    p.add_argument("schedule", help="<repo>--<name>")

    p = sub.add_parser("sandbox", help="any command in a task's sandbox (doc/sandbox.md)")
    sandbox_sub = p.add_subparsers(dest="sandbox_command", required=True)
    p = sandbox_sub.add_parser(
        "run", parents=[common],
        help="run CMD in the sandbox a task would get; exit code: the command's, 124 "
             "timeout, 125 sandbox error, 137 out of memory, 130 stopped")
    _sandbox_source(p)
    p.add_argument("--timeout", type=int, help="seconds (default: the repository's "
                   "resource_limits.timeout)")
    p.add_argument("--network-log", metavar="FILE",
                   help="write the command's network log (allowed and blocked) here")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    p = sandbox_sub.add_parser("image", help="the sandbox image, for CI caches")
    image_sub = p.add_subparsers(dest="image_command", required=True)
    _sandbox_source(image_sub.add_parser("hash", parents=[common],
                                         help="print the content hash the image is tagged by"))
    p = image_sub.add_parser("save", parents=[common], help="write the image to a tarball")
    _sandbox_source(p)
    p.add_argument("file")
    p = image_sub.add_parser("load", parents=[common],
                             help="load an image saved with save (checked against its tag)")
    p.add_argument("file")

    p = sub.add_parser("email", help="the email channel")
    email_sub = p.add_subparsers(dest="email_command", required=True)
    p = email_sub.add_parser("check", parents=[common],
                             help="what the email daemon would make of a message "
                                  "(one JSON object; exit 0 whatever the verdict)")
    p.add_argument("file", help="the message, as an .eml file ('-' for stdin)")
    p.add_argument("--repo", required=True, help="the repository whose mailbox it reached")

    args = parser.parse_args(argv)
    try:
        sys.exit(COMMANDS[args.command](args))
    except (ConfigError, local.SubmitError) as e:
        print(f"airut: {e}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _sandbox_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", help="trusted configuration from this repository's default "
                   "branch (image, allowlist, secrets, limits)")
    p.add_argument("--dir", help="the workspace (default: the current directory; with "
                   "--repo, a fresh clone of its default branch); without --repo also the "
                   "trusted configuration, from its .airut/")


def _reply_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, help="give up waiting after this many seconds")
    p.add_argument("--json", action="store_true", help="print the reply record as JSON")


def cmd_submit(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    task = local.submit(cfg, local.read_text(args.text), repo=args.repo,
                        conversation_id=args.conversation, model=args.model)
    if args.no_wait:
        print(task.task_id)
        return 0
    print(f"submitted task {task.task_id}; waiting for the reply...", file=sys.stderr)
    return _wait(cfg, task.task_id, args)


def cmd_wait(args: argparse.Namespace) -> int:
    return _wait(config_mod.load(args.config), args.task, args)


def _wait(cfg: config_mod.Config, task_id: str, args: argparse.Namespace) -> int:
    reply = local.wait_for_reply(cfg, task_id, timeout=args.timeout)
    if reply is None:
        print(f"airut: no reply for task {task_id} within {args.timeout} s; "
              f"`airut wait {task_id}` keeps waiting", file=sys.stderr)
        return EXIT_TIMEOUT
    _print_reply(reply, args.json)
    return 0 if reply.outcome == "success" else EXIT_FAILED


def _print_reply(reply: ReplyRecord, as_json: bool) -> None:
    if as_json:
        print(json.dumps(reply.to_dict(), indent=1))
        return
    print(printable(reply.text))
    if reply.attachments:
        print(f"\nfiles: {printable(', '.join(reply.attachments))} (in {reply.attachments_dir})")
    if reply.merged_task_ids:
        print(f"\n(answers merged messages: {', '.join(reply.merged_task_ids)})",
              file=sys.stderr)
    print(f"\n[{reply.outcome}] conversation {reply.conversation_id} · task {reply.task_id}"
          f" · unit {reply.unit or '-'}\ncontinue with: airut submit --conversation "
          f"{reply.conversation_id} \"...\"", file=sys.stderr)


def cmd_stop(args: argparse.Namespace) -> int:
    local.request_stop(config_mod.load(args.config), args.task)
    print(f"stop requested for task {args.task}", file=sys.stderr)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    print(f"{cfg.source}: ok")
    print(f"  spool {cfg.paths.spool}, state {cfg.paths.state}, "
          f"max_concurrent {cfg.execution.max_concurrent}")
    for repo_id, repo in sorted(cfg.repos.items()):
        limits = repo.resource_limits
        print(f"  repository {repo_id}: {repo.repo_url} (model {repo.model}; "
              f"memory {limits.memory >> 20} MiB, cpus {limits.cpus:g}, "
              f"pids {limits.pids_limit}, timeout {limits.timeout} s)")
    if not cfg.repos:
        print("  no repositories configured: tasks cannot run yet")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from airut_cli import check

    failed = 0
    for line in check.run(args.config, offline=args.offline):
        print(printable(str(line)), flush=True)  # servers' error texts among them
        failed += line.ok is False
    print(f"\n{failed} check(s) failed" if failed else "\nall checks passed")
    return EXIT_FAILED if failed else 0


def cmd_reload(args: argparse.Namespace) -> int:
    from airut_cli import operate

    # Every secret too: a configuration the daemons would refuse is not applied.
    cfg = config_mod.load(args.config, config_mod.every_secret)
    for line in operate.reload(cfg):
        print(line)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from airut_cli import operate

    return _show(operate.status(config_mod.load(args.config)), args.json, operate.print_status)


def cmd_tasks(args: argparse.Namespace) -> int:
    from airut_cli import operate

    try:
        since = operate.parse_since(args.since) if args.since else None
    except ValueError as e:
        print(f"airut: {e}", file=sys.stderr)
        return EXIT_USAGE
    found = operate.tasks(config_mod.load(args.config), args.repo, since)
    return _show(found, args.json, operate.print_tasks)


def _show(value: object, as_json: bool, table) -> int:
    """A listing command's output: JSON for scripts, or a table that fits a terminal."""
    from airut_cli import operate

    if as_json:
        print(operate.as_json(value))
    else:
        table(value)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from airut_cli import operate

    try:
        command = operate.logs_command(config_mod.load(args.config), args.task, args.follow)
    except ValueError as e:
        print(f"airut: {e}", file=sys.stderr)
        return EXIT_USAGE
    os.execvp(command[0], command)
    return EXIT_FAILED  # not reached


def cmd_setup(args: argparse.Namespace) -> int:
    from airut_cli import operate

    try:
        operate.setup_claude(config_mod.load(args.config), args.npm_args)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        print(f"airut: {e}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def cmd_email(args: argparse.Namespace) -> int:
    from airut_core.guard import Permanent
    from airut_ingest.conversations import Conversations, home
    from airut_ingest.email import intake
    from airut_ingest.email.examiner import Examiner, ExaminerFailed, ExaminerUnavailable

    cfg = config_mod.load(args.config)
    repo = cfg.repo(args.repo)
    if repo.email is None:
        raise ConfigError(f"{cfg.source}: repos.{args.repo} has no email block")
    raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    known = Conversations(cfg.paths.state, args.repo,
                          home(cfg.paths.state, "email", args.repo) / "reserved").known
    examiner = Examiner(intake.Rules.of(repo.email))  # the daemon's own way of reading
    try:
        examiner.start()
        verdict = intake.decide(examiner.read(raw), known)
    except Permanent as e:
        print(json.dumps({"accepted": False, "reason": "quarantined"}, indent=1))
        print(f"the daemon would quarantine this message: {e}", file=sys.stderr)
        return 0
    except ExaminerFailed as e:
        print(json.dumps({"accepted": False, "reason": "failed"}, indent=1))
        print(f"{e}: the daemon would retry it, then quarantine it", file=sys.stderr)
        return 0
    except ExaminerUnavailable as e:
        print(f"airut: {e}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        examiner.close()
    print(json.dumps(verdict.summary(), indent=1))
    if verdict.detail or verdict.notes:
        print("; ".join(filter(None, [verdict.detail, *verdict.notes])), file=sys.stderr)
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from airut_cli import schedule
    from airut_core import log

    cfg = config_mod.load(args.config)
    if args.schedule_command == "fire":
        log.setup("airut-schedule")
        print(schedule.fire(cfg, args.schedule))
        return 0
    for timer in schedule.timers(cfg):
        print(f"{timer.instance}: " + "; ".join(timer.calendar)
              + (" (missed runs caught up)" if timer.persistent else ""))
    disabled = [f"{r}--{n}" for r, repo in sorted(cfg.repos.items())
                for n, s in sorted(repo.schedules.items()) if not s.enable]
    for name in disabled:
        print(f"{name}: disabled")
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from airut_cli import sandbox

    return sandbox.main(config_mod.load(args.config), args)


COMMANDS = {"submit": cmd_submit, "wait": cmd_wait, "stop": cmd_stop,
            "check-config": cmd_check_config, "email": cmd_email, "check": cmd_check,
            "reload": cmd_reload, "status": cmd_status, "tasks": cmd_tasks, "logs": cmd_logs,
            "setup": cmd_setup, "schedule": cmd_schedule, "sandbox": cmd_sandbox}
