"""Debian 13 beside Debian 12 on one server: a real crash in a debootstrap'd trixie root and one of bookworm's
strings, each matched to its own release by its os-release and retraced with that release's packages."""

import shutil

import pytest

from testkit.debian import (
    DEBIAN_RELEASE,
    PROGRAM,
    apt_release,
    crash_debian_program,
    debian_debs,
    debian_problem_dir,
    local_gdb_output,
    thread_frames,
)
from testkit.trixie import PROGRAM as SLEEP
from testkit.trixie import TRIXIE_RELEASE, crash_in_trixie, trixie_debs, trixie_root
from tests.integration.test_debian import BINARIES, retraced


@pytest.fixture(scope="module")
def root(work_dir):
    root = trixie_root(work_dir)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def two_releases(start_server, work_dir, root):
    """One server, two apt releases: bookworm's strings packages and trixie's coreutils and libc6."""
    bookworm = debian_debs()
    server = start_server(repository=apt_release(work_dir / "two" / DEBIAN_RELEASE, bookworm.values()),
                          release_id=DEBIAN_RELEASE, lifetime="module")
    apt_release(work_dir / "two-trixie", trixie_debs(root).values())
    shutil.copytree(work_dir / "two-trixie", server.repo_dir / TRIXIE_RELEASE)
    return server


def test_settings_list_both_releases(two_releases):
    settings = two_releases.get("/settings").text
    assert DEBIAN_RELEASE in settings and TRIXIE_RELEASE in settings


def test_a_trixie_crash_is_retraced_from_trixies_packages(two_releases, root, work_dir, tmp_path):
    core = crash_in_trixie(root)
    debs = trixie_debs(root)
    version = debs["coreutils"].name.split("_")[1]
    problem = debian_problem_dir(tmp_path / "problem", core, SLEEP, f"coreutils-{version}",
                                 os_info=(root / "etc" / "os-release").read_text())
    backtrace, log = retraced(two_releases, problem)
    assert f"Release {TRIXIE_RELEASE} (from os_info (ID=debian))" in log
    assert debs["libc6-dbg"].name.removesuffix(".deb") in log
    frames = thread_frames(backtrace)[1]
    assert frames == thread_frames(local_gdb_output(debs.values(), core, tmp_path / "sysroot", SLEEP))[1]
    assert any(function.endswith("nanosleep") and line for function, line in frames), frames


def test_a_bookworm_crash_on_the_same_server_is_retraced_from_bookworms(two_releases, work_dir, tmp_path):
    debs = debian_debs()
    core = crash_debian_program([debs[name] for name in BINARIES], work_dir)
    backtrace, log = retraced(two_releases, debian_problem_dir(tmp_path / "problem", core))
    assert f"Release {DEBIAN_RELEASE} (from os_info (ID=debian))" in log
    assert thread_frames(backtrace)[1] == thread_frames(local_gdb_output(debs.values(), core, tmp_path / "sysroot",
                                                                         PROGRAM))[1]
