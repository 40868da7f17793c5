"""What a person's debugger session on a task needs: written by the job that retraced it, read by
``retrace-server-interact``.

The job knows exactly how it ran the debugger (which gdb for the core's
architecture, the sysroot, the vmlinux in the kernel cache, the paths the
sandbox shows), so it writes that down as ``session.json`` in the task
directory instead of the interact command guessing it again.  ``needs``
lists what must still exist for a session: the core, the tree, the vmlinux;
the first one missing says why the session cannot start.
"""

import dataclasses
import json

from retrace_server.tasks.task import write_atomically

SESSION_FILE = "session.json"


@dataclasses.dataclass(frozen=True)
class Session:
    debugger: str  # "gdb" or "crash"
    argv: tuple  # the debugger's argv, run in the sandbox
    read_only: tuple  # what the sandbox shows besides the host's /usr
    needs: tuple  # ``(path, what it is)`` that must still exist
    root: str | None = None  # the chroot environment's tree, mounted as /

    def save(self, task):
        write_atomically(task.path / SESSION_FILE, json.dumps(dataclasses.asdict(self), indent=1))

    @classmethod
    def load(cls, task):
        """The task's Session, or None when its job never got as far as the debugger."""
        try:
            fields = json.loads((task.path / SESSION_FILE).read_text())
            return cls(fields["debugger"], tuple(fields["argv"]), tuple(fields["read_only"]),
                       tuple(tuple(need) for need in fields["needs"]), fields.get("root"))
        except (OSError, ValueError, KeyError, TypeError):
            return None
