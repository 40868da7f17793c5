"""The environment contract: where a coredump's debugger runs, what it reads there, and how a person reopens it.

``RetraceEnvironment`` names one of three (``ENVIRONMENTS`` in
``retrace_server.environments``): ``sysroot`` links the crash's packages into a
per-task tree for the host's gdb; ``chroot`` makes that tree the root of
the release's own gdb; ``mock`` lets mock install the packages and run gdb
in its chroot.  The job chooses the environment once and from then on
only asks it, never its name: prepare the tree, say where gdb will find
the program, the core and the libraries, run a debugger's argv (which the
caller builds, ``retrace_server.analysis.gdb``), describe the session a
person can reopen, clean up.
"""

from __future__ import annotations

import abc
import dataclasses
import re
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import logging
    from collections.abc import Sequence
    from pathlib import Path

    from retrace_server.config import Config
    from retrace_server.elf import Module
    from retrace_server.environments.sandbox import Sandboxed
    from retrace_server.environments.session import Session
    from retrace_server.packaging.cache import CachedPackage
    from retrace_server.packaging.release import ReleaseId
    from retrace_server.packaging.repoindex import RepoIndex


@dataclasses.dataclass
class Workload:
    """What a coredump's debugger needs, as the job found it."""

    executable: str  # the crashed program as the core maps it (/usr/bin/crasher)
    core: Path  # the core on this host
    debugger: str  # the host's gdb that reads the core's architecture (the sysroot environment's)
    release: ReleaseId
    index: RepoIndex | None  # the release's package index (None: served through debuginfod alone)
    packages: list[str] = dataclasses.field(default_factory=list)  # name-version-release.arch of each
    trees: list[CachedPackage] = dataclasses.field(default_factory=list)  # unpacked packages, when it unpacks
    placements: list[tuple[str, Path]] = dataclasses.field(default_factory=list)  # (path in the tree, file)
    modules: Sequence[Module] = ()  # what the core maps (the program interpreter is found among them)
    extra_read_only: list[Path] = dataclasses.field(default_factory=list)  # caches the placements point into
    # No source had the crashed program: gdb reads the core and the libraries alone (a partial backtrace).
    executable_missing: bool = False
    # The task keeps its tree for a person's session (debug and interactive tasks): it is the task's own.
    keeps_tree: bool = False
    # gdb's settings before anything is loaded (where the debug files' prebuilt indexes are).
    gdb_settings: list[str] = dataclasses.field(default_factory=list)

    @property
    def program(self) -> str | None:
        """The program gdb is given, None when it is missing."""
        return None if self.executable_missing else self.executable


@dataclasses.dataclass(frozen=True)
class View:
    """Where the debugger finds things, as it sees them from inside the environment."""

    sysroot: str  # "/" when the debugger runs in the crashed release's own root
    core: str
    gdb: str  # the program: the host's gdb for the architecture, or the root's own


@dataclasses.dataclass(frozen=True)
class Limits:
    timeout: float  # seconds (GdbTimeout)
    memory_bytes: int  # address space (GdbMemoryLimit)
    output_bytes: int  # what it may print (DebuggerOutputLimit)


class Environment(abc.ABC):
    """One task's debugger environment; ``task_path`` is the task's directory, where a tree may be built."""

    name: ClassVar[str]
    # Only the release's own gdb runs, so only cores of this host's architecture can be read.
    native_only: ClassVar[bool] = False
    # It installs from the release's full RPM mirror on this host (dnf, mock).
    needs_full_rpm_mirror: ClassVar[bool] = False
    # The job unpacks the crash's packages into the shared cache for it (mock installs them itself).
    unpacks: ClassVar[bool] = True

    def __init__(self, config: Config, task_path: Path, task_id: str, log: logging.Logger) -> None:
        self.config, self.task_path, self.task_id, self.log = config, task_path, task_id, log

    @abc.abstractmethod
    def prepare(self, work: Workload) -> int:
        """Build what the debugger reads; how many files were linked into its tree."""

    @abc.abstractmethod
    def view(self, work: Workload) -> View:
        """Where gdb finds the core, the program and its libraries."""

    @abc.abstractmethod
    def run(self, argv: Sequence[str], work: Workload, limits: Limits) -> Sandboxed:
        """Run the debugger's ``argv`` (made for ``view``) in the environment; SandboxTimeout or
        SandboxOutputLimit past its limits."""

    def session(self, work: Workload, argv: Sequence[str]) -> Session | None:
        """What ``retrace-server-interact TASK gdb`` runs later, or None when it cannot reopen this one."""
        return None

    def hide(self, text: str) -> str:
        """The debugger's output without this environment's server paths."""
        return text

    def clean(self, keep: bool) -> None:  # noqa: B027 - an environment that builds nothing has nothing to remove
        """Remove what ``prepare`` built, unless the task keeps it (``keep``: debug and interactive tasks)."""


def hide_cache_paths(text: str, cache_dir: Path) -> str:
    """Files in the shared caches read as what they are: a debuginfod file by its build-id, a package's file
    or a gdb root's file at its path on the crashed machine."""
    cache = re.escape(str(cache_dir))
    text = re.sub(cache + r"/buildid/\w+/(\w+)/(executable|debuginfo)", r"debuginfod:\1/\2", text)
    return re.sub(cache + r"/(rpms/[0-9A-Za-z]+|roots/[^/\s]+|sysroots/[0-9a-f]+)/root", "", text)
