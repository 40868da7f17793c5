"""Ten real Debian programs, crashed as the kernel writes cores, retraced frame-exact through the real server.

The corpus (testkit/corpus.py): strings, python3.11 (two threads), lua5.4 (a
C stack hundreds of frames deep), tftp, in.tftpd, gsl-histogram, booldnf
(C++), enca, pcregrep and vsftpd, each with its real -dbg package from
bookworm main and the stripped libraries of this host it maps.  Every
thread's frames and file:line equal a local gdb's on one merged-/usr
sysroot of the same packages, from a full apt mirror and from a
metadata-only release synced from it.
"""

import json
import re
import subprocess

import pytest

from testkit.cores import run_installed
from testkit.corpus import PROGRAMS, crash
from testkit.debian import (
    DEBIAN_RELEASE,
    apt_archive,
    apt_release,
    debian_problem_dir,
    local_gdb_output,
    thread_frames,
    unpack_debs,
)
from testkit.helpers import submit, wait_final
from testkit.reposync_admin import REPOSYNC, serve_http
from testkit.signing import TEST_KEY
from tests.integration.test_debian import DEBIAN_FILES
from tests.integration.test_reports import CLIENT


@pytest.fixture(scope="module")
def crashed(work_dir):
    """``{program name: Crashed}``: every corpus program crashed once."""
    return {program.name: crash(program, work_dir) for program in PROGRAMS}


@pytest.fixture(scope="module")
def reference(crashed, work_dir):
    """``reference(name)``: every thread's frames as a local gdb gives them on one merged-/usr sysroot of the
    program's packages (each computed once)."""
    known = {}

    def frames(name):
        if name not in known:
            one = crashed[name]
            known[name] = thread_frames(local_gdb_output(one.debs, one.core, work_dir / f"corpus-sysroot-{name}",
                                                         one.program.executable))
        return known[name]

    return frames


def unique(debs):
    return list({deb.name: deb for deb in debs}.values())


@pytest.fixture(scope="module")
def corpus_servers(start_server, work_dir, crashed):
    """``{"full": server, "metadata-only": server}``: one release of every corpus package, as an apt repository
    and as a metadata-only release synced from a signed mirror of it; each takes the whole corpus at once."""
    debs = unique(deb for one in crashed.values() for deb in one.debs)
    capacity = {"MaxParallelTasks": "2", "MaxQueuedTasks": "20", "MaxUploadsPerClient": "100"}
    full = start_server(repository=apt_release(work_dir / "corpus-release" / DEBIAN_RELEASE, debs),
                        release_id=DEBIAN_RELEASE, lifetime="module", **capacity)
    TEST_KEY.ensure()
    process, url = serve_http(apt_archive(work_dir / "corpus-mirror", debs, key=TEST_KEY))
    metadata_only = start_server(repository=False, lifetime="module", **capacity, extra_ini=(
        f"[gpgkeys]\ndebian = {TEST_KEY.public}\n[reposync debian]\ntype = apt\nmirrors = {url}\n"
        "suites = $CODENAME\ncomponents = main\ncodenames = 12:bookworm\n"))
    sync = subprocess.run([str(REPOSYNC), "--config", str(metadata_only.config_path), "debian", "12", "x86_64",
                           "--metadata-only"], capture_output=True, text=True, timeout=600)
    assert sync.returncode == 0, sync.stdout + sync.stderr
    yield {"full": full, "metadata-only": metadata_only}
    process.terminate()
    process.wait()


@pytest.fixture(scope="module")
def retraced(corpus_servers, crashed, work_dir):
    """``{(where, name): (log, backtrace or None)}``: every crash sent to both servers at once (they retrace
    two at a time), then each followed to its end."""
    submitted = {}
    for where, server in corpus_servers.items():
        for name, one in crashed.items():
            problem = debian_problem_dir(work_dir / f"corpus-problem-{where}-{name}", one.core,
                                         one.program.executable, one.package)
            submitted[(where, name)] = (server, *submit(server, problem, names=DEBIAN_FILES))
    results = {}
    for key, (server, task_id, auth) in submitted.items():
        status = wait_final(server, task_id, auth, timeout=600)
        log = server.get(f"/{task_id}/log", headers=auth).text
        succeeded = status.headers["X-Task-Status"] == "FINISHED_SUCCESS"
        results[key] = (log, server.get(f"/{task_id}/backtrace", headers=auth).text if succeeded else None)
    return results


def test_the_corpus_is_ten_real_programs_in_c_and_cpp_with_more_than_one_thread_and_deep_stacks(reference):
    assert len(PROGRAMS) >= 10
    assert {program.language for program in PROGRAMS} == {"C", "C++"}
    assert len(reference("python")) == 2, "python crashes with a second thread waiting"
    assert len(reference("lua")[1]) > 150, "lua's C stack is hundreds of frames deep"


@pytest.mark.parametrize("where", ["full", "metadata-only"])
@pytest.mark.parametrize("name", [program.name for program in PROGRAMS])
def test_every_threads_frames_equal_a_local_gdb_with_the_same_packages(retraced, crashed, reference, name, where):
    log, backtrace = retraced[(where, name)]
    assert backtrace is not None, log
    assert "Partial backtrace" not in backtrace
    assert thread_frames(backtrace) == reference(name)
    with_lines = [line for frames in reference(name).values() for _, line in frames if line]
    assert with_lines, f"the -dbg packages give {name} file:line"
    needed = re.search(r"Packages needed: (.*)", log)[1].split()
    assert any(deb.name.removesuffix(".deb").replace("%3a", ":") in needed for deb in crashed[name].debug), needed


def test_a_coreless_report_of_the_lto_built_python_names_its_frames_and_inlined_callers_as_gdb_does(
        corpus_servers, crashed, reference, work_dir):
    """Debian builds python3.11 with LTO. The report, unwound where the crashed build is installed, names the
    interpreter's frames as gdb does, inlined callers included (elfutils 0.188's eu-addr2line named the ELF
    symbol signal_pthread_kill.lto_priv.0 and no inlined caller: the report and the retrace parted ways)."""
    one = crashed["python"]
    staged = work_dir / "corpus-installed-python"
    unpack_debs(one.binaries, staged)
    problem = debian_problem_dir(work_dir / "corpus-report-python", one.core, one.program.executable, one.package)
    server = corpus_servers["full"]
    ran = run_installed(staged, str(CLIENT), "report", "--uri", server.url, "--cafile", str(server.cert), "--dir",
                        str(problem), "--json", "--no-core", timeout=300)
    assert ran.returncode == 0, ran.stderr
    crash_thread = next(thread for thread in json.loads(ran.stdout)["frames"] if thread["crash_thread"])
    reported = [location["function"] for frame in crash_thread["frames"] for location in frame["locations"]]
    gdb = [function for function, _ in reference("python")[1]]
    assert "signal_pthread_kill_impl" in reported, reported
    start, at = reported.index("signal_pthread_kill_impl"), gdb.index("signal_pthread_kill_impl")
    assert reported[start:start + 10] == gdb[at:at + 10]
