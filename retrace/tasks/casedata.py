"""What support engineers keep on a task: case and bugzilla numbers, e-mail addresses, notes, retention.

The files keep upstream's names in the task directory (``caseno``,
``bugzillano``, ``notify``, ``notes``, ``managed``, ``url``), so a spool
carried over from upstream shows its case data.  Every value is checked
when it is set, with a sentence for the engineer who typed it, and read
back defensively: a hand-edited file never breaks a page.
"""
from __future__ import annotations

import dataclasses
import re
import time
from typing import TYPE_CHECKING, Callable

from retrace_server.errors import BadRequest
from retrace_server.files import write_atomically
from retrace_server.tasks.task import Task, mark_changed

if TYPE_CHECKING:
    from retrace_server.config import Config
    from retrace_server.tasks.task import IncomingTask

CASENO, BUGZILLANO, NOTIFY, NOTES = "caseno", "bugzillano", "notify", "notes"
# The task was started from the manager (upstream's marker), and the manager URL its e-mails link to.
MANAGED, URL = "managed", "url"
# Epoch seconds before which cleanup keeps the task whatever its age (an open case).
KEEP_UNTIL = "keep_until"

MAX_NOTES = 64 * 1024
MAX_ADDRESSES = 20
MAX_BUGS = 50
MAX_KEEP_DAYS = 365
_NUMBER = re.compile(r"[0-9]{1,12}", re.ASCII)
# Deliberately plain: an address goes into an SMTP envelope, so no quoting, comments or white space.
_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})*", re.ASCII)
_SEPARATORS = re.compile(r"[\s,;]+")


def parse_caseno(text: str) -> int:
    text = (text or "").strip()
    if not text:
        raise BadRequest("The case number is empty; give the support case's number (digits only)")
    if not _NUMBER.fullmatch(text):
        raise BadRequest(f"'{text[:40]}' is not a case number: use digits only (at most 12)")
    return int(text)


def _items(text: str) -> list[str]:
    return [item for item in _SEPARATORS.split(text or "") if item]


def _listed(text: str, what: str, whats: str, most: int, fits: Callable[[str], object], wrong: str) -> list[str]:
    """The distinct items of a comma, semicolon or space separated list, each checked by ``fits``."""
    items = _items(text)
    if not items:
        raise BadRequest(f"The {what} is empty; give one or more separated by commas")
    if len(items) > most:
        raise BadRequest(f"At most {most} {whats} can be kept on a task")
    for item in items:
        if not fits(item):
            raise BadRequest(f"'{item[:80]}' is not {wrong}")
    return list(dict.fromkeys(items))


def parse_bugzillano(text: str) -> list[int]:
    """Bug numbers separated by commas, semicolons or spaces (upstream's form)."""
    return [int(bug) for bug in _listed(text, "bugzilla number", "bugzilla numbers", MAX_BUGS, _NUMBER.fullmatch,
                                        "a bugzilla number: use digits only")]


def parse_emails(text: str) -> list[str]:
    return _listed(text, "e-mail address", "e-mail addresses", MAX_ADDRESSES,
                   lambda address: len(address) <= 254 and _ADDRESS.fullmatch(address),
                   "an e-mail address this server sends to (name@domain)")


def parse_notes(text: str) -> str:
    text = (text or "").replace("\r\n", "\n")
    if len(text.encode("utf-8")) > MAX_NOTES:
        raise BadRequest(f"The notes are too long: at most {MAX_NOTES // 1024} KiB")
    return text


def parse_keep_days(text: str) -> int:
    text = (text or "").strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_KEEP_DAYS:
        raise BadRequest(f"Keep the task for 1 to {MAX_KEEP_DAYS} days, not '{text[:20]}'")
    return int(text)


@dataclasses.dataclass
class CaseData:
    """A task's case data as read from its directory (absent values are None or empty)."""

    caseno: int | None = None
    bugzillano: list[int] = dataclasses.field(default_factory=list)
    notify: list[str] = dataclasses.field(default_factory=list)
    notes: str = ""
    managed: bool = False
    url: str | None = None
    keep_until: float | None = None

    @classmethod
    def read(cls, task: Task) -> CaseData:
        def numbers(text: str) -> list[int]:
            return [int(item) for item in _items(text) if _NUMBER.fullmatch(item)]

        caseno = numbers(task.read_text(CASENO, 64) or "")
        keep = (task.read_text(KEEP_UNTIL, 64) or "").strip()
        return cls(
            caseno=caseno[0] if caseno else None,
            bugzillano=numbers(task.read_text(BUGZILLANO, 4096) or ""),
            notify=[item for item in _items(task.read_text(NOTIFY, 8192) or "") if _ADDRESS.fullmatch(item)],
            notes=task.read_text(NOTES, MAX_NOTES) or "",
            managed=(task.path / MANAGED).is_file(),
            url=(task.read_text(URL, 2048) or "").strip() or None,
            keep_until=float(keep) if keep.replace(".", "", 1).isdigit() else None,
        )


def set_caseno(task: Task | IncomingTask, caseno: int) -> None:
    write_atomically(task.path / CASENO, f"{caseno}\n")
    if isinstance(task, Task):  # an upload's case number is in its row once it is a task
        mark_changed(task.path.parent, task.task_id)


def set_bugzillano(task: Task | IncomingTask, bugs: list[int]) -> None:
    write_atomically(task.path / BUGZILLANO, "".join(f"{bug}\n" for bug in bugs))


def set_notify(task: Task | IncomingTask, addresses: list[str]) -> None:
    write_atomically(task.path / NOTIFY, "".join(f"{address}\n" for address in addresses))


def set_notes(task: Task | IncomingTask, notes: str) -> None:
    write_atomically(task.path / NOTES, notes)


def mark_managed(task: Task, url: str) -> None:
    write_atomically(task.path / MANAGED, "1\n")
    write_atomically(task.path / URL, f"{url}\n")
    mark_changed(task.path.parent, task.task_id)


def keep_for(task: Task, days: int, now: float | None = None) -> int:
    """Keep the task at least ``days`` from now; an existing longer promise stands."""
    until = max(int((now or time.time()) + days * 86400), int(CaseData.read(task).keep_until or 0))
    write_atomically(task.path / KEEP_UNTIL, f"{until}\n")
    return until


@dataclasses.dataclass(frozen=True)
class AgeRule:
    """One way cleanup removes a task by its age: ``action`` (archive or delete) after ``hours`` since its
    last change, under ``key`` (how the config names it)."""

    action: str
    hours: int
    key: str
    failed_only: bool = False

    @property
    def cited(self) -> str:
        """The key as cleanup's log cites it (an archive rule with its value)."""
        return f"{self.key} = {self.hours}" if self.action == "archive" else self.key


def age_rules(config: Config, status_failed: bool) -> list[AgeRule]:
    """The rules that remove a task of this outcome, in the order cleanup applies them: the page says when
    the first one comes, cleanup acts on the first one due."""
    delete_after = config.DeleteFailedTaskAfter if status_failed else config.DeleteTaskAfter
    rules = []
    if config.ArchiveTaskAfter > 0 and (delete_after <= 0 or config.ArchiveTaskAfter <= delete_after):
        rules.append(AgeRule("archive", config.ArchiveTaskAfter, "ArchiveTaskAfter"))
    if status_failed and config.DeleteFailedTaskAfter > 0:
        rules.append(AgeRule("delete", config.DeleteFailedTaskAfter, "DeleteFailedTaskAfter", failed_only=True))
    if config.DeleteTaskAfter > 0:
        rules.append(AgeRule("delete", config.DeleteTaskAfter, "DeleteTaskAfter"))
    return rules


def expiry(task: Task, config: Config, status_failed: bool) -> tuple[float | None, str]:
    """``(epoch, why)``: when cleanup removes the task, or ``(None, why)`` when it never does by age."""
    rules = age_rules(config, status_failed)
    if not rules:
        return None, "tasks are not deleted by age on this server"
    first = min(rules, key=lambda rule: rule.hours)
    by_age = task.path.stat().st_mtime + first.hours * 3600
    keep = CaseData.read(task).keep_until
    if keep and keep > by_age:
        return keep, "kept for its case"
    removed = "archived to DropDir and deleted " if first.action == "archive" else ""
    return by_age, f"{removed}{first.hours} h after its last change ({first.key})"


def kept(task: Task, now: float) -> bool:
    """Whether an engineer asked to keep the task past ``now``."""
    keep = CaseData.read(task).keep_until
    return keep is not None and keep > now
