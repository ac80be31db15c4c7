"""Five-field cron schedules (minute hour day-of-month month day-of-week), in UTC.

The subset every cron reads: `*`, numbers, ranges `a-b`, steps `*/n` and `a-b/n`, and
lists of those; day-of-week 0-7 with 0 and 7 both Sunday. As in cron, when both
day-of-month and day-of-week are restricted a day matching either fires.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day-of-month", 1, 31), ("month", 1, 12),
           ("day-of-week", 0, 7))  # fmt: skip
# How far ahead a schedule is searched: a valid one that never fires (31 February) is
# refused when parsed.
_HORIZON_DAYS = 366 * 4


@dataclass(frozen=True)
class Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Monday .. 6 = Sunday, as datetime.weekday()
    any_day: bool  # day-of-month is *
    any_weekday: bool  # day-of-week is *

    def day_matches(self, at: datetime) -> bool:
        if at.month not in self.months:
            return False
        by_day, by_weekday = at.day in self.days, at.weekday() in self.weekdays
        if self.any_day or self.any_weekday:
            return by_day and by_weekday
        return by_day or by_weekday

    def next_after(self, after: datetime) -> datetime:
        """The first minute strictly after `after` that the schedule fires at."""
        start = after.replace(second=0, microsecond=0)
        day = start.replace(hour=0, minute=0)
        for offset in range(_HORIZON_DAYS):
            date = day + timedelta(days=offset)
            if not self.day_matches(date):
                continue
            for hour in sorted(self.hours):
                for minute in sorted(self.minutes):
                    at = date.replace(hour=hour, minute=minute)
                    if at > after:
                        return at
        raise ValueError("the schedule never fires")


def _part(text: str, name: str, low: int, high: int) -> set[int]:
    step = 1
    if "/" in text:
        text, raw_step = text.split("/", 1)
        if not raw_step.isdigit() or int(raw_step) < 1:
            raise ValueError(f"{name}: step {raw_step!r} is not a positive number")
        step = int(raw_step)
    if text == "*":
        first, last = low, high
    elif "-" in text:
        a, b = text.split("-", 1)
        if not (a.isdigit() and b.isdigit()):
            raise ValueError(f"{name}: {text!r} is not a range of numbers")
        first, last = int(a), int(b)
    elif text.isdigit():
        first = int(text)
        last = high if step > 1 else first
    else:
        raise ValueError(f"{name}: {text!r} is not a number, range or *")
    if not low <= first <= last <= high:
        raise ValueError(f"{name}: {text!r} is outside {low}-{high}")
    return set(range(first, last + 1, step))


def parse(expression: str) -> Cron:
    """A schedule from its text; ValueError naming the field that is wrong."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError("a schedule has five fields: minute hour day-of-month month day-of-week")
    values = []
    for text, (name, low, high) in zip(fields, _FIELDS, strict=True):
        found: set[int] = set()
        for item in text.split(","):
            found |= _part(item, name, low, high)
        values.append(found)
    minutes, hours, days, months, weekdays = values
    cron = Cron(
        minutes=frozenset(minutes),
        hours=frozenset(hours),
        days=frozenset(days),
        months=frozenset(months),
        # cron counts Sunday as 0 (and 7), datetime as 6
        weekdays=frozenset((d - 1) % 7 for d in weekdays),
        # as Vixie cron: a field that begins with * counts as unrestricted
        any_day=fields[2].startswith("*"),
        any_weekday=fields[4].startswith("*"),
    )
    cron.next_after(datetime(2000, 1, 1))  # refuses a schedule that never fires
    return cron
