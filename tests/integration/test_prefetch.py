"""A coredump's packages are unpacked while the upload still streams, through the real server: the upload
asks the dispatcher once the core's first bytes are on disk, and the worker then finds every package in the
cache."""

import hashlib
import shutil
import time

from retrace_server import locking
from testkit.distro import publish_release
from testkit.helpers import outcome, problem_members, tar_bytes, timed_retrace, wait_final
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


def dispatcher_said(server, text, timeout=60):
    """The dispatcher's log once it holds ``text``."""
    deadline = time.monotonic() + timeout
    while text not in (said := (server.log_dir / "dispatcher.log").read_text()):
        assert time.monotonic() < deadline, f"the dispatcher never said {text!r}:\n{said}"
        time.sleep(0.05)
    return said


def test_a_forged_core_is_not_prefetched_and_its_task_fails_saying_why(start_server, problem_dir):
    """A mapped file's name climbing out of any tree: refused by the prefetch as the worker refuses it."""
    server = start_server(PrefetchAbove="0", MinUploadRate="0")
    libc = b"/usr/lib/x86_64-linux-gnu/libc.so.6\0"
    forged = padded_core(problem_dir).replace(libc, b"/../../../../../../../tmp/x/libc.so\0")
    assert len(forged) == len(padded_core(problem_dir))  # the same length: the notes stay whole
    body = tar_bytes(problem_members(problem_dir, ("executable", "package", "os_release", "coredump"),
                                     coredump=forged))
    with open_upload(server, len(body)) as upload:
        upload.sendall(body[:-HELD])
        said = dispatcher_said(server, "-byte core): nothing prefetched")
        upload.sendall(body[-HELD:])
        status, headers, text = read_answer(upload, timeout=60)
    assert status == 201, text
    assert ("nothing prefetched: The coredump maps a file named '/../../../../../../../tmp/x/libc.so', which is "
            "not a plain absolute path") in said, said
    task_id, auth = headers["x-task-id"], {"X-Task-Password": headers["x-task-password"]}
    status = wait_final(server, task_id, auth)
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert "maps a file named '/../../../../../../../tmp/x/libc.so'" in outcome(status)
    assert not list((server.cache_dir / "rpms").glob("*/manifest.json"))


def test_an_upload_cut_in_the_middle_of_its_core_ends_its_prefetch(start_server, fixture_rpms, deep_problem_dir):
    """The deep core's libraries come after sixteen threads' stacks: once the packages their paths name are
    in, the prefetch waits for the libraries' own headers until the upload is gone, and stops, freeing its
    slot."""
    server = start_server(PrefetchAbove="0", MaxPackedSize="64", MaxUnpackedSize="512")
    core = (deep_problem_dir / "coredump").read_bytes()
    assert len(core) > 3 * MIB
    body = tar_bytes(problem_members(deep_problem_dir, ("executable", "package", "os_release", "coredump")))
    core_start = body.index(core[:4096])
    with open_upload(server, len(body)) as upload:
        upload.sendall(body[:core_start + 2 * MIB + MIB // 2])
        deadline = time.monotonic() + 60
        while len(cached(server, fixture_rpms)) < len(fixture_rpms):
            assert time.monotonic() < deadline, cached(server, fixture_rpms)
            time.sleep(0.05)
        assert "-byte core)" not in (server.log_dir / "dispatcher.log").read_text()
    said = dispatcher_said(server, "stopped early: the upload ended")
    assert "packages of fedora-41-x86_64 (from os_release" in said, said
    assert not server.incoming()
    assert not locking.is_held(server.save_dir / ".prefetch" / "0.lock")
