"""crash's batch: every command after a marker line, its output split back by them."""

import signal
import subprocess
import sys

import pytest

from retrace_server.analysis.crash import (
    COMMANDS,
    CrashError,
    CrashOutput,
    Markers,
    _Session,
    extension_loaded,
    find_extensions,
    modules_without_debuginfo,
    result_name,
    session_setup,
)
from retrace_server.config import admin_commands, parse_config
from retrace_server.errors import ConfigError


def test_batch_script_echoes_a_marker_before_each_command_and_quits():
    script = Markers("t0").script(["sys", "log"]).splitlines()
    assert script == ["echo ==RETRACE-t0 SECTION sys==", "sys", "echo ==RETRACE-t0 SECTION log==", "log", "quit"]


def test_output_splits_into_the_preamble_and_each_command_s_text():
    text = "WARNING: active task not found\n==RETRACE-t0 SECTION sys==\n  PANIC: x\n==RETRACE-t0 SECTION log==\n[ 1.0] hi\n"
    preamble, sections = Markers("t0").split(text)
    assert preamble.strip() == "WARNING: active task not found"
    assert sections == {"sys": "  PANIC: x\n", "log": "[ 1.0] hi\n"}


def test_markers_are_random_so_a_kernel_log_cannot_forge_a_section():
    markers = Markers()
    assert markers.token != Markers().token
    forged = "==RETRACE-SECTION bt==\n==RETRACE-0000 SECTION bt==\nfake frames\n"
    text = f"{markers.section('log')}\n{forged}{markers.section('mod')}\nmodules\n"
    _, sections = markers.split(text)
    assert sections == {"log": forged, "mod": "modules\n"}


def test_backtrace_is_bt_a_when_it_shows_frames_else_plain_bt():
    frames = " #0 [ffffd210c0013b20] panic at ffffffff86fcd0a8\n"
    both = CrashOutput({"bt -a": frames, "bt": frames + "more"}, "", "full", 1.0)
    assert both.backtrace == frames
    only_bt = CrashOutput({"bt -a": "bt: cannot determine active tasks\n", "bt": frames}, "", "full", 1.0)
    assert only_bt.backtrace == frames


def test_full_batch_asks_for_summary_backtraces_log_and_modules():
    assert COMMANDS == ("sys", "bt -a", "bt", "log", "mod")


def test_modules_without_debuginfo_are_the_ones_mod_shows_not_loaded():
    mod = """     MODULE       NAME               BASE         SIZE  OBJECT FILE
ffffffffc03a40c0  pvpanic      ffffffffc03a2000  16384  (not loaded)  [CONFIG_KALLSYMS]
ffffffffc03ac140  pvpanic_pci  ffffffffc03aa000  16384  pvpanic-pci.ko
ffffffffc03b62c0  qemu_fw_cfg  ffffffffc03b3000  20480  (not loaded)  [CONFIG_KALLSYMS]
"""
    assert modules_without_debuginfo(mod) == {"pvpanic", "qemu_fw_cfg"}


# A stand-in for crash's command loop: answers each command at once, as crash does over a pipe.
FAKE_CRASH = r"""
import sys, time
for line in sys.stdin:
    command = line.strip()
    if command == "quit":
        break
    if command.startswith("echo "):
        print(command[5:])
    elif command == "hang":
        time.sleep(60)
    elif command == "flood":
        while True:
            sys.stdout.write("x" * 65536)
    else:
        print(f"output of {command}")
    sys.stdout.flush()
"""


def fake_session(timeout=30, output_bytes=1 << 20):
    process = subprocess.Popen([sys.executable, "-c", FAKE_CRASH], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    return _Session(process, timeout, 1 << 30, output_bytes)


def test_one_session_answers_batch_after_batch():
    session = fake_session()
    try:
        _, first = session.markers.split(session.batch(["sys", "mod"]))
        _, second = session.markers.split(session.batch(["mod -S /cache/modules", "mod"]))
    finally:
        session.close()
    assert first == {"sys": "output of sys\n", "mod": "output of mod\n"}
    assert second == {"mod -S /cache/modules": "output of mod -S /cache/modules\n", "mod": "output of mod\n"}
    assert session.process.returncode == 0


def test_a_batch_past_the_session_deadline_is_stopped_and_says_so():
    session = fake_session(timeout=0.5)
    try:
        with pytest.raises(CrashError, match=r"within 0.5 s \(ProcessCommunicateTimeout\)"):
            session.batch(["hang"])
    finally:
        session.close()
    assert session.process.returncode == -signal.SIGKILL


def test_a_crash_that_leaves_mid_batch_gives_what_it_said():
    session = fake_session()
    try:
        text = session.batch(["sys", "quit", "log"])
    finally:
        session.close()
    assert "output of sys" in text and "output of log" not in text


def test_a_session_that_prints_past_the_output_cap_is_stopped_and_says_so():
    session = fake_session(output_bytes=1 << 20)
    try:
        with pytest.raises(CrashError, match=r"more than 1 MiB \(DebuggerOutputLimit\)"):
            session.batch(["flood"])
    finally:
        session.close()
    assert session.process.returncode == -signal.SIGKILL


def test_admin_commands_are_plain_crash_commands_named_for_their_results():
    assert admin_commands("kmem -i; ps -m ;foreach bt") == ("kmem -i", "ps -m", "foreach bt")
    assert [result_name(command) for command in ("kmem -i", "foreach bt")] == ["crash-kmem-i", "crash-foreach-bt"]
    for hostile in ("!sh", "ps | sh", "log > /etc/passwd", "sys 'x'"):
        with pytest.raises(ValueError, match="is not a plain crash command"):
            admin_commands(hostile)


def test_a_config_with_a_hostile_crash_command_is_refused():
    with pytest.raises(ConfigError, match="CrashCommands: '!id' is not a plain crash command"):
        parse_config("[retrace]\nCrashCommands = kmem -i; !id\n", "test.conf")


def test_every_session_first_extends_each_extension_then_loads_module_debuginfo(tmp_path):
    (tmp_path / "b.so").write_bytes(b"")
    (tmp_path / "a.so").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("")
    loadable, refused = find_extensions(tmp_path)
    assert loadable == [tmp_path / "a.so", tmp_path / "b.so"] and refused == []
    assert session_setup(loadable, "/cache/modules") == (f"extend {tmp_path}/a.so", f"extend {tmp_path}/b.so",
                                                         "mod -S /cache/modules")
    assert session_setup([]) == ()


def test_an_extension_whose_path_could_break_crash_s_command_line_is_not_loaded(tmp_path):
    for name in ("two words.so", "x;sh.so", "new\nline.so", "pipe|.so"):
        (tmp_path / name).write_bytes(b"")
    assert find_extensions(tmp_path) == ([], ["new\nline.so", "pipe|.so", "two words.so", "x;sh.so"])


def test_no_extensions_directory_loads_none_and_an_unreadable_one_is_an_error(tmp_path):
    assert find_extensions("") == ([], [])
    with pytest.raises(FileNotFoundError):
        find_extensions(str(tmp_path / "missing"))


def test_crash_says_whether_extend_loaded_the_shared_object():
    assert extension_loaded("/usr/lib/crash/extensions/echo.so: shared object loaded\n")
    assert not extension_loaded("extend: broken.so: not an ELF format object file\n")
