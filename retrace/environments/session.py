"""What a person's debugger session on a task needs: written by the job that retraced it, read by
``retrace-server-interact``.

The job knows exactly how it ran the debugger (which gdb for the core's
architecture, the sysroot, the vmlinux in the kernel cache, the paths the
sandbox shows), so it writes that down as ``session.json`` in the task
directory instead of the interact command guessing it again.  ``needs``
lists what must still exist for a session: the core, the tree, the vmlinux;
the first one missing says why the session cannot start.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Protocol

from retrace_server.files import write_atomically

if TYPE_CHECKING:
    from pathlib import Path

SESSION_FILE = "session.json"


class HasPath(Protocol):
    """A task, as far as its session is concerned: a directory."""

    path: Path


@dataclasses.dataclass(frozen=True)
class Session:
    debugger: str  # "gdb" or "crash"
    argv: tuple[str, ...]  # the debugger's argv, run in the sandbox
    read_only: tuple[str, ...]  # what the sandbox shows besides the host's /usr
    needs: tuple[tuple[str, str], ...]  # ``(path, what it is)`` that must still exist
    root: str | None = None  # the chroot environment's tree, mounted as /

    def save(self, task: HasPath) -> None:
        write_atomically(task.path / SESSION_FILE, json.dumps(dataclasses.asdict(self), indent=1))

    @classmethod
    def load(cls, task: HasPath) -> Session | None:
        """The task's Session, or None when its job never got as far as the debugger."""
        try:
            fields = json.loads((task.path / SESSION_FILE).read_text())
            return cls(fields["debugger"], tuple(fields["argv"]), tuple(fields["read_only"]),
                       tuple(tuple(need) for need in fields["needs"]), fields.get("root"))
        except (OSError, ValueError, KeyError, TypeError):
            return None
