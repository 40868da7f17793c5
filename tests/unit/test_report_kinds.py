"""Python exceptions and kernel oopses as ABRT sends them (uReport 2, FAF's documented formats): each checked and
capped like a core report, each bucketed by its own rule."""

import json

import pytest

from retrace_server.reports import rules, ureport
from retrace_server.reports.triage import symbolic_stack, symbolic_text

OS = {"name": "fedora", "version": "41", "architecture": "x86_64"}


def python_report(exception="ZeroDivisionError", innermost="divide", line=3):
    return {"ureport_version": 2, "os": OS, "reason": f"{exception} in {innermost}",
            "packages": [{"name": "calc", "epoch": 0, "version": "2.1", "release": "1.fc41",
                          "architecture": "noarch", "package_role": "affected"}],
            "problem": {"type": "python", "component": "calc", "exception_name": exception,
                        "stacktrace": [
                            {"file_name": "/usr/lib/python3.13/site-packages/calc/ops.py", "file_line": line,
                             "function_name": innermost, "line_contents": "return a / b"},
                            {"file_name": "/usr/lib/python3.13/site-packages/calc/cli.py", "file_line": 40,
                             "function_name": "run"},
                            {"file_name": "/usr/bin/calc", "file_line": 8, "function_name": "<module>"}]}}


def oops_report(functions=("sysrq_handle_crash", "__handle_sysrq", "write_sysrq_trigger"), offsets=(0x16, 0x9b, 0x2e)):
    frames = [{"address": 0xffffffff81000000 + index, "reliable": True, "function_name": name,
               "function_offset": offset, "function_length": 0x100, "module_name": None}
              for index, (name, offset) in enumerate(zip(functions, offsets))]
    frames.insert(1, {"address": 1, "reliable": False, "function_name": "a_guess", "function_offset": 1,
                      "function_length": 2})
    return {"ureport_version": 2, "os": OS,
            "packages": [{"name": "kernel-core", "epoch": 0, "version": "6.11.4", "release": "301.fc41",
                          "architecture": "x86_64", "package_role": "affected"}],
            "problem": {"type": "kerneloops", "component": "kernel", "version": "6.11.4-301.fc41.x86_64",
                        "raw_oops": "sysrq: Trigger a crash\nKernel panic - not syncing: sysrq triggered crash",
                        "taint_flags": [], "modules": ["ext4"], "frames": frames}}


def parsed(document):
    return ureport.parse(json.dumps(document).encode())


def bthash(document):
    report = parsed(document)
    return symbolic_stack(report).signed(rules.load("/nonexistent", report.kind))[0]


def test_a_python_exception_is_read_with_its_frames_innermost_first():
    report = parsed(python_report())
    assert (report.kind, report.headline, report.component, report.release) == (
        "python", "ZeroDivisionError", "calc", "fedora-41-x86_64")
    assert [frame.function for frame in report.frames] == ["divide", "run", "<module>"]
    assert "#0  divide () at /usr/lib/python3.13/site-packages/calc/ops.py:3" in symbolic_text(report)


def test_the_same_exception_is_one_bucket_another_exception_or_place_is_another():
    same = bthash(python_report())
    assert bthash(python_report(line=5)) == same, "a line that moved with an edit elsewhere is the same bug"
    assert bthash(python_report(exception="KeyError")) != same
    assert bthash(python_report(innermost="multiply")) != same


def test_an_oops_is_bucketed_by_its_reliable_functions_without_offsets_or_modules():
    same = bthash(oops_report())
    assert bthash(oops_report(offsets=(0x20, 0x10, 0x30))) == same, "another build of the same code"
    assert bthash(oops_report(functions=("ext4_fill_super", "mount_bdev", "legacy_get_tree"))) != same
    assert [frame.function for frame in parsed(oops_report()).frames] == [
        "sysrq_handle_crash", "__handle_sysrq", "write_sysrq_trigger"], "the unreliable guess is left out"


def test_an_oops_skips_the_machinery_of_reporting_it():
    plain = bthash(oops_report())
    assert bthash(oops_report(functions=("dump_stack_lvl", "panic", "sysrq_handle_crash", "__handle_sysrq",
                                         "write_sysrq_trigger"), offsets=(1, 2, 0x16, 0x9b, 0x2e))) == plain


def test_python_and_core_buckets_never_meet():
    report = parsed(python_report())
    assert symbolic_stack(report).signed(rules.Rules(skip=()))[1].startswith("python\nZeroDivisionError\nops.py:divide")


@pytest.mark.parametrize("change, sentence", [
    ({"exception_name": "Zero Division; rm -rf"}, "problem.exception_name 'Zero Division; rm -rf' holds characters"),
    ({"stacktrace": []}, "The report's problem.stacktrace is not a list of frames"),
    ({"stacktrace": [{"file_name": "/x.py", "file_line": -1, "function_name": "f"}]},
     r"problem.stacktrace\[0\].file_line is not a line number"),
    ({"stacktrace": [{"file_name": "/x.py", "function_name": "f"}] * 300}, "too many frames: at most 256"),
])
def test_a_python_report_the_server_cannot_read_is_named(change, sentence):
    document = python_report()
    document["problem"].update(change)
    with pytest.raises(ureport.InvalidReport, match=sentence):
        parsed(document)


def test_an_oops_without_a_reliable_frame_and_the_kinds_not_read_are_named():
    document = oops_report()
    for frame in document["problem"]["frames"]:
        frame["reliable"] = False
    with pytest.raises(ureport.InvalidReport, match="The report's oops has no reliable frame"):
        parsed(document)
    document["problem"]["type"] = "ruby"
    with pytest.raises(ureport.InvalidReport, match=r"not Ruby exceptions \('ruby'\)"):
        parsed(document)
