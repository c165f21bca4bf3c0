"""Schedules: when a repository's scheduled task fires, as systemd calendar events.

A schedule says when in one of two ways: `on_calendar`, systemd's own syntax (checked
by `systemd-analyze calendar`), or `cron`, five fields, translated here into one or
two OnCalendar= lines of the same meaning. croniter reads the cron expression (ranges,
steps, lists, names, @daily and the like); the translation writes each field's
expanded values, so nothing is approximated. Cron's one rule that a single calendar
line cannot say (with both day-of-month and day-of-week restricted, either matching
fires) becomes two lines, which a timer fires on the union of. What no calendar line
can say (L, W, #: the last day, the nearest weekday, the n-th weekday) is an error,
not a guess. The timezone goes into each line: systemd computes the times, DST
included.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import zoneinfo

DAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")
ALIASES = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
           "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
           "@hourly": "0 * * * *"}
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")


class ScheduleError(ValueError):
    pass


def check_timezone(name: str) -> str:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as e:
        raise ScheduleError(f"unknown timezone {name!r} (an IANA name such as "
                            "Europe/Helsinki)") from e
    return name


def from_cron(expression: str, timezone: str | None = None) -> list[str]:
    """OnCalendar= lines that fire exactly when the cron expression does."""
    from croniter import croniter  # 30 ms: only for configurations that use cron

    text = ALIASES.get(expression.strip().lower(), expression.strip())
    fields = text.split()
    if len(fields) != 5:
        raise ScheduleError(f"cron {expression!r}: five fields (minute hour day-of-month "
                            f"month day-of-week), got {len(fields)}")
    special = re.search(r"[lw?]", fields[2].lower()) or re.search(r"[#l?]", fields[4].lower())
    if special:
        raise ScheduleError(f"cron {expression!r}: {special.group()!r} (the last day, the "
                            "nearest or the n-th weekday) has no systemd calendar "
                            "equivalent; write on_calendar instead")
    if not croniter.is_valid(text):
        raise ScheduleError(f"cron {expression!r} is not a valid cron expression")
    minutes, hours, doms, months, dows = croniter(text).expanded
    for value in (*minutes, *hours, *doms, *months, *dows):
        if value != "*" and not isinstance(value, int):
            raise ScheduleError(f"cron {expression!r}: {value!r} has no systemd calendar "
                                "equivalent; write on_calendar instead")
    tz = f" {check_timezone(timezone)}" if timezone else ""
    time = f"{_list(hours, 2)}:{_list(minutes, 2)}:00"
    date = f"*-{_list(months, 2)}-{{}}"
    day_names = "" if dows == ["*"] else ",".join(DAYS[d % 7] for d in sorted(
        {d % 7 for d in dows}, key=lambda d: (d - 1) % 7)) + " "
    if doms != ["*"] and dows != ["*"]:  # cron: either one matching fires
        return [f"{date.format(_list(doms, 2))} {time}{tz}",
                f"{day_names}{date.format('*')} {time}{tz}"]
    return [f"{day_names}{date.format(_list(doms, 2))} {time}{tz}"]


def _list(values: list, width: int) -> str:
    if values == ["*"]:
        return "*"
    return ",".join(f"{v:0{width}d}" for v in sorted(values))


def check_calendar(expression: str, timezone: str | None = None) -> str:
    """An on_calendar value, normalized by systemd (the same parser the timer uses)."""
    line = f"{expression} {check_timezone(timezone)}" if timezone else expression
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return line  # checked where the timer is made; systemd refuses it there too
    out = subprocess.run([analyze, "calendar", line], capture_output=True, text=True,
                         timeout=10)
    if out.returncode != 0:
        why = (out.stderr.strip().splitlines() or ["not a calendar event"])[-1]
        raise ScheduleError(f"on_calendar {expression!r}: {why}")
    found = re.search(r"Normalized form: (.+)", out.stdout)
    return found.group(1).strip() if found else line
