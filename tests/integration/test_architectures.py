"""Foreign cores (aarch64, s390x, ppc64le, i386, riscv64) retraced on this x86_64 host through the real server.

The cores are written by each architecture's own Debian kernel under qemu-system (testkit/foreign.py):
the crasher, cross-compiled and packaged with its -dbgsym, against the real libc6 and libc6-dbg of that
architecture from the Debian archive, in a ``debian-<version>-<arch>`` apt repository (bookworm; riscv64:
trixie).  The reference is gdb-multiarch with every package of the repository unpacked into one sysroot:
every thread's frames and file:line must be the same.
"""

import re

import pytest

from testkit.cores import make_problem_dir
from testkit.debian import apt_release, debian_problem_dir, local_gdb_output, thread_frames
from testkit.distro import publish_release
from testkit.foreign import as_rpms, foreign_crash
from testkit.helpers import outcome, submit, wait_final
from testkit.signing import TEST_KEY

FILES = ("coredump", "executable", "package", "os_info")
# The libc source file of a frame each mode must show: abort() and qsort() calling back into strcmp.
LIBC_SOURCES = {"abort": "abort.c:", "libc": "msort.c:"}
CASES = [("aarch64", "simple"), ("aarch64", "threads"), ("aarch64", "abort"), ("s390x", "simple"),
         ("s390x", "libc"), ("ppc64le", "threads"), ("i386", "libc"), ("riscv64", "threads")]
# This x86_64 host's own gdb reads i386 cores; the others need gdb-multiarch.
DEBUGGERS = {"i386": "gdb"}


@pytest.fixture(scope="module")
def foreign_server(start_server, work_dir):
    """``server(arch)``: a server whose one release is the crash's debian-<version>-<arch>, started once per
    architecture."""
    servers = {}

    def server(arch):
        if arch not in servers:
            crash = foreign_crash(arch)
            repository = apt_release(work_dir / f"apt-{arch}" / crash.release, crash.debs.values(), crash.arch.debian)
            servers[arch] = start_server(repository=repository, release_id=crash.release, lifetime="module")
        return servers[arch]

    return server


def retrace(server, problem, result="backtrace"):
    """``(status, log, the result)`` of a task (the result is "" unless it succeeded)."""
    task_id, auth = submit(server, problem, names=FILES)
    status = wait_final(server, task_id, auth, timeout=240)
    log = server.get(f"/{task_id}/log", headers=auth).text
    succeeded = status.headers["X-Task-Status"] == "FINISHED_SUCCESS"
    return status, log, server.get(f"/{task_id}/{result}", headers=auth).text if succeeded else ""


@pytest.mark.parametrize("arch, mode", CASES)
def test_a_kernel_written_foreign_core_gives_gdb_multiarchs_frames_for_every_thread(
        foreign_server, work_dir, tmp_path, arch, mode):
    crash = foreign_crash(arch, mode)
    problem = debian_problem_dir(tmp_path / "problem", crash.core, "/usr/bin/crasher", "crasher-1.0-1", arch,
                                 crash.os_info)
    status, log, backtrace = retrace(foreign_server(arch), problem)
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
    assert f"Release {crash.release}" in log
    assert re.search(rf"Coredump: {arch}, \d+ mapped files, signal {6 if mode == 'abort' else 11}\n", log), log
    assert f"Debugger for {arch} cores: {DEBUGGERS.get(arch, 'gdb-multiarch')}\n" in log
    expected = thread_frames(local_gdb_output(crash.debs.values(), crash.core, tmp_path / "sysroot",
                                              "/usr/bin/crasher", gdb="gdb-multiarch"))
    assert thread_frames(backtrace) == expected, backtrace[:3000]
    assert len(expected) == (3 if mode == "threads" else 1)
    frames = [frame for thread in expected.values() for frame in thread]
    assert all(where for function, where in frames if function in ("crash_in_library", "main")), frames
    if mode in LIBC_SOURCES:  # frames inside libc, with file:line from libc6-dbg
        assert any(where and LIBC_SOURCES[mode] in where for _, where in frames), frames


def test_a_foreign_fault_is_rated_by_signal_and_address_without_decoding_its_instruction(foreign_server, tmp_path):
    _, _, report = retrace(foreign_server("aarch64"), foreign_problem(tmp_path, "aarch64"), "exploitable")
    assert "Not rated: whether an aarch64 instruction reads, writes or jumps" in report, report
    assert report.endswith("Exploitable rating (0-8 scale): 2\n"), report


def foreign_problem(tmp_path, arch, core=None):
    crash = foreign_crash(arch)
    return debian_problem_dir(tmp_path / "problem", core or crash.core, "/usr/bin/crasher", "crasher-1.0-1", arch)


def test_a_server_without_a_debugger_for_the_architecture_says_so_before_any_package_is_unpacked(
        start_server, work_dir, tmp_path):
    crash = foreign_crash("aarch64")
    repository = apt_release(tmp_path / "apt" / "debian-12-aarch64", crash.debs.values(), "arm64")
    server = start_server(repository=repository, release_id="debian-12-aarch64",
                          extra_ini="[debuggers]\naarch64 = gdb\n")
    status, log, _ = retrace(server, foreign_problem(tmp_path, "aarch64"))
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert outcome(status).endswith("this server has no debugger for aarch64 cores: the debugger its [debuggers] section "
                                "names for aarch64 cannot read them; the administrator can install gdb-multiarch or "
                                "name a debugger for aarch64 in the [debuggers] section"), outcome(status)
    assert "Unpacked" not in log


def test_chroot_refuses_a_foreign_core_whose_release_gdb_cannot_run_here(start_server, tmp_path):
    crash = foreign_crash("s390x")
    repository = apt_release(tmp_path / "apt" / "debian-12-s390x", crash.debs.values(), "s390x")
    server = start_server(repository=repository, release_id="debian-12-s390x", RetraceEnvironment="chroot")
    status, _, _ = retrace(server, foreign_problem(tmp_path, "s390x"))
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert ("RetraceEnvironment = chroot runs the release's own gdb, which cannot run on this x86_64 server for "
            "s390x cores; the administrator can use RetraceEnvironment = sysroot") in outcome(status), outcome(status)


def test_a_core_whose_header_names_another_architecture_than_its_registers_is_refused(foreign_server, tmp_path):
    core = bytearray(foreign_crash("s390x").core.read_bytes())
    core[18:20] = (183).to_bytes(2, "big")  # e_machine: aarch64, on s390x registers
    altered = tmp_path / "altered-core"
    altered.write_bytes(core)
    problem = debian_problem_dir(tmp_path / "problem", altered, "/usr/bin/crasher", "crasher-1.0-1", "aarch64")
    status, log, _ = retrace(foreign_server("aarch64"), problem)
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert ("The coredump's ELF header says it is an aarch64 core, but its thread registers are not aarch64's "
            "(336 bytes, not 392)") in outcome(status), outcome(status)
    assert "gdb" not in log


def test_settings_and_the_front_page_list_the_releases_per_architecture(start_server, tmp_path):
    crash = foreign_crash("s390x")
    server = start_server()  # the fixture's fedora-41-x86_64
    apt_release(server.repo_dir / "debian-12-s390x", crash.debs.values(), "s390x")
    settings = dict(line.split(" ", 1) for line in server.get("/settings").text.split("\n"))
    assert settings["supported_architectures"] == "s390x x86_64"
    assert settings["supported_releases"] == "debian-12-s390x fedora-41-x86_64"
    page = server.get("/").text
    assert "<h3>s390x</h3><ul><li><code>debian-12-s390x</code></li></ul>" in page
    assert "<h3>x86_64</h3><ul><li><code>fedora-41-x86_64</code></li></ul>" in page


@pytest.mark.parametrize("damage, sentence", [
    (lambda core: core[:len(core) // 2], "The coredump is truncated: it has "),
    (lambda core: core[:18] + (0x9026).to_bytes(2, "big") + core[20:],
     "The coredump is from an unsupported architecture (ELF machine 36902)"),
])
def test_a_damaged_foreign_core_fails_with_a_sentence_and_no_debugger_noise(foreign_server, tmp_path, damage,
                                                                           sentence):
    damaged = tmp_path / "damaged-core"
    damaged.write_bytes(damage(foreign_crash("s390x").core.read_bytes()))
    problem = debian_problem_dir(tmp_path / "problem", damaged, "/usr/bin/crasher", "crasher-1.0-1", "s390x")
    status, log, _ = retrace(foreign_server("s390x"), problem)
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert sentence in outcome(status), outcome(status)
    assert "gdb" not in log


@pytest.mark.parametrize("arch", ["aarch64", "s390x"])
def test_an_rpm_release_of_the_architecture_retraces_its_cores_as_the_apt_one_does(start_server, tmp_path, arch):
    """The same files as RPMs (crasher and glibc, each with -debuginfo, signed) in fedora-41-<arch>: the
    rpm-md backend resolves the foreign core's modules as the apt one does."""
    crash = foreign_crash(arch)
    TEST_KEY.ensure()
    repository = publish_release(tmp_path / "repos", f"fedora-41-{arch}", as_rpms(crash, tmp_path / "rpm", TEST_KEY))
    problem = make_problem_dir(tmp_path / "problem", crash.core)
    (problem / "architecture").write_text(arch)
    server = start_server(repository=repository, release_id=f"fedora-41-{arch}")
    task_id, auth = submit(server, problem)
    status = wait_final(server, task_id, auth, timeout=240)
    log = server.get(f"/{task_id}/log", headers=auth).text
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
    assert f"Release fedora-41-{arch} (from os_release" in log and "Signatures of 4 packages verified" in log
    expected = thread_frames(local_gdb_output(crash.debs.values(), crash.core, tmp_path / "sysroot",
                                              "/usr/bin/crasher", gdb="gdb-multiarch"))
    assert thread_frames(server.get(f"/{task_id}/backtrace", headers=auth).text) == expected
