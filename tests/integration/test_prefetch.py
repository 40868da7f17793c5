"""A coredump's packages are unpacked while the upload still streams, through the real server: the upload
asks the dispatcher once the core's first bytes are on disk, and the worker then finds every package in the
cache."""

import hashlib
import shutil
import time

from testkit.distro import publish_release
from testkit.helpers import problem_members, tar_bytes, timed_retrace, wait_final
from tests.integration.test_hardening import MIB, open_upload, read_answer

# Past the core: what the test holds back until the packages are in the cache.  The tar reader takes the
# body a MiB at a time, so the core's own bytes are on disk only once a MiB more has come.
HELD = 2 * MIB


def padded_core(problem_dir):
    """The real core with zeros after it: room to hold the upload open once the core's segments are in."""
    return (problem_dir / "coredump").read_bytes() + bytes(4 * MIB)


def cached(server, rpms):
    pkgids = {rpm.name: hashlib.sha256(rpm.read_bytes()).hexdigest() for rpm in rpms}
    return sorted(name for name, pkgid in pkgids.items() if (server.cache_dir / "rpms" / pkgid / "manifest.json").exists())


def indexes(server):
    return sorted(path.name for path in (server.cache_dir / "gdb-index").glob("*.gdb-index"))


def upload_holding_the_tail(server, body, rpms, gdb_indexes=0, timeout=60):
    """Send ``body`` but its last HELD bytes; once every one of ``rpms`` is unpacked in the server's cache
    (and ``gdb_indexes`` indexes are built), the rest.  ``(task id, auth headers)`` of the task it became."""
    with open_upload(server, len(body)) as upload:
        upload.sendall(body[:-HELD])
        deadline = time.monotonic() + timeout
        while len(cached(server, rpms)) < len(rpms) or len(indexes(server)) < gdb_indexes:
            assert time.monotonic() < deadline, (
                f"the upload waits, only {cached(server, rpms)} are unpacked, indexes {indexes(server)}; the "
                "dispatcher said:\n" + (server.log_dir / "dispatcher.log").read_text())
            time.sleep(0.05)
        upload.sendall(body[-HELD:])
        status, headers, text = read_answer(upload, timeout=60)
    assert status == 201, text
    return headers["x-task-id"], {"X-Task-Password": headers["x-task-password"]}


def retraced_from_the_cache(server, task_id, auth, rpms):
    status = wait_final(server, task_id, auth)
    log = server.get(f"/{task_id}/log", headers=auth).text
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
    for rpm in rpms:
        nevra = rpm.name.removesuffix(".rpm")
        assert f"Reused {nevra} from the package cache" in log, log
    assert "Unpacked " not in log, log
    return log


def test_with_the_release_sent_before_the_core_its_packages_are_unpacked_while_it_uploads(
        start_server, fixture_rpms, problem_dir):
    """retrace-client's order: the small files first, the core last."""
    server = start_server(PrefetchAbove="0", MinUploadRate="0")
    body = tar_bytes(problem_members(problem_dir, ("executable", "package", "os_release", "coredump"),
                                     coredump=padded_core(problem_dir)))
    task_id, auth = upload_holding_the_tail(server, body, fixture_rpms, gdb_indexes=2)
    log = retraced_from_the_cache(server, task_id, auth, fixture_rpms)
    # The first task's gdb reads the indexes of crasher's and libcrash's debug files: built during the upload.
    assert "gdb reads the prebuilt indexes of the 2 debug files" in log, log
    said = (server.log_dir / "dispatcher.log").read_text()
    assert f"4 packages of fedora-41-x86_64 (from os_release '{(problem_dir / 'os_release').read_text().strip()}')" \
           ", 4 unpacked, 0 already cached; 2 gdb indexes built" in said, said


def test_with_the_core_first_the_release_is_the_one_whose_index_lists_its_build_ids(
        start_server, fixture_rpms, problem_dir):
    """abrt-retrace-client's order: the core first, the release last.  Two x86_64 releases are served; only
    one holds the crashed program's build."""
    server = start_server(PrefetchAbove="0", MinUploadRate="0")
    libcrash = [rpm for rpm in fixture_rpms if rpm.name.startswith("libcrash")]
    publish_release(server.repo_dir, "fedora-40-x86_64", libcrash)
    body = tar_bytes(problem_members(problem_dir, ("coredump", "executable", "package", "os_release"),
                                     coredump=padded_core(problem_dir)))
    timed_retrace(server, body)  # the indexes exist on a server that has retraced before
    for directory in ("rpms", "sysroots", "gdb-index"):
        shutil.rmtree(server.cache_dir / directory, ignore_errors=True)
    task_id, auth = upload_holding_the_tail(server, body, fixture_rpms)
    retraced_from_the_cache(server, task_id, auth, fixture_rpms)
    said = (server.log_dir / "dispatcher.log").read_text()
    assert "packages of fedora-41-x86_64 (its index lists the build-id of /usr/bin/crasher)" in said, said


def test_a_core_below_prefetch_above_is_left_to_the_worker(start_server, fixture_rpms, problem_dir):
    server = start_server()  # PrefetchAbove = 4 MiB
    assert (problem_dir / "coredump").stat().st_size < 4 * MIB
    body = tar_bytes(problem_members(problem_dir, ("executable", "package", "os_release", "coredump")))
    _seconds, log = timed_retrace(server, body)
    assert "Reused " not in log and log.count("Unpacked ") == len(fixture_rpms), log
    assert "-byte core)" not in (server.log_dir / "dispatcher.log").read_text()
