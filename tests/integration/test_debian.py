"""Debian crashes, retraced from real Debian packages in an apt repository, through the real server.

The crash is Debian's own ``x86_64-linux-gnu-strings`` (testkit/debian.py); the
packages are the real ones from the Debian archive, their debuginfo the real ``-dbg``
packages of bookworm main.  The reference is a local gdb with every package of the
repository unpacked into one sysroot.
"""

import gzip
import lzma
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from retrace_server.elf import read_core
from testkit.debhelper import build_crasher_debs
from testkit.debian import (
    BINARIES,
    DEBIAN_RELEASE,
    PROGRAM,
    PYTHON,
    PYTHON_SCRIPT,
    apport_report,
    apt_archive,
    apt_release,
    archive_version,
    archive_versions,
    crash_debian_program,
    crash_python,
    deb_with_members,
    debian_debs,
    debian_problem_dir,
    local_gdb_output,
    local_python_tracebacks,
    merged_usr_sysroot,
    python_debs,
    python_frames,
    thread_frames,
)
from testkit.debuginfod import DEB_CACHE, Debuginfod, download_versions, installed_version
from testkit.helpers import outcome, submit, wait_final
from testkit.reposync_admin import REPOSYNC, serve_http, serve_rsync
from testkit.signing import OTHER_KEY, TEST_KEY
from tests.integration.test_client import run_client

# What ABRT on Debian sends: os_info where RPM systems have os_release.
DEBIAN_FILES = ("coredump", "executable", "package", "os_info")


@pytest.fixture(scope="module")
def debs():
    return debian_debs()


@pytest.fixture(scope="module")
def debian_repository(work_dir, debs):
    return apt_release(work_dir / "apt" / DEBIAN_RELEASE, debs.values())


@pytest.fixture(scope="module")
def debian_problem(work_dir, debs):
    core = crash_debian_program([debs[name] for name in BINARIES], work_dir)
    return debian_problem_dir(work_dir / "problem-debian", core)


@pytest.fixture(scope="module")
def debian_server(start_server, debian_repository):
    return start_server(repository=debian_repository, release_id=DEBIAN_RELEASE)


@pytest.fixture(scope="module")
def crasher_debs():
    """The crasher fixture built by debhelper: crasher, libcrash1 and their automatic -dbgsym packages."""
    return build_crasher_debs()


@pytest.fixture(scope="module")
def dbgsym_repository(work_dir, debs, crasher_debs):
    return apt_release(work_dir / "apt-dbgsym" / DEBIAN_RELEASE, [debs["libc6"], debs["libc6-dbg"], *crasher_debs])


@pytest.fixture(scope="module")
def crasher_problem(work_dir, debs, crasher_debs):
    binaries = [deb for deb in crasher_debs if "-dbgsym_" not in deb.name]
    core = crash_debian_program([debs["libc6"], *binaries], work_dir, "/usr/bin/crasher", "simple")
    return debian_problem_dir(work_dir / "problem-debian-crasher", core, "/usr/bin/crasher", "crasher-1.0-1")


def retrace(server, problem_dir):
    task_id, auth = submit(server, problem_dir, names=DEBIAN_FILES)
    status = wait_final(server, task_id, auth)
    log = server.get(f"/{task_id}/log", headers=auth).text
    backtrace = server.get(f"/{task_id}/backtrace", headers=auth).text if status.headers[
        "X-Task-Status"] == "FINISHED_SUCCESS" else ""
    return status, log, backtrace


def retraced(server, problem_dir):
    """``(backtrace, log)`` of a task expected to succeed."""
    status, log, backtrace = retrace(server, problem_dir)
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
    return backtrace, log


def crashing_thread_frames(text):
    """``[(function, file:line)]`` of thread 1 in ``thread apply all backtrace`` output."""
    return thread_frames(text)[1]


def local_gdb_frames(debs, core, tmp_path, program=PROGRAM):
    """The frames a local gdb gives with every package of the repository unpacked into one sysroot."""
    return crashing_thread_frames(local_gdb_output(debs, core, tmp_path / "sysroot", program))


def test_a_debian_crash_is_retraced_from_its_apt_repository_with_the_dbg_packages(debian_server, debian_problem):
    status, log, backtrace = retrace(debian_server, debian_problem)
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
    assert f"Release {DEBIAN_RELEASE} (from os_info (ID=debian))" in log
    needed = re.search(r"Packages needed: (.*)", log)[1].split()
    assert any(name.startswith("libc6-dbg_") for name in needed), needed
    assert any(name.startswith("binutils-x86-64-linux-gnu-dbg_2.40-2_amd64") for name in needed), needed
    assert any(name.startswith("libbinutils_") for name in needed) and any(name.startswith("libc6_") for name in needed)
    functions = [function for function, _ in crashing_thread_frames(backtrace)]
    assert "main" in functions and any("read" in function for function in functions), backtrace[:6000]
    assert re.search(r" at \S*strings\.c:\d+", backtrace), "binutils-x86-64-linux-gnu-dbg gives strings' lines"
    assert re.search(r" at \S*read\.c:\d+", backtrace), "libc6-dbg gives libc's lines"


def test_the_same_crash_again_reuses_its_tree_and_reads_the_gdb_indexes_built_after_the_first_answer(
        start_server, debian_repository, debian_problem, debs):
    """Debian's -dbg files ship without a gdb index: the first task answers, then indexes the ones it read;
    the second reads those indexes and the first task's tree, and gives the same frames."""
    server = start_server(repository=debian_repository, release_id=DEBIAN_RELEASE)
    first, first_log = retraced(server, debian_problem)
    assert "Assembled the sysroot (shared with later tasks needing the same files)" in first_log
    built = re.search(r"Built the gdb indexes of (\d+) of (\d+) debug files for later retraces", first_log)
    assert built and int(built[1]) >= 2, first_log
    assert "reads the prebuilt indexes" not in first_log
    build_ids = {module.build_id for module in read_core(debian_problem / "coredump").modules}
    indexes = sorted((server.cache_dir / "gdb-index").glob("*.gdb-index"))
    assert len(indexes) == int(built[1]) and {index.name.removesuffix(".gdb-index") for index in indexes} <= build_ids

    second, second_log = retraced(server, debian_problem)
    assert "Reused the sysroot an earlier task assembled from the same files" in second_log
    assert f"gdb reads the prebuilt indexes of the {built[2]} debug files" in second_log, second_log
    assert "Built the gdb indexes" not in second_log
    assert thread_frames(first)[1] and thread_frames(second) == thread_frames(first), second  # (gdb's warnings
    # about file times differ: the first task unpacked the program after its core was written)
    assert "gdb-index" not in second and str(server.cache_dir) not in second
    assert len(list((server.cache_dir / "sysroots").glob("*/root"))) == 1


def test_the_frames_equal_a_local_gdb_with_every_package_unpacked(debian_server, debian_problem, debs, tmp_path):
    _, _, backtrace = retrace(debian_server, debian_problem)
    assert crashing_thread_frames(backtrace) == local_gdb_frames(debs.values(), debian_problem / "coredump",
                                                                 tmp_path)


def test_a_program_built_by_debhelper_is_retraced_with_its_automatic_dbgsym_packages(
        start_server, dbgsym_repository, crasher_problem, debs, crasher_debs, tmp_path):
    server = start_server(repository=dbgsym_repository, release_id=DEBIAN_RELEASE)
    status, log, backtrace = retrace(server, crasher_problem)
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
    needed = re.search(r"Packages needed: (.*)", log)[1].split()
    assert {"crasher_1.0-1_amd64", "crasher-dbgsym_1.0-1_amd64", "libcrash1_1.0-1_amd64",
            "libcrash1-dbgsym_1.0-1_amd64"} <= set(needed), needed
    assert "crash_in_library (depth=0" in backtrace and "libcrash.c:13" in backtrace
    reference = local_gdb_frames([debs["libc6"], debs["libc6-dbg"], *crasher_debs], crasher_problem / "coredump",
                                 tmp_path, "/usr/bin/crasher")
    assert crashing_thread_frames(backtrace) == reference


@pytest.fixture(scope="module")
def deb_debuginfod(debian_repository, debian_problem):
    """A real elfutils debuginfod over the repository's .debs."""
    program = next(module.build_id for module in read_core(debian_problem / "coredump").modules
                   if module.path == PROGRAM)
    server = Debuginfod([debian_repository / "pool"], program)
    yield server
    server.stop()


@pytest.mark.parametrize("os_release_id, release", [("debian", DEBIAN_RELEASE), ("arch", "arch-rolling-x86_64")])
def test_debuginfod_over_the_debs_gives_the_apt_mirrors_frames_for_a_release_of_any_distribution(
        start_server, debian_server, deb_debuginfod, debian_problem, tmp_path, os_release_id, release):
    """No mirror and no index: a release named by its os-release ID (Arch has no plugin at all)."""
    problem = tmp_path / "problem"
    shutil.copytree(debian_problem, problem)
    if os_release_id != "debian":
        (problem / "os_info").write_text(f'NAME="Arch Linux"\nID={os_release_id}\nBUILD_ID=rolling\n')
    only_debuginfod = start_server(repository=False, DebuginfodURLs=deb_debuginfod.url, DebuginfodReleases=release)
    status, log, backtrace = retrace(only_debuginfod, problem)
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
    assert f"Release {release} (from os_info (ID={os_release_id}))" in log
    _, _, mirrored = retrace(debian_server, debian_problem)
    assert crashing_thread_frames(backtrace) == crashing_thread_frames(mirrored), backtrace[:1500] + log


@pytest.fixture(scope="module")
def apt_mirror(work_dir, debs):
    """A Debian mirror on loopback HTTP: pool/, dists/bookworm/ with an InRelease our test key signed."""
    archive = apt_archive(work_dir / "apt-mirror", debs.values(), key=TEST_KEY)
    process, url = serve_http(archive)
    yield archive, url
    process.terminate()
    process.wait()


def synced_server(start_server, url, *reposync_arguments, key=TEST_KEY):
    """A server with no release, its RepoDir filled by retrace-server-reposync from ``url``."""
    key.ensure()
    server = start_server(repository=False, extra_ini=(
        f"[gpgkeys]\ndebian = {key.public}\n"
        f"[reposync debian]\ntype = apt\nmirrors = {url}\nsuites = $CODENAME\ncomponents = main\n"
        "codenames = 12:bookworm\n"))
    sync = subprocess.run([str(REPOSYNC), "--config", str(server.config_path), "debian", "12", "x86_64",
                           *reposync_arguments], capture_output=True, text=True, timeout=600)
    return server, sync


def test_a_crash_gives_the_same_frames_from_a_full_apt_mirror_and_from_a_metadata_only_release(
        start_server, apt_mirror, debian_server, debian_problem):
    archive, url = apt_mirror
    full, sync = synced_server(start_server, url)
    assert sync.returncode == 0, sync.stdout + sync.stderr
    assert "InRelease signature good" in sync.stdout
    assert len(list((full.root / "repos" / DEBIAN_RELEASE / "pool" / "main").glob("*.deb"))) == 8
    metadata_only, sync = synced_server(start_server, url, "--metadata-only")
    assert sync.returncode == 0, sync.stdout + sync.stderr
    release_dir = metadata_only.root / "repos" / DEBIAN_RELEASE
    assert not (release_dir / "pool").exists() and (release_dir / "mirror").read_text().strip() == url
    _, _, reference = retrace(debian_server, debian_problem)
    for server in (full, metadata_only):
        status, log, backtrace = retrace(server, debian_problem)
        assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
        assert crashing_thread_frames(backtrace) == crashing_thread_frames(reference)
    assert re.search(r"Downloaded 6 of 6 packages \([\d.]+ MiB\) from " + re.escape(url), log), log
    assert not list((metadata_only.cache_dir / "downloads").iterdir()), "downloads are unpacked, then removed"


def test_an_apt_mirror_over_rsync_gives_the_same_release(start_server, apt_mirror, debian_server, debian_problem):
    archive, _ = apt_mirror
    process, url = serve_rsync(archive)
    try:
        server, sync = synced_server(start_server, url)
    finally:
        process.terminate()
        process.wait()
    assert sync.returncode == 0, sync.stdout + sync.stderr
    assert "InRelease signature good" in sync.stdout and "8 new packages" in sync.stdout
    status, log, backtrace = retrace(server, debian_problem)
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
    assert crashing_thread_frames(backtrace) == crashing_thread_frames(retrace(debian_server, debian_problem)[2])


@pytest.mark.parametrize("mirror_fault, sentence", [
    ("gone", r"mirror \S+ cannot be reached for \S+ \(ConnectionError\)"),
    ("missing", r"mirror \S+ answered HTTP 404 for libc6-dbg_\S+_amd64"),
])
def test_a_metadata_only_release_whose_mirror_fails_says_which_mirror_and_package(
        start_server, work_dir, debs, debian_problem, mirror_fault, sentence):
    archive = apt_archive(work_dir / f"apt-mirror-{mirror_fault}", debs.values(), key=TEST_KEY)
    process, url = serve_http(archive)
    try:
        server, sync = synced_server(start_server, url, "--metadata-only")
        assert sync.returncode == 0, sync.stdout + sync.stderr
        if mirror_fault == "missing":
            next((archive / "pool" / "main").glob("libc6-dbg_*.deb")).unlink()
        else:
            process.terminate()
            process.wait()
        status, _, _ = retrace(server, debian_problem)
    finally:
        process.terminate()
        process.wait()
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert re.search(sentence, outcome(status)), outcome(status)
    assert not list((server.cache_dir / "downloads").iterdir()), "nothing half-downloaded is left"


def test_an_inrelease_signed_by_an_untrusted_key_is_refused(start_server, apt_mirror):
    _, url = apt_mirror
    server, sync = synced_server(start_server, url, key=OTHER_KEY)
    assert sync.returncode == 3, sync.stdout + sync.stderr  # no mirror could be used
    assert f"the InRelease of bookworm from {url} has no good signature by a key trusted for this release" \
        in sync.stdout
    assert not (server.root / "repos" / DEBIAN_RELEASE / "dists").exists()


def test_a_mirror_serving_a_package_that_differs_from_its_index_is_refused_on_download(
        start_server, work_dir, debs, debian_problem):
    archive = apt_archive(work_dir / "apt-mirror-tampered", debs.values(), key=TEST_KEY)
    process, url = serve_http(archive)
    try:
        server, sync = synced_server(start_server, url, "--metadata-only")
        assert sync.returncode == 0, sync.stdout + sync.stderr
        served = next((archive / "pool" / "main").glob("libc6-dbg_*.deb"))
        served.write_bytes(served.read_bytes()[:-1] + b"!")  # same size, other bytes
        status, _, _ = retrace(server, debian_problem)
    finally:
        process.terminate()
        process.wait()
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert re.search(r"mirror \S+ served a different file than the index lists for libc6-dbg_\S+_amd64 \(size or "
                     r"SHA256 differ\); it was not used", outcome(status)), outcome(status)


def test_the_client_uploads_an_apport_report_as_the_user_has_it(debian_server, debian_problem, tmp_path):
    report = apport_report(tmp_path / "_usr_bin_x86_64-linux-gnu-strings.0.crash", debian_problem / "coredump",
                           PROGRAM, "binutils-x86-64-linux-gnu 2.40-2 [origin: Debian]", "Debian 12")
    result = run_client(debian_server, "batch", "--apport", str(report))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Retrace job finished successfully" in result.stderr + result.stdout
    assert re.search(r" at \S*strings\.c:\d+", result.stdout), result.stdout[:2000]


def test_an_ubuntu_style_index_without_build_ids_finds_the_dbgsym_packages_by_name_and_version(
        start_server, dbgsym_repository, crasher_problem, tmp_path):
    """Ubuntu's ddebs index carries no Build-Ids and its Contents no debug files: as apport does, the
    debug package is the binary package's name + -dbgsym (or -dbg) at the same version."""
    ubuntu = tmp_path / "ubuntu-24.04-x86_64"
    shutil.copytree(dbgsym_repository, ubuntu)
    index = lzma.decompress((ubuntu / "Packages.xz").read_bytes()).decode()
    (ubuntu / "Packages.xz").write_bytes(lzma.compress(re.sub(r"^Build-Ids: .*\n", "", index, flags=re.M).encode()))
    contents = gzip.decompress((ubuntu / "Contents-amd64.gz").read_bytes()).decode()
    (ubuntu / "Contents-amd64.gz").write_bytes(gzip.compress(
        "".join(line for line in contents.splitlines(True) if not line.startswith("usr/lib/debug/")).encode()))
    problem = tmp_path / "problem"
    shutil.copytree(crasher_problem, problem)
    (problem / "os_info").write_text('NAME="Ubuntu"\nVERSION_ID="24.04"\nID=ubuntu\nID_LIKE=debian\n')
    status, log, backtrace = retrace(start_server(repository=ubuntu, release_id="ubuntu-24.04-x86_64"), problem)
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
    assert "Matched /usr/bin/crasher to crasher_1.0-1_amd64 by its build-id" in log
    assert "crash_in_library (depth=0" in backtrace and "libcrash.c:13" in backtrace, backtrace[:2000]
    assert "/usr/bin/crasher: crasher_1.0-1_amd64; crasher-dbgsym_1.0-1_amd64" in backtrace


def test_checkpackage_of_an_apt_release_says_no_only_once_its_index_is_built(
        start_server, debian_repository, debian_problem, tmp_path):
    """A mirror an admin copied in by hand, not synced: no index until the first task builds one. Until then
    the server cannot tell, and a "no" would make the real client stop the user's first crash with a sentence
    blaming a package the mirror has."""
    server = start_server(repository=debian_repository, release_id=DEBIAN_RELEASE)

    def check(nvr):
        return server.get("/checkpackage", allow_redirects=False, headers={
            "X-Package-NVR": nvr, "X-Package-Arch": "x86_64", "X-OS-Release": DEBIAN_RELEASE})

    for nvr in ("binutils-x86-64-linux-gnu-2.40-2", "binutils-x86-64-linux-gnu-2.40-1"):
        answer = check(nvr)
        assert answer.status_code == 302 and answer.headers["X-Retrace-Package-Check"] == "unindexed", nvr
    result = run_client(server, "batch", "--dir", str(shutil.copytree(debian_problem, tmp_path / "problem")))
    assert result.returncode == 0 and "Retrace job finished successfully" in result.stderr, result.stderr
    answers = [check(nvr) for nvr in ("binutils-x86-64-linux-gnu-2.40-2", "zlib1g-1:1.2.13.dfsg-1")]
    assert [answer.status_code for answer in answers] == [302, 302]
    assert not any("X-Retrace-Package-Check" in answer.headers for answer in answers)
    assert check("binutils-x86-64-linux-gnu-2.40-1").status_code == 404


def test_a_package_whose_bytes_differ_from_its_index_is_refused_naming_it(start_server, debian_repository,
                                                                          debian_problem, tmp_path):
    tampered = tmp_path / DEBIAN_RELEASE
    shutil.copytree(debian_repository, tampered)
    target = next((tampered / "pool" / "main").glob("binutils-x86-64-linux-gnu-dbg_*.deb"))
    target.unlink()
    shutil.copy(next((tampered / "pool" / "main").glob("libbinutils-dbg_*.deb")), target)
    status, log, _ = retrace(start_server(repository=tampered, release_id=DEBIAN_RELEASE), debian_problem)
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert re.search(r"the file of binutils-x86-64-linux-gnu-dbg_2\.40-2_amd64 does not match the SHA256 its "
                     r"release's index lists for it; the mirror served a different package", outcome(status)), outcome(status)


def test_a_packages_index_that_places_a_package_outside_the_repository_is_refused(
        start_server, debian_repository, debian_problem, tmp_path):
    hostile = tmp_path / DEBIAN_RELEASE
    shutil.copytree(debian_repository, hostile)
    index = lzma.decompress((hostile / "Packages.xz").read_bytes()).decode()
    index = re.sub(r"Filename: pool/main/(libc6_\S+)", r"Filename: ../../../../etc/\1", index)
    (hostile / "Packages.xz").write_bytes(lzma.compress(index.encode()))
    status, _, _ = retrace(start_server(repository=hostile, release_id=DEBIAN_RELEASE), debian_problem)
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert re.search(r"places libc6_\S+_amd64 at '\.\./\.\./\.\./\.\./etc/libc6_\S+\.deb', outside the repository",
                     outcome(status)), outcome(status)


def member(name, kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.size = kind, linkname, 0o644, 4 if kind == tarfile.REGTYPE else 0
    return info, b"evil" if kind == tarfile.REGTYPE else None


def with_hostile_dbgsym(debs, crasher_debs, directory, *added):
    """An apt release of the crasher whose crasher-dbgsym package also carries ``added`` members."""
    dbgsym = next(deb for deb in crasher_debs if deb.name.startswith("crasher-dbgsym_"))
    directory.mkdir()
    hostile = deb_with_members(dbgsym, added, directory / dbgsym.name)
    others = [deb for deb in crasher_debs if deb != dbgsym]
    return apt_release(directory / DEBIAN_RELEASE, [debs["libc6"], debs["libc6-dbg"], *others, hostile])


@pytest.mark.parametrize("added, refusal", [
    (member("/etc/cron.d/retrace-evil"), "contains an absolute file name '/etc/cron.d/retrace-evil'"),
    (member("./usr/lib/debug/../../../../etc/retrace-evil"), "unsafe file name"),
    (member("./usr/lib/debug/.build-id/ev/il", tarfile.LNKTYPE, "/etc/shadow"), "hard-links"),
])
def test_a_debug_package_with_a_hostile_member_fails_the_task_naming_it(
        start_server, debs, crasher_debs, crasher_problem, tmp_path, added, refusal):
    repository = with_hostile_dbgsym(debs, crasher_debs, tmp_path / "hostile", added)
    status, log, _ = retrace(start_server(repository=repository, release_id=DEBIAN_RELEASE), crasher_problem)
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE", log
    assert "crasher-dbgsym_1.0-1_amd64 cannot be unpacked: " in outcome(status) and refusal in outcome(status), outcome(status)
    assert not Path("/etc/cron.d/retrace-evil").exists() and not Path("/etc/retrace-evil").exists()


def test_escaping_symlinks_and_device_files_in_a_package_cannot_reach_the_host(
        start_server, debs, crasher_debs, crasher_problem, dbgsym_repository, tmp_path):
    """A symlink out of the tree is kept, but the sysroot resolves it inside the task's root; a device node
    is never created: the crash retraces as from the clean package."""
    repository = with_hostile_dbgsym(
        debs, crasher_debs, tmp_path / "hostile",
        member("./usr/lib/debug/.build-id/ev/il.debug", tarfile.SYMTYPE, "../../../../../../../../etc/shadow"),
        member("./usr/lib/debug/sda", tarfile.BLKTYPE))
    server = start_server(repository=repository, release_id=DEBIAN_RELEASE)
    status, log, backtrace = retrace(server, crasher_problem)
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
    clean = retrace(start_server(repository=dbgsym_repository, release_id=DEBIAN_RELEASE), crasher_problem)[2]
    assert crashing_thread_frames(backtrace) == crashing_thread_frames(clean)
    [unpacked] = [root for root in (server.cache_dir / "rpms").glob("*/root")
                  if (root / "usr/lib/debug/.build-id/ev/il.debug").is_symlink()]
    assert not (unpacked / "usr/lib/debug/sda").exists()


def test_an_os_info_that_names_no_known_distribution_is_refused_with_the_releases_served(
        debian_server, debian_problem, tmp_path):
    problem = tmp_path / "problem"
    shutil.copytree(debian_problem, problem)
    (problem / "os_info").write_text('NAME="Plan 9 from Bell Labs"\nVERSION="4"\n')
    status, _, _ = retrace(debian_server, problem)
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert "cannot tell which release crashed" in outcome(status) and f"this server supports: {DEBIAN_RELEASE}" in outcome(status)


def with_hostile_packages(debs, crasher_debs, directory, added):
    """An apt release of the crasher whose packages named in ``added`` (``{prefix: members}``) carry more members."""
    directory.mkdir()
    packages = []
    for deb in crasher_debs:
        extra = next((members for prefix, members in added.items() if deb.name.startswith(prefix)), None)
        packages.append(deb_with_members(deb, extra, directory / deb.name) if extra else deb)
    return apt_release(directory / DEBIAN_RELEASE, [debs["libc6"], debs["libc6-dbg"], *packages])


def test_links_two_packages_lay_on_each_other_s_paths_never_lead_out_of_the_sysroot(
        start_server, debs, crasher_debs, crasher_problem, tmp_path):
    """Each package alone is clean; together ``usr/share/a -> .`` from one makes the other's
    ``usr/share/a/a/a/L -> /etc/hostname`` land two levels up, where (before) its target, clamped as if
    five levels deep, climbed out of the tree to the host's /etc/hostname."""
    link = tarfile.SYMTYPE
    repository = with_hostile_packages(debs, crasher_debs, tmp_path / "hostile", {
        "crasher-dbgsym_": [member("./usr/share/a", link, "."), member("./usr/share/b/b/b/L", link, "/etc/hostname")],
        "crasher_": [member("./usr/share/b", link, "."), member("./usr/share/a/a/a/L", link, "/etc/hostname")],
    })
    server = start_server(repository=repository, release_id=DEBIAN_RELEASE, AllowInteractive="1")
    task_id, auth = submit(server, crasher_problem, names=DEBIAN_FILES, **{"X-Task-Type": "3"})
    status = wait_final(server, task_id, auth)
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", outcome(status)
    sysroot = server.save_dir / task_id / "sysroot"
    links = [os.path.join(directory, name) for directory, dirs, files in os.walk(sysroot) for name in dirs + files
             if os.path.islink(os.path.join(directory, name))]
    assert [link for link in links if link.endswith("/L")], "the hostile links were placed (clamped), not dropped"
    allowed = (str(sysroot.resolve()) + "/", str(server.cache_dir.resolve()) + "/")
    for link in links:
        assert os.path.realpath(link).startswith(allowed), f"{link} -> {os.path.realpath(link)}"


def sparse_member(name):
    info = tarfile.TarInfo(name)
    info.type = tarfile.GNUTYPE_SPARSE
    return info, None


def huge_pax_member(name):
    info = tarfile.TarInfo(name)
    info.type = tarfile.XHDTYPE
    body = b"70014 comment=" + b"x" * 70000 + b"\n"
    info.size = len(body)
    return info, body


def zeros_member(name, size):
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o644
    return info, bytes(size)


@pytest.mark.parametrize("added, refusal", [
    (lambda: [sparse_member("./usr/share/doc/sparse")], "holds a sparse file './usr/share/doc/sparse'"),
    (lambda: [huge_pax_member("./usr/share/doc/pax")], "has an extended header larger than 64 KiB"),
    (lambda: [zeros_member("./usr/share/doc/zeros", 300 * 1024 * 1024)],
     "unpacks to more than 268435456 bytes (200 times its packed size); it is refused as a decompression bomb"),
], ids=["sparse", "huge-pax-header", "payload-bomb"])
def test_a_hostile_package_payload_fails_the_task_naming_package_and_limit(
        start_server, debs, crasher_debs, crasher_problem, tmp_path, added, refusal):
    """Defence in depth: the index's SHA256 vouches for a package, unless the index and mirror both lie."""
    repository = with_hostile_packages(debs, crasher_debs, tmp_path / "hostile", {"crasher-dbgsym_": added()})
    status, log, _ = retrace(start_server(repository=repository, release_id=DEBIAN_RELEASE), crasher_problem)
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE", log
    assert "crasher-dbgsym_1.0-1_amd64 cannot be unpacked: " in outcome(status) and refusal in outcome(status), \
        outcome(status)


# This machine runs zlib1g one security update behind: the archive lists 1+deb12u1 in bookworm-security.
ZLIB_BEHIND, ZLIB_NOW = "1:1.2.13.dfsg-1", "1:1.2.13.dfsg-1+deb12u1"


def test_a_package_the_mirror_stopped_listing_stays_known_for_keep_superseded_days(start_server, work_dir):
    """A mirror lists the version a machine runs, then only its update (a point release replaced it): after the
    second sync the release still knows the machine's build, with its file in the full mirror's pool, for
    KeepSupersededDays; with 0 it is forgotten."""
    behind, now = download_versions(DEB_CACHE / "superseded", [("zlib1g", ZLIB_BEHIND), ("zlib1g", ZLIB_NOW)])
    mirror = work_dir / "superseded-mirror"
    apt_archive(mirror, [behind], key=TEST_KEY)
    process, url = serve_http(mirror)
    try:
        server, sync = synced_server(start_server, url)
        assert sync.returncode == 0, sync.stdout + sync.stderr

        def check(version):
            return server.get("/checkpackage", allow_redirects=False, headers={
                "X-Package-NVR": f"zlib1g-{version}", "X-Package-Arch": "x86_64",
                "X-OS-Release": DEBIAN_RELEASE}).status_code

        def resync(setting=""):
            config = server.config_path.read_text()
            server.config_path.write_text(config.replace("[retrace]\n", f"[retrace]\n{setting}", 1))
            return subprocess.run([str(REPOSYNC), "--config", str(server.config_path), "debian", "12", "x86_64"],
                                  capture_output=True, text=True, timeout=600)

        assert (check(ZLIB_BEHIND), check(ZLIB_NOW)) == (302, 404)
        shutil.rmtree(mirror)
        apt_archive(mirror, [now], key=TEST_KEY)
        sync = resync()
        assert sync.returncode == 0, sync.stdout + sync.stderr
        assert "1 packages the mirror no longer lists are kept in the index (KeepSupersededDays = 400)" in sync.stdout
        assert (check(ZLIB_BEHIND), check(ZLIB_NOW)) == (302, 302)
        pool = server.root / "repos" / DEBIAN_RELEASE / "pool" / "main"
        assert sorted(path.name for path in pool.glob("zlib1g_*.deb")) == sorted([behind.name, now.name])
        sync = resync("KeepSupersededDays = 0\n")
        assert sync.returncode == 0 and "no longer lists" not in sync.stdout, sync.stdout + sync.stderr
        assert (check(ZLIB_BEHIND), check(ZLIB_NOW)) == (404, 302)
    finally:
        process.terminate()
        process.wait()




def script_line(text):
    return PYTHON_SCRIPT.splitlines().index(text) + 1


def test_a_crashed_python_interpreter_shows_each_threads_python_frames_as_a_local_gdbs_py_bt(
        start_server, work_dir, debs, tmp_path):
    """The archive's python3.11 (not this host's) crashed in place; its release holds python3.11-dbg."""
    interpreter = python_debs()
    version = archive_version("python3.11-dbg")
    repository = apt_release(work_dir / "apt-python" / DEBIAN_RELEASE,
                             [*interpreter.values(), debs["libc6"], debs["libc6-dbg"], debs["zlib1g"]])
    core = crash_python([interpreter["python3.11-minimal"]], work_dir, PYTHON_SCRIPT)
    problem = debian_problem_dir(work_dir / "problem-python", core, PYTHON, f"python3.11-minimal-{version}")
    server = start_server(repository=repository, release_id=DEBIAN_RELEASE)
    task_id, auth = submit(server, problem, names=DEBIAN_FILES)
    status = wait_final(server, task_id, auth)
    log = server.get(f"/{task_id}/log", headers=auth).text
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
    assert (f"Python frames through /usr/share/gdb/auto-load{PYTHON}-gdb.py from python3.11-dbg" in log), log
    assert "Python tracebacks: 2 threads run Python" in log
    backtrace = server.get(f"/{task_id}/backtrace", headers=auth).text
    frames = python_frames(backtrace)
    script = re.search(r'File "(/\S+/crash\.py)"', backtrace)[1]
    assert frames[1] == [f'  File "{script}", line {script_line(line)}, in {function}' for line, function in (
        ("    signal.pthread_kill(threading.get_ident(), signal.SIGSEGV)", "leaf"),
        ("    return leaf(depth + 1)", "middle"), ("    return middle(1)", "outer"), ("outer()", "<module>"))]
    assert any(f'line {script_line("    threading.Event().wait()")}, in waiting_worker' in line for line in frames[2])
    assert "Python traceback (most recent call first):" in backtrace
    c_frames = thread_frames(backtrace)[1]
    assert any(function == "_PyEval_EvalFrameDefault" for function, _ in c_frames), "C frames stay"
    results = server.get(f"/{task_id}/results/py-bt", headers=auth)
    assert results.status_code == 200 and python_frames(results.text) == frames
    assert frames == local_python_tracebacks([*interpreter.values(), debs["libc6"], debs["libc6-dbg"]], core,
                                             tmp_path / "sysroot")
    assert "    signal.pthread_kill" not in backtrace, "no source line is read from the server's files"


def test_this_hosts_own_python_unknown_to_every_source_gives_a_partial_backtrace_naming_each_missing_build(
        start_server, work_dir, debs, tmp_path):
    """This machine's /usr/bin/python3.11 is an update the archive no longer serves: crashed in place and
    sent by retrace-client (which adds the dso_list ABRT would), the libraries' frames still come back."""
    installed = installed_version("python3.11-minimal")
    other = next(version for version in archive_versions("python3.11-dbg") if version != installed)
    interpreter = python_debs(other)
    release = [*interpreter.values(), debs["libc6"], debs["libc6-dbg"], debs["zlib1g"]]
    server = start_server(repository=apt_release(work_dir / "apt-python-other" / DEBIAN_RELEASE, release),
                          release_id=DEBIAN_RELEASE)
    core = crash_python([], work_dir, PYTHON_SCRIPT)
    result = run_client(server, "batch", "--core", str(core), "--executable", PYTHON, "--no-pkgcheck")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    exe_build_id = next(module.build_id for module in read_core(core).modules if module.path == PYTHON)
    assert (f"Partial backtrace: no source has the crashed executable {PYTHON} (python3.11-minimal-{installed}, "
            f"build-id {exe_build_id})") in result.stdout
    expat = installed_version("libexpat1")
    assert re.search(rf"/usr/lib/x86_64-linux-gnu/libexpat\.so\.\S+ \(libexpat1-{re.escape(expat)}\.amd64, build-id "
                     r"[0-9a-f]{40}\): no package in the repository", result.stdout), result.stdout[:3000]
    frames = thread_frames(result.stdout)[1]
    assert re.search(r"pthread_kill", frames[0][0]) and re.search(r"pthread_kill\.c:\d+", frames[0][1] or ""), frames
    sysroot = tmp_path / "sysroot"
    merged_usr_sysroot([deb for deb in release if "python3.11-minimal" not in deb.name], sysroot)
    local = subprocess.run(
        ["gdb", "-batch", "-nx", "-iex", "set debuginfod enabled off", "-iex", "set auto-load off",
         "-ex", f"set sysroot {sysroot}", "-ex", f"set debug-file-directory {sysroot}/usr/lib/debug",
         "-ex", f"core-file {core}", "-ex", "sharedlibrary", "-ex", "thread apply all -ascending backtrace"],
        capture_output=True, text=True, check=True).stdout
    assert frames == thread_frames(local)[1], "the frames a local gdb unwinds with the same files"
