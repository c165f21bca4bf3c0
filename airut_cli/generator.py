"""airut-generator: the channel units the configuration defines (systemd.generator(7)).

systemd runs it at boot and on every `systemctl daemon-reload` (which `airut reload`
does). For each repository with an `email:` or a `slack:` block it writes, into the
generator directory (KIND is email or slack):
  airut.target.wants/airut-KIND@<repo>.service   the instance, started with airut.target
  airut-KIND@<repo>.service.d/50-credentials.conf  LoadCredential= (or ...Encrypted=) for
      exactly the secrets that block names, so the mail password or the Slack tokens
      reach that unit only

and for each enabled schedule (repos.<id>.schedules.<name>):
  airut-schedule@<repo>--<name>.timer   its OnCalendar= lines (cron translated), linked
      from airut.target.wants; it starts airut-schedule@<repo>--<name>.service

and for the proxy's workers (proxy.workers, 0: one per core):
  airut.target.wants/airut-proxy@<n>.service   workers 1 and up (airut.target wants 0)
  airut-firewall.service.d/50-workers.conf      AIRUT_PROXY_WORKERS: the firewall's map

A generator, not a command that enables units: the instances follow the file itself,
with nothing left behind in /etc when a repository goes and no step to forget after an
edit; and systemd reads it before it starts anything. A configuration that does not
load makes no instances: the error goes to the journal, and `airut check` names it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from airut_core import config as config_mod
from airut_core import sandbox, secrets

UNIT_DIRS = ("/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")
# Each channel: the template and which secrets of a repository its instance gets.
CHANNELS = {"email": config_mod.email_secrets, "slack": config_mod.slack_secrets}


def channels(cfg: config_mod.Config) -> list[tuple[str, str]]:
    """(kind, repository) of every channel instance the configuration asks for."""
    return [(kind, repo_id) for repo_id, repo in sorted(cfg.repos.items())
            for kind in CHANNELS if getattr(repo, kind) is not None]


def generate(cfg: config_mod.Config, out: Path, unit_dir: Path,
             credentials_dir: Path = secrets.CREDENTIALS_DIR) -> list[str]:
    """Write the units' links and drop-ins into out; returns the instances made."""
    made = []
    for kind, repo_id in channels(cfg):
        unit = f"airut-{kind}@{repo_id}.service"
        wants = out / "airut.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        (wants / unit).symlink_to(unit_dir / f"airut-{kind}@.service")
        lines = []
        for name in config_mod.secret_names(cfg, CHANNELS[kind](repo_id)):
            found = secrets.source(name, credentials_dir)
            if found:  # a missing one is the daemon's clear error at start, not systemd's
                lines.append(f"{found[0]}={name}:{found[1]}")
        if lines:
            dropin = out / f"{unit}.d"
            dropin.mkdir(parents=True, exist_ok=True)
            (dropin / "50-credentials.conf").write_text(
                f"# Written by airut-generator from the repository's {kind} block.\n"
                "[Service]\n" + "".join(f"{line}\n" for line in lines))
        made.append(unit)
    made += generate_timers(cfg, out)
    made += generate_proxy(cfg, out, unit_dir)
    return made


def generate_proxy(cfg: config_mod.Config, out: Path, unit_dir: Path) -> list[str]:
    """The proxy's workers beyond the first, and their number for the firewall."""
    count = cfg.proxy_workers()
    wants = out / "airut.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    made = []
    for worker in range(1, count):
        unit = sandbox.worker_unit(worker)
        (wants / unit).symlink_to(unit_dir / "airut-proxy@.service")
        made.append(unit)
    dropin = out / "airut-firewall.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "50-workers.conf").write_text(
        "# Written by airut-generator from proxy.workers.\n"
        f"[Service]\nEnvironment=AIRUT_PROXY_WORKERS={count}\n")
    return made


def generate_timers(cfg: config_mod.Config, out: Path) -> list[str]:
    """One timer per enabled schedule, started with airut.target; a schedule whose
    calendar systemd refuses is left out, said on stderr (the journal at boot)."""
    from airut_cli import schedule  # only here: the generator's common path stays small

    made = []
    for repo_id, name, sched in schedule.enabled(cfg):
        try:
            timer = schedule.timer_of(repo_id, name, sched)
        except ValueError as e:
            print(f"airut-generator: schedule {name} of {repo_id}: {e}", file=sys.stderr)
            continue
        unit = f"airut-schedule@{timer.instance}.timer"
        out.mkdir(parents=True, exist_ok=True)
        (out / unit).write_text(
            f"# Written by airut-generator from repos.{repo_id}.schedules.{name}.\n"
            "[Unit]\n"
            f"Description=airut schedule {name} of repository {repo_id}\n"
            "Documentation=file:///usr/share/doc/airut/schedules.md\n"
            "PartOf=airut.target\n\n"
            "[Timer]\n"
            + "".join(f"OnCalendar={line}\n" for line in timer.calendar)
            + f"Persistent={'yes' if timer.persistent else 'no'}\n"
            "AccuracySec=1s\n")
        wants = out / "airut.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        (wants / unit).symlink_to(out / unit)
        made.append(unit)
    return made


def find_unit_dir() -> Path:
    """Where the package put the templates (/lib is /usr/lib on merged-/usr systems)."""
    for directory in UNIT_DIRS:
        if (Path(directory) / "airut-email@.service").exists():
            return Path(directory)
    return Path(UNIT_DIRS[1])


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        sys.exit("usage: airut-generator NORMAL_DIR [EARLY_DIR LATE_DIR]")
    path = config_mod.config_path()
    if not path.exists():
        return  # not configured yet: no channels
    try:
        cfg = config_mod.load(path)
    except config_mod.ConfigError as e:
        # Seen in the journal at boot or reload; the generator must not fail the boot.
        print(f"airut-generator: no channel units: {e}", file=sys.stderr)
        return
    generate(cfg, Path(args[0]), find_unit_dir())


if __name__ == "__main__":
    main()
