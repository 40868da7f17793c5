"""A crashed CPython: its gdb extension found in a verified package, each thread's py-bt under its C frames."""

import json

from retrace_server.analysis.gdb import batch_commands, exploitable_marker, interpret_output, threads_end
from retrace_server.analysis.python import (
    MAX_LINES,
    find_extension,
    interpreters,
    parse_tracebacks,
    results_text,
    with_tracebacks,
)
from retrace_server.elf import Module
from retrace_server.packaging.cache import MANIFEST, CachedPackage

PY_MARKER = "== PYTHON 0123456789abcdef =="


def tree(tmp_path, pkgid, *entries):
    """A package cache entry whose manifest lists ``entries`` (``(path, kind)``)."""
    path = tmp_path / pkgid
    path.mkdir()
    (path / MANIFEST).write_text(json.dumps([[name, kind, "", ""] for name, kind in entries]))
    return CachedPackage(path, False, 0.0, False)


def module(path):
    return Module(path, 0x1000, "ab" * 20)


def test_the_interpreter_is_the_python_program_or_libpython_and_nothing_else():
    mapped = [module(p) for p in ("/usr/bin/python3.11", "/usr/lib/x86_64-linux-gnu/libpython3.12.so.1.0",
                                  "/usr/bin/python3.11d", "/usr/lib64/libpython3.9.so.1.0", "/usr/bin/python-config",
                                  "/usr/lib/x86_64-linux-gnu/libc.so.6", "/home/user/python3.11")]
    assert interpreters(mapped) == ["/usr/bin/python3.11", "/usr/lib/x86_64-linux-gnu/libpython3.12.so.1.0",
                                    "/usr/bin/python3.11d", "/usr/lib64/libpython3.9.so.1.0"]


def test_debians_extension_is_found_in_the_dbg_package_by_the_programs_path(tmp_path):
    binary = tree(tmp_path, "minimal", ("usr/bin/python3.11", "f"))
    debug = tree(tmp_path, "dbg", ("usr/share/gdb/auto-load/usr/bin/python3.11-gdb.py", "f"),
                 ("usr/share/gdb/auto-load/usr/bin/python3.11d-gdb.py", "l"))
    found = find_extension([binary, debug], [module("/usr/bin/python3.11")])
    assert (found.path, found.pkgid) == ("/usr/share/gdb/auto-load/usr/bin/python3.11-gdb.py", "dbg")


def test_fedoras_extension_beside_libpythons_debug_file_is_found(tmp_path):
    debug = tree(tmp_path, "debuginfo", (
        "usr/lib/debug/usr/lib64/libpython3.12.so.1.0-3.12.7-1.fc41.x86_64.debug-gdb.py", "f"))
    found = find_extension([debug], [module("/usr/bin/python3.12"), module("/usr/lib64/libpython3.12.so.1.0")])
    assert found.path == "/usr/lib/debug/usr/lib64/libpython3.12.so.1.0-3.12.7-1.fc41.x86_64.debug-gdb.py"


def test_no_extension_without_an_interpreter_or_for_another_programs_script(tmp_path):
    scripts = tree(tmp_path, "libstdc++", ("usr/share/gdb/auto-load/usr/lib/x86_64-linux-gnu/libstdc++.so.6-gdb.py",
                                           "f"), ("usr/share/gdb/auto-load/usr/bin/python3.11-gdb.py", "f"))
    assert find_extension([scripts], [module("/usr/lib/x86_64-linux-gnu/libstdc++.so.6")]) is None
    assert find_extension([scripts], []) is None


def test_an_extension_whose_name_could_break_the_gdb_command_is_never_used(tmp_path):
    hostile = tree(tmp_path, "evil", ("usr/share/gdb/auto-load/usr/bin/python3.11-gdb.py\nshell id #-gdb.py", "f"))
    assert find_extension([hostile], [module("/usr/bin/python3.11")]) is None


def test_the_extension_is_sourced_before_the_core_and_py_bt_runs_last():
    commands = batch_commands("/root", "/usr/bin/python3.11", "/core", "== EXPLOITABLE x ==",
                              ("/usr/share/gdb/auto-load/usr/bin/python3.11-gdb.py", PY_MARKER))
    source = commands.index("source /root/usr/share/gdb/auto-load/usr/bin/python3.11-gdb.py")
    assert source < commands.index("file /root/usr/bin/python3.11")
    assert "current_line" in commands[source + 1], "source lines are never read from the server's files"
    assert "py-bt" in commands[-1] and PY_MARKER in commands[-1]
    plain = batch_commands("/root", "/usr/bin/crasher", "/core", "== EXPLOITABLE x ==")
    assert not any("python" in command or "source" in command for command in plain)


def gdb_output(marker, python_section):
    return (f"Thread 2 (LWP 11):\n#0  0x1 in wait () from libc.so.6\n\n"
            f"Thread 1 (LWP 10):\n#0  0x2 in kill () from libc.so.6\n#1  0x3 in _PyEval_EvalFrameDefault ()\n"
            f"{threads_end(marker)}\nFrom To Syms Read Shared Object Library\n{marker}\n=> 0x2:\tret\n"
            f"{python_section}")


def test_each_threads_traceback_goes_under_its_c_frames_and_the_exploitable_section_stays_clean():
    marker = exploitable_marker()
    result = interpret_output(gdb_output(marker, (
        f"{PY_MARKER} 1\nTraceback (most recent call first):\n  File \"/srv/app.py\", line 3, in leaf\n"
        f"  File \"/srv/app.py\", line 9, in <module>\n{PY_MARKER} 2\nUnable to locate python frame\n")),
        0.1, marker, PY_MARKER)
    assert result.python == {1: ["Traceback (most recent call first):", '  File "/srv/app.py", line 3, in leaf',
                                 '  File "/srv/app.py", line 9, in <module>']}
    assert result.exploitable_section == "=> 0x2:\tret"
    assert result.backtrace == (
        "Thread 2 (LWP 11):\n#0  0x1 in wait () from libc.so.6\n\n"
        "Thread 1 (LWP 10):\n#0  0x2 in kill () from libc.so.6\n#1  0x3 in _PyEval_EvalFrameDefault ()\n"
        "Python traceback (most recent call first):\n  File \"/srv/app.py\", line 3, in leaf\n"
        "  File \"/srv/app.py\", line 9, in <module>\nFrom To Syms Read Shared Object Library\n")
    assert results_text(result.python).startswith("Thread 1 (py-bt):\nTraceback (most recent call first):\n")


def test_a_thread_in_the_middle_gets_its_traceback_before_the_next_thread():
    threads = "Thread 2 (LWP 11):\n#0  0x1 in f ()\n\nThread 1 (LWP 10):\n#0  0x2 in g ()\n"
    assert with_tracebacks(threads, {2: ["Traceback (most recent call first):", "  File \"a.py\", line 1, in f"]}) == (
        "Thread 2 (LWP 11):\n#0  0x1 in f ()\nPython traceback (most recent call first):\n"
        "  File \"a.py\", line 1, in f\n\nThread 1 (LWP 10):\n#0  0x2 in g ()\n")


def test_without_python_the_backtrace_is_gdbs_own_output_less_the_threads_end_line():
    marker = exploitable_marker()
    result = interpret_output(gdb_output(marker, ""), 0.1, marker)
    assert threads_end(marker) not in result.backtrace and result.python == {}
    assert "_PyEval_EvalFrameDefault ()\nFrom To" in result.backtrace


def test_text_in_the_crashed_programs_frames_cannot_pose_as_another_threads_traceback():
    section = (f"{PY_MARKER} 1\nTraceback (most recent call first):\n"
               "  File \"x.py\", line 1, in f\n== PYTHON 1111111111111111 == 2\n  File \"fake\x1b[2J.py\", line 1, in g\n")
    parsed = parse_tracebacks(section, PY_MARKER)
    assert list(parsed) == [1] and parsed[1][-1] == '  File "fake?[2J.py", line 1, in g'


def test_a_traceback_is_capped():
    section = f"{PY_MARKER} 1\nTraceback (most recent call first):\n" + "  File \"x.py\", line 1, in f\n" * 5000
    assert len(parse_tracebacks(section, PY_MARKER)[1]) == MAX_LINES
