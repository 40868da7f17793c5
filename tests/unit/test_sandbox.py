"""The sandbox's own limits: what a debugger may print and how long it may run."""

import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from retrace_server.environments.sandbox import SandboxOutputLimit, SandboxTimeout, run_sandboxed


def test_a_command_printing_past_the_output_cap_is_killed_with_its_group():
    with pytest.raises(SandboxOutputLimit) as raised:
        run_sandboxed(["sh", "-c", "yes & yes"], [], timeout=30, memory_bytes=1 << 30, output_bytes=1 << 20)
    assert raised.value.args == (1 << 20,)


def test_output_under_the_cap_is_returned_whole():
    ran = run_sandboxed(["head", "-c", "100000", "/dev/zero"], [], timeout=30, memory_bytes=1 << 30,
                        output_bytes=1 << 20)
    assert ran.returncode == 0 and len(ran.text) == 100000


def test_text_on_standard_input_is_fed_while_output_is_read():
    ran = run_sandboxed(["cat"], [], timeout=30, memory_bytes=1 << 30, stdin="x" * (1 << 20))
    assert len(ran.text) == 1 << 20


def test_a_command_past_its_timeout_is_killed():
    with pytest.raises(SandboxTimeout):
        run_sandboxed(["sleep", "30"], [], timeout=0.5, memory_bytes=1 << 30)


def sandboxed(*command):
    return run_sandboxed(list(command), [], timeout=30, memory_bytes=1 << 31)


def test_the_sandbox_cannot_make_user_namespaces_of_its_own():
    ran = sandboxed("unshare", "--user", "true")
    assert ran.returncode != 0 and "Operation not permitted" in ran.text


def test_system_calls_a_debugger_never_needs_are_refused():
    probe = ("import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
             "print(libc.ptrace(0, 0, 0, 0), os.strerror(ctypes.get_errno()))")
    assert sandboxed("python3", "-c", probe).text.strip() == "-1 Operation not permitted"


def test_files_the_debugger_writes_are_capped():
    ran = sandboxed("sh", "-c", "head -c 300000000 /dev/zero > /tmp/big; echo status $?")
    assert "File size limit exceeded" in ran.text and "status 153" in ran.text


_FORK_BOMB = """
import sys
from retrace_server.environments.sandbox import run_sandboxed
ran = run_sandboxed(["sh", "-c", "for i in $(seq 3000); do sleep 30 & done; echo forked"], [], timeout=60,
                    memory_bytes=1 << 31)
print(ran.text)
"""


def test_a_fork_bomb_stops_at_the_process_limit():
    """As the service user: the kernel does not count root's processes against RLIMIT_NPROC."""
    try:
        user = pwd.getpwnam("retrace")
    except KeyError:
        pytest.skip("the service user retrace does not exist (make service-user)")
    ran = subprocess.run([sys.executable, "-c", _FORK_BOMB], user=user.pw_uid, group=user.pw_gid, extra_groups=[],
                         cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=120)
    assert "Cannot fork" in ran.stdout or "Resource temporarily unavailable" in ran.stdout, ran.stdout + ran.stderr
