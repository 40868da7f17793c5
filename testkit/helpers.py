"""Integration-test helpers: archives (real tar + xz, or tarfile for hostile shapes) and task polling."""

import contextlib
import fcntl
import hashlib
import io
import os
import pwd
import re
import signal
import subprocess
import tarfile
import time
from pathlib import Path

from retrace_server.protocol import FAILURE_REASON, from_header_text
from testkit.server import SERVICE_USER

XZ_TAR = "application/x-xz-compressed-tar"
ZSTD_TAR = "application/x-zstd-compressed-tar"
DEBIAN_RELEASE = "debian-12-x86_64"
ABRT_FILES = ("coredump", "executable", "package", "os_release")


def abrt_archive(problem_dir, names=ABRT_FILES):
    """What abrt-retrace-client sends: ``tar cO --directory=D names | xz -2``."""
    tar = subprocess.Popen(["tar", "cO", f"--directory={problem_dir}", *names], stdout=subprocess.PIPE)
    xz = subprocess.run(["xz", "-2", "-"], stdin=tar.stdout, capture_output=True, check=True)
    tar.stdout.close()
    assert tar.wait() == 0
    return xz.stdout


def xz(data):
    return subprocess.run(["xz", "-2", "-"], input=data, capture_output=True, check=True).stdout


def tar_bytes(members):
    """A tar built from ``(TarInfo, bytes or None)`` pairs, for shapes real tools refuse to make."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buffer.getvalue()


def regular(name, data):
    return tarfile.TarInfo(name), data


def problem_members(problem_dir, names=ABRT_FILES, **replace):
    """Members for the problem dir's files, with some contents replaced."""
    members = []
    for name in names:
        data = replace.get(name)
        if data is None:
            data = (problem_dir / name).read_bytes()
        members.append(regular(name, data))
    return members


def parse_settings(text):
    settings = {}
    for line in text.split("\n"):
        key, _, value = line.partition(" ")
        settings[key.lower()] = value
    return settings


def password_header(response):
    return {"X-Task-Password": response.headers["X-Task-Password"]}


FINAL_STATUSES = ("FINISHED_SUCCESS", "FINISHED_FAILURE")


def submit(server, problem_dir, names=ABRT_FILES, archive=None, **headers):
    """Upload a problem dir (or its ready ``archive``) as abrt-retrace-client does.

    Returns ``(task id, auth headers)``.
    """
    response = server.post(
        "/create", data=archive or abrt_archive(problem_dir, names),
        headers={"Content-Type": XZ_TAR, "X-Task-Type": "0", **headers},
    )
    assert response.status_code == 201, response.text
    return response.headers["X-Task-Id"], password_header(response)


def wait_final(server, task_id, auth, timeout=90, poll=0.05, settled=True):
    """Poll the status like abrt-retrace-client until the task ends; the last response.  ``settled``: also
    until the worker is done after its answer (cleaning, the crash bucket, statistics), which a test then
    reads."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = server.get(f"/{task_id}", headers=auth)
        assert response.status_code == 200, response.text
        if response.headers["X-Task-Status"] in FINAL_STATUSES:
            if settled:
                wait_settled(server, task_id, auth, deadline)
            return response
        time.sleep(poll)
    raise AssertionError(f"task {task_id} did not finish in {timeout} s: {response.text}")


def wait_settled(server, task_id, auth, deadline, poll=0.02):
    """Until the task log says the worker finished what follows a success (``After the answer:``); a task no
    worker answered (ended by an engineer, failed) has nothing to wait for."""
    while time.monotonic() < deadline:
        log = server.get(f"/{task_id}/log", headers=auth)
        if log.status_code != 200 or "Retrace job finished successfully" not in log.text \
                or "After the answer: " in log.text:
            return
        time.sleep(poll)
    raise AssertionError(f"task {task_id}: the worker did not finish after its answer")


def outcome(response):
    """A task's status as our client shows it: upstream's exact sentence, then the reason the server sends
    beside it (X-Task-Failure-Reason) when the task failed."""
    reason = response.headers.get(FAILURE_REASON)
    return f"{response.text}: {from_header_text(reason)}" if reason else response.text


def timed_retrace(server, archive, poll=0.01):
    """``(seconds from upload to FINISHED_SUCCESS, task log)``; RuntimeError if the task failed."""
    started = time.monotonic()
    task_id, auth = submit(server, None, archive=archive)
    status = wait_final(server, task_id, auth, poll=poll, settled=False)
    seconds = time.monotonic() - started
    wait_settled(server, task_id, auth, time.monotonic() + 90)
    log = server.get(f"/{task_id}/log", headers=auth).text
    if status.headers["X-Task-Status"] != "FINISHED_SUCCESS":
        raise RuntimeError(f"task {task_id} failed: {outcome(status)}\n{log}")
    return seconds, log


def wait_for_log_line(server, task_id, auth, text, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = server.get(f"/{task_id}/log", headers=auth)
        if response.status_code == 200 and text in response.text:
            return response.text
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} never logged {text!r}")


@contextlib.contextmanager
def lock_held(directory, name):
    """Hold ``directory/name`` (flock) as a task of the service user would; the directory is made the user's."""
    user = pwd.getpwnam(SERVICE_USER)
    directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    os.chown(directory, user.pw_uid, user.pw_gid)
    fd = os.open(directory / name, os.O_CREAT | os.O_RDWR, 0o640)
    os.fchown(fd, user.pw_uid, user.pw_gid)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def package_lock_held(server, rpm_path):
    """Hold the cache lock of ``rpm_path`` as another unpacking task would.

    Workers that need the package wait (and say so in their log) until the
    block ends, which makes concurrency tests deterministic.
    """
    pkgid = hashlib.sha256(Path(rpm_path).read_bytes()).hexdigest()
    return lock_held(server.cache_dir / "rpms", f"{pkgid}.lock")


def running(pid):
    """Whether ``pid`` still runs (a zombie waiting for init to reap it does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):  # it ended before, or while, /proc was read
        return False
    return state != "Z"


def kill_worker(server, task_id, supervisor=True, job=True):
    """SIGKILL a running task's supervisor (the pid in its lock file) and/or its job process.

    Both: the supervisor first, as a power loss would take them; killed the other way round, a supervisor
    that outlives its job by a moment records the end and may start the next queued task.
    """
    task_dir = server.save_dir / task_id
    if supervisor:
        os.kill(int((task_dir / ".worker.lock").read_text()), signal.SIGKILL)
    if job:
        with contextlib.suppress(ProcessLookupError):  # its supervisor's death may have taken it already
            os.kill(int((task_dir / "job_pid").read_text()), signal.SIGKILL)


def crashing_thread(backtrace):
    """Frames and locals of thread 1, addresses masked: what must not depend on the environment or on where
    the packages came from."""
    thread = backtrace[backtrace.index("\nThread 1 "):]
    thread = thread[:thread.find("\n\n", 1)] if "\n\n" in thread[1:] else thread
    return [re.sub(r"0x[0-9a-f]+", "ADDR", line) for line in thread.splitlines() if re.match(r"#\d+ |\s+\w+ = ", line)]


# Kernel vmcores: a Debian release directory holding the kernel's -dbg package, uploads, results.

def add_debian_repository(server, *debs):
    packages = server.repo_dir / DEBIAN_RELEASE / "Packages"
    packages.mkdir(parents=True)
    for deb in debs:
        (packages / deb.name).symlink_to(deb)
    for directory in (packages.parent, packages):
        directory.chmod(0o755)


def upload(server, archive, task_type=2):
    with open(archive, "rb") as body:
        response = server.post("/create", data=body, headers={"Content-Type": ZSTD_TAR,
                                                               "X-Task-Type": str(task_type)})
    assert response.status_code == 201, response.text
    return response.headers["X-Task-Id"], password_header(response)


def retrace(server, archive):
    task = upload(server, archive)
    return task, wait_final(server, *task, timeout=240)


def text(server, task, path):
    response = server.get(f"/{task[0]}/{path}", headers=task[1])
    assert response.status_code == 200, response.text
    return response.text
