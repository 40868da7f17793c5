import subprocess

import pytest

from retrace_server.analysis.gdb import batch_commands, exploitable_marker, gdb_argv, interpret_output
from retrace_server.environments.sandbox import sandbox_argv


def test_batch_script_prints_all_threads_ascending_then_the_exploitable_section():
    commands = batch_commands("/root", "/usr/bin/crasher", "/task/coredump", "== EXPLOITABLE x ==")
    assert commands[:8] == [
        "set pagination off", "set width 0", "set confirm off", "set sysroot /root",
        "set debug-file-directory /root/usr/lib/debug", "set substitute-path /usr/src/debug /root/usr/src/debug",
        "file /root/usr/bin/crasher", "core-file /task/coredump",
    ]
    assert commands.index("thread apply all -ascending backtrace full 2048") < commands.index("info sharedlib")
    assert commands[-2:] == ["echo == EXPLOITABLE x ==\\n", "x/i $pc"]


def test_gdb_loads_no_scripts_and_asks_no_debuginfod():
    argv = gdb_argv("/root", "/usr/bin/x", "/core", exploitable_marker())
    assert argv[:8] == ["gdb", "-batch", "-nx", "-iex", "set auto-load off", "-iex", "set debuginfod enabled off", "-ex"]


def test_a_marker_printed_by_the_crashed_program_does_not_split_the_output():
    marker = exploitable_marker()
    assert marker != exploitable_marker()
    text = ('#0  0x401000 in main () at x.c:3\n$1 = 0x4020 "== EXPLOITABLE ==\\nx"\n'
            f"{marker}\n=> 0x401000 <main+4>:\tmov (%rax),%eax\n")
    result = interpret_output(text, 0.1, marker)
    assert "== EXPLOITABLE ==" in result.backtrace
    assert result.exploitable_section == "=> 0x401000 <main+4>:\tmov (%rax),%eax"


def sandboxed(command, *paths):
    return subprocess.run(sandbox_argv(command, paths), capture_output=True, text=True, timeout=30)


def test_sandbox_runs_as_nobody_in_a_new_user_namespace():
    assert sandboxed(["id", "-u"]).stdout.strip() == "65534"


def test_sandbox_shows_only_the_given_paths_of_the_host(tmp_path):
    visible = tmp_path / "visible"
    visible.write_text("task file")
    assert sandboxed(["cat", str(visible)], visible).stdout == "task file"
    assert sandboxed(["ls", "/var/spool"]).returncode != 0
    assert sandboxed(["ls", str(tmp_path / "missing")]).returncode != 0


def test_sandbox_mounts_given_paths_read_only(tmp_path):
    (tmp_path / "f").write_text("x")
    result = sandboxed(["sh", "-c", f"echo y > {tmp_path}/f"], tmp_path)
    assert result.returncode != 0 and (tmp_path / "f").read_text() == "x"


def test_sandbox_has_no_network():
    result = sandboxed(["cat", "/proc/net/dev"])
    interfaces = [line.split(":")[0].strip() for line in result.stdout.splitlines()[2:]]
    assert interfaces == ["lo"]


@pytest.mark.parametrize("flag", ["--unshare-all", "--die-with-parent", "--new-session", "--clearenv"])
def test_sandbox_argv_isolates(flag):
    assert flag in sandbox_argv(["true"], [])
