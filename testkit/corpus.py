"""A corpus of real Debian programs crashed as the kernel writes cores, for the retrace and the benchmark.

Each program is a real build from bookworm main whose debug symbols main
carries (classic ``-dbg`` packages with ``Build-Ids:``), run from its
unpacked .debs bound over the installed paths (``testkit.debian.
crash_debian_program``): the ones that wait for input are killed with
SIGSEGV while they wait, the others crash by themselves.  The host's own
libraries the core also maps (libstdc++, libreadline: stripped, no debug
package in main) join the release at the versions this host runs, so
their frames keep the names their symbol tables give.  Between them: C and
C++, one and two threads, a C stack hundreds of frames deep (Lua calling
itself through ``string.gsub``), programs stripped with only their
library's debuginfo, and the reverse.
"""

import dataclasses
import functools
import re
import subprocess
from pathlib import Path

from testkit.debian import (
    PYTHON,
    PYTHON_SCRIPT,
    crash_debian_program,
    crash_python,
    debian_debs,
    python_debs,
)
from testkit.debuginfod import DEB_CACHE, download_versions, installed_version

# Lua calling itself through string.gsub's C callback: every level adds C frames (str_gsub, luaD_call,
# luaV_execute...); at the bottom it waits for its input.
LUA_DEEP = ("local function f(n) if n == 0 then return io.read() end "
            "return (string.gsub('x', 'x', function() return f(n - 1) end)) end f(40)")


@dataclasses.dataclass(frozen=True)
class Program:
    """A corpus program: its binary packages (bound in when it runs), its debug packages, how it runs."""

    name: str
    executable: str
    binaries: tuple[str, ...]
    debug: tuple[str, ...]
    arguments: tuple[str, ...] = ()
    language: str = "C"
    threads: int = 1
    keep: tuple[str, ...] = ()  # packaged files besides the program and libraries it needs (configuration)

    @property
    def package(self):
        return self.binaries[0]


PROGRAMS = (
    Program("strings", "/usr/bin/x86_64-linux-gnu-strings", ("binutils-x86-64-linux-gnu", "libbinutils"),
            ("binutils-x86-64-linux-gnu-dbg", "libbinutils-dbg")),
    Program("python", PYTHON, ("python3.11-minimal",), ("python3.11-dbg",), threads=2),
    Program("lua", "/usr/bin/lua5.4", ("lua5.4", "liblua5.4-0"), ("liblua5.4-0-dbg",), ("-e", LUA_DEEP)),
    Program("tftp", "/usr/bin/tftp", ("tftp-hpa",), ("tftp-hpa-dbg",)),
    Program("gsl-histogram", "/usr/bin/gsl-histogram", ("gsl-bin", "libgsl27", "libgslcblas0"), ("libgsl-dbg",),
            ("0", "10", "5")),
    Program("booldnf", "/usr/bin/booldnf", ("boolstuff", "libboolstuff-0.1-0"), ("libboolstuff-0.1-0-dbg",),
            language="C++"),
    Program("enca", "/usr/bin/enca", ("enca", "libenca0", "librecode0"), ("libenca-dbg",), ("-L", "none")),
    Program("pcregrep", "/usr/bin/pcregrep", ("pcregrep", "libpcre3"), ("libpcre3-dbg",), ("never",)),
    Program("tftpd", "/usr/sbin/in.tftpd", ("tftpd-hpa",), ("tftp-hpa-dbg",),
            ("--listen", "--foreground", "--address", "127.0.0.1:21069", "/nonexistent")),
    # A daemon waiting for its first connection, configured by its package's own file.
    Program("vsftpd", "/usr/sbin/vsftpd", ("vsftpd", "libwrap0"), ("vsftpd-dbg",),
            ("/etc/vsftpd.conf", "-olisten=YES", "-olisten_ipv6=NO", "-olisten_address=127.0.0.1",
             "-olisten_port=21212"), keep=("/etc/vsftpd.conf",)),
)
CORPUS_CACHE = DEB_CACHE / "corpus"


@dataclasses.dataclass
class Crashed:
    """A corpus program's core with the packages a release needs for it."""

    program: Program
    core: Path
    package: str  # the crash data's name-version
    binaries: list[Path]
    debug: list[Path]
    host: list[Path]  # this host's packages of the other files the core maps (no debug package)

    @property
    def debs(self):
        return [*self.binaries, *self.debug, *self.host]


def program_debs(program):
    """``(binaries, debug)`` .debs of the program at the archive's versions (python: its own pair)."""
    if program.name == "python":
        pair = python_debs()
        return [pair["python3.11-minimal"]], [pair["python3.11-dbg"]]
    if program.name == "strings":
        debs = debian_debs()
        return [debs[name] for name in program.binaries], [debs[name] for name in program.debug]
    versions = archive_versions_now()
    wanted = [(name, versions[name]) for name in (*program.binaries, *program.debug)]
    debs = download_versions(CORPUS_CACHE, wanted)
    return debs[:len(program.binaries)], debs[len(program.binaries):]


@functools.cache
def archive_versions_now():
    """``{package: the version apt would install}`` of every corpus package, from one apt-cache run."""
    names = sorted({name for program in PROGRAMS for name in (*program.binaries, *program.debug)})
    shown = subprocess.run(["apt-cache", "show", "--no-all-versions", *names], capture_output=True, text=True,
                           check=True).stdout
    return dict(re.findall(r"^Package: (\S+)\n(?:.+\n)*?Version: (\S+)$", shown, re.M))


def crash(program, work_dir, python_script=PYTHON_SCRIPT):
    """Crash ``program`` once (python: running ``python_script``); the Crashed, with this host's packages of
    the libraries it also mapped."""
    binaries, debug = program_debs(program)
    if program.name == "python":
        core = crash_python(binaries, work_dir, python_script)
    else:
        core = crash_debian_program(binaries, work_dir, program.executable, *program.arguments, keep=program.keep)
    version = re.match(r"[^_]+_([^_]+)_", binaries[0].name)[1].replace("%3a", ":")
    return Crashed(program, core, f"{program.package}-{version}", binaries, debug,
                   host_packages(core, {deb.name.split("_")[0] for deb in (*binaries, *debug)}))


def host_packages(core, provided):
    """This host's .debs (its installed versions, from the archive) of the files ``core`` maps that no
    package in ``provided`` gives; a version the archive no longer serves is left out (its frames then
    have no names on either side)."""
    from retrace_server.client.crash import owning_packages
    from retrace_server.elf import read_core

    owners = owning_packages(sorted({module.path for module in read_core(core).modules}), with_arch=False)
    names = {re.match(r"(.+?)-\d", owner)[1] for owner in owners.values()} - provided
    wanted = [(name, name) for name in sorted(names)] + ([("libc6-dbg", "libc6")] if "libc6" in names else [])
    found = []
    for name, installed in wanted:
        try:
            version = installed_version(installed)
        except subprocess.CalledProcessError:
            continue  # not a package name (a name-version read at the wrong dash)
        gone = CORPUS_CACHE / "host" / f"not-in-the-archive-{name}_{version.replace(':', '%3a')}"
        if gone.exists():
            continue
        try:
            found += download_versions(CORPUS_CACHE / "host", [(name, version)])
        except subprocess.CalledProcessError:
            gone.touch()  # asked once: the archive no longer serves this host's version
    return found
