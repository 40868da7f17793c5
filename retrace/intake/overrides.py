"""What a support engineer forces on a task's next run: the kernel, the architecture, the release, the package.

Customer dumps are the hard ones: VMCOREINFO damaged or missing, an old
kernel whose release string names no architecture, a core from a release
the crash data misnames.  The engineer knows better and restarts the task
with ``retrace-server-worker TASK --restart --kernelver VER --arch ARCH``
(``--release NAME``, ``--package NVR`` for a coredump).  The values end up in package
names, crash's arguments and cache paths, so each is checked against its
grammar and against what this server serves when it is given, and refused
with a sentence otherwise.  They are kept in the task directory as
``overrides.json``, so a redelivered run uses them too; a restart that names
none clears them.
"""
from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING

from retrace_server.analysis.debuggers import NoDebugger, served_architectures
from retrace_server.analysis.vmcore import KERNEL_RELEASE
from retrace_server.arch import HOST_ARCH, canonical_arch
from retrace_server.files import write_atomically
from retrace_server.intake.crashdata import broken_rule
from retrace_server.packaging.release import ReleaseId, served_releases

if TYPE_CHECKING:
    from retrace_server.config import Config
    from retrace_server.tasks.task import IncomingTask, Task, TaskType

OVERRIDES_FILE = "overrides.json"
_UTS_RELEASE_BYTES = 64  # the kernel's utsname release field holds 64 characters and a NUL


class InvalidOverride(ValueError):
    """An override that does not fit the task or this server; the message is the sentence to show."""


# Which kind of task each override is for (vmcores?), and what the other kind is forced with.
_TASK_KIND = {
    "kernelver": (True, "a coredump's release is forced with --release"),
    "release": (False, "a vmcore's kernel is forced with --kernelver"),
    "package": (False, "a vmcore's kernel is forced with --kernelver"),
}


@dataclasses.dataclass(frozen=True)
class Overrides:
    kernelver: str | None = None
    arch: str | None = None
    release: str | None = None
    package: str | None = None

    def __bool__(self) -> bool:
        return any(dataclasses.astuple(self))

    def checked(self, task_type: TaskType, config: Config) -> Overrides:
        """These overrides with the architecture canonical (i686 -> i386); InvalidOverride for one that is not
        a kernel release string, an architecture or a release this server serves, or not for this type."""
        for name, (for_vmcores, instead) in _TASK_KIND.items():
            if getattr(self, name) and task_type.is_vmcore != for_vmcores:
                raise InvalidOverride(f"--{name} is for {'vmcore' if for_vmcores else 'coredump'} tasks; {instead}")
        if self.package is not None and (rule := broken_rule("package", self.package)):
            raise InvalidOverride(f"--package {self.package!r} is not {rule}")
        if self.kernelver is not None and (len(self.kernelver) > _UTS_RELEASE_BYTES
                                           or not KERNEL_RELEASE.fullmatch(self.kernelver)):
            raise InvalidOverride(f"--kernelver {self.kernelver!r} is not a kernel release string (what uname -r "
                                  "prints, like 6.1.0-26-amd64 or 5.14.0-427.el9.x86_64)")
        arch = canonical_arch(self.arch) if self.arch else None
        if arch is not None:
            served = [HOST_ARCH] if task_type.is_vmcore else _served_architectures(config)
            if arch not in served:
                kind = "vmcores" if task_type.is_vmcore else "coredumps"
                raise InvalidOverride(f"--arch {self.arch!r}: this server does not retrace {kind} of that "
                                      f"architecture; it serves {', '.join(served)}")
        if self.release is not None:
            release, releases = ReleaseId.parse(self.release), served_releases(config)
            if release is None:
                raise InvalidOverride(f"--release {self.release!r} is not a release name like fedora-41-x86_64")
            if release not in releases:
                raise InvalidOverride(f"--release {release} is not served here; this server serves "
                                      f"{', '.join(map(str, releases)) or 'no release'}")
        return dataclasses.replace(self, arch=arch)

    def save(self, task: Task | IncomingTask) -> None:
        """Keep these overrides for the task's runs; none removes what an earlier restart forced."""
        path = task.path / OVERRIDES_FILE
        if self:
            write_atomically(path, json.dumps(dataclasses.asdict(self)))
        else:
            path.unlink(missing_ok=True)

    @classmethod
    def load(cls, task: Task) -> Overrides:
        """The task's overrides (empty when none were given or the file is unreadable)."""
        try:
            fields = json.loads((task.path / OVERRIDES_FILE).read_text())
            return cls(**{field.name: fields.get(field.name) for field in dataclasses.fields(cls)})
        except (OSError, ValueError, TypeError, AttributeError):
            return cls()

    def describe(self) -> str:
        """``kernel 6.1.0-26-amd64, architecture x86_64``: for the task log."""
        named = (("kernel", self.kernelver), ("architecture", self.arch), ("release", self.release),
                 ("package", self.package))
        return ", ".join(f"{what} {value}" for what, value in named if value)


def _served_architectures(config: Config) -> list[str]:
    try:
        return served_architectures(config)
    except NoDebugger as err:
        raise InvalidOverride(f"RetraceArchitectures: {err}") from None
