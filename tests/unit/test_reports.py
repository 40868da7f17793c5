"""Coreless reports: the uReport's checks, the signature's normalization, eu-stack and eu-addr2line output read."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess

import pytest

from retrace_server.analysis import symbolize
from retrace_server.client.unwind import parse_stack
from retrace_server.errors import UploadTooLarge
from retrace_server.reports import buckets, ureport

FRAME = {"build_id": "9fc7b115391028f3bec04961a252386648d34102", "build_id_offset": 0x1145,
         "file_name": "/usr/lib64/libcrash.so.1"}
REPORT = {"ureport_version": 2, "reason": "Program /usr/bin/crasher was terminated by signal 11",
          "os": {"name": "fedora", "version": "41", "architecture": "x86_64"},
          "packages": [{"name": "crasher", "epoch": 0, "version": "1.0", "release": "1.fc41",
                        "architecture": "x86_64", "package_role": "affected"}],
          "problem": {"type": "core", "executable": "/usr/bin/crasher", "signal": 11, "component": "crasher",
                      "stacktrace": [{"crash_thread": True, "frames": [FRAME]}, {"frames": [FRAME]}]}}


def with_problem(**problem):
    document = json.loads(json.dumps(REPORT))
    document["problem"].update(problem)
    return json.dumps(document).encode()


def test_a_ureport_as_reporter_ureport_sends_it_reads_plain_or_gzipped():
    for data in (json.dumps(REPORT).encode(), gzip.compress(json.dumps(REPORT).encode())):
        report = ureport.parse(data)
        assert (report.release, report.package, report.version, report.signal) == (
            "fedora-41-x86_64", "crasher-1.0-1.fc41", "1.0-1.fc41", 11)
        assert report.crash_thread.frames[0] == ureport.ReportFrame(FRAME["build_id"], 0x1145, FRAME["file_name"])


@pytest.mark.parametrize("data, sentence", [
    (with_problem(stacktrace=[{"frames": [FRAME]}]), "The report marks 0 threads as crash_thread; exactly one must be"),
    (with_problem(stacktrace=[{"crash_thread": True, "frames": [dict(FRAME, build_id="xyz")]}]),
     "The report's problem.stacktrace[0].frames[0].build_id is not a hexadecimal build-id"),
    (with_problem(stacktrace=[{"crash_thread": True, "frames": [dict(FRAME, build_id_offset=-1)]}]),
     "The report's problem.stacktrace[0].frames[0].build_id_offset -1 is not an offset in a module"),
    (with_problem(stacktrace=[{"crash_thread": True, "frames": [dict(FRAME, file_name="a\nb")]}]),
     "The report's problem.stacktrace[0].frames[0].file_name is longer than 512 characters or holds control "
     "characters"),
    (with_problem(executable="crasher"), "The report's problem.executable is not an absolute path"),
    (with_problem(stacktrace=[{"crash_thread": True, "frames": [FRAME]}] * 65),
     "The report has 65 threads; this server reads at most 64"),
    (json.dumps(dict(REPORT, os={"name": "fedora; rm", "version": "41", "architecture": "x86_64"})).encode(),
     "The report's os.name 'fedora; rm' holds characters this server does not accept"),
    (b"[]", "The report is not a JSON object"),
    (with_problem(component=7), "The report's problem.component is not a str"),
    (with_problem(signal="11"), "The report's problem.signal is not a whole number"),
    (with_problem(stacktrace=[{"crash_thread": True, "frames": ["0x1145"]}]),
     "The report's problem.stacktrace[0].frames[0] is not an object"),
    (json.dumps(dict(REPORT, packages=[{"name": ["crasher"], "version": "1.0", "release": "1"}])).encode(),
     "The report's packages[].name is not a str"),
    (gzip.compress(b"{")[:-6], "The report is gzip-compressed but corrupt"),
])
def test_what_the_server_cannot_read_is_named(data, sentence):
    with pytest.raises(ureport.InvalidReport) as refused:
        ureport.parse(data)
    assert str(refused.value).startswith(sentence)


def test_a_report_that_unpacks_too_large_is_refused():
    with pytest.raises(UploadTooLarge, match="unpacks to more than"):
        ureport.parse(gzip.compress(b" " * (ureport.MAX_BYTES + 10)))


def test_the_signature_skips_the_machinery_and_ignores_what_changes_between_builds():
    abort_path = ["__pthread_kill_implementation", "__GI_raise", "__GI_abort", "__assert_fail_base", "__assert_fail",
                  "parse_header", "read_file", "main", "__libc_start_call_main"]
    assert buckets.normalized(abort_path) == ["parse_header", "read_file", "main", "__libc_start_call_main"]
    same, _ = buckets.signature("/usr/bin/tool", abort_path)
    assert buckets.signature("/opt/other/tool", abort_path[1:])[0] == same
    assert buckets.signature("/usr/bin/tool", ["read_file", "main"])[0] != same
    assert buckets.normalized(["abort"]) == ["abort"], "a crash that is all machinery still has a signature"


def test_the_crash_thread_is_read_from_gdbs_output():
    backtrace = ("Files given to gdb...\n\nThread 1 (LWP 7):\n#0  0x1 in crash_in_library (depth=0, label=0x2 \"x\")"
                 " at libcrash.c:13\n        target = 0x0\n#1  inlined_helper (x=1) at a.c:3\nNo locals.\n#2  0x3 in main () at "
                 "crasher.c:100\nFrom To Syms Read\n\nThread 2 (LWP 8):\n#0  0x4 in idle () at a.c:1\n")
    assert buckets.gdb_crash_thread_functions(backtrace) == ["crash_in_library", "inlined_helper", "main"]
    assert buckets.gdb_crash_thread_functions("\nThread 1 (LWP 9):\n#0  0x1 in __GI_raise () from /lib64/libc.so.6\n"
                                              "#1  0x2 in main () at a.c:4\n") == ["main"], "located frames only"
    assert buckets.gdb_crash_thread(backtrace).endswith("#2  0x3 in main () at crasher.c:100\n")


def test_eu_stack_output_becomes_ureport_frames():
    text = ("PID 25834 - core\nTID 25834:\n#0  0x00007fa3658ea145 - /usr/lib64/libcrash.so.1\n"
            "    [9fc7b115391028f3bec04961a252386648d34102]@0x7fa3658e9000+0x1145\n"
            "#1  0x0000562576b604f0 - /usr/bin/crasher\n    [8930f1c4d4cc9a0808413cdbe6d1ad21053b2f17]@0x562576b5f000+0x14ef\n"
            "#2  0x00007f0000000000 - \nTID 25835:\n#0  0x00007fa3658ea145 - /usr/lib64/libcrash.so.1\n"
            "    [9fc7b115391028f3bec04961a252386648d34102]@0x7fa3658e9000+0x1144\n")
    threads = parse_stack(text)
    assert threads[0] == [
        {"file_name": "/usr/lib64/libcrash.so.1", "build_id": "9fc7b115391028f3bec04961a252386648d34102",
         "build_id_offset": 0x1145},
        {"file_name": "/usr/bin/crasher", "build_id": "8930f1c4d4cc9a0808413cdbe6d1ad21053b2f17",
         "build_id_offset": 0x14ef}]
    assert [frame["build_id_offset"] for frame in threads[1]] == [0x1144]


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """A tiny shared library with an inlined function and its DWARF, built by gcc."""
    directory = tmp_path_factory.mktemp("lib")
    (directory / "lib.c").write_text(
        "static inline __attribute__((always_inline)) int inner(int *p) { return *p * 3 + p[1]; }\n"
        "int outer(int *p) {\n  int x = inner(p);\n  return x + 1;\n}\n")
    subprocess.run(["gcc", "-g", "-O2", "-fPIC", "-shared", "-o", str(directory / "lib.so"), str(directory / "lib.c")],
                   check=True)
    return directory / "lib.so"


def test_eu_addr2line_gives_the_function_its_line_and_the_inlined_callers(library):
    first, end = symbolize.load_layout(library)
    symbols = subprocess.run(["nm", str(library)], capture_output=True, text=True, check=True).stdout
    outer = int(next(line.split()[0] for line in symbols.splitlines() if line.endswith(" outer")), 16)
    found = symbolize.addr2line(library, list(range(outer, outer + 16)))
    assert [("inner", 1), ("outer", 3)] in [[(location.function, location.line) for location in locations]
                                            for locations in found]
    frame = symbolize.Symbolized("ab" * 20, end + 0x1000, "/usr/lib64/lib.so")
    symbolize.symbolize_module([frame], library)
    assert frame.problem.startswith(f"offset {hex(end + 0x1000)} is past the end of lib.so")
    assert first == 0


def test_a_build_id_link_out_of_the_package_tree_is_not_followed(tmp_path):
    class Entry:
        root = tmp_path / "root"

    link_dir = Entry.root / "usr/lib/debug/.build-id/ab"
    link_dir.mkdir(parents=True)
    (tmp_path / "outside.debug").write_text("x")
    (link_dir / "cdef.debug").symlink_to(tmp_path / "outside.debug")
    assert symbolize.debug_file(Entry, "abcdef") is None
    (tmp_path / "root/usr/lib/debug/real.debug").write_text("x")
    (link_dir / "cdef.debug").unlink()
    (link_dir / "cdef.debug").symlink_to("../../real.debug")
    assert symbolize.debug_file(Entry, "abcdef") == (tmp_path / "root/usr/lib/debug/real.debug").resolve()
    assert shutil.which("eu-addr2line")


def test_buckets_count_and_old_reports_are_forgotten_but_counted(tmp_path):
    with buckets.BucketDB(tmp_path / "problems.db") as db:
        assert db.record("a" * 40, "crasher\nmain", "/usr/bin/crasher", "#0 main", "report", when=1000.0) is None
        assert db.record("a" * 40, "crasher\nmain", "/usr/bin/crasher", "#0 main ()", "retrace", task_id="123",
                         when=2000.0)["count"] == 1
        bucket = db.bucket("a" * 40)
        assert (bucket["count"], bucket["full_task"], bucket["backtrace"], bucket["first_seen"]) == (
            2, "123", "#0 main ()", 1000.0)
        assert db.forget_before(1500.0) == 1
        assert [row["kind"] for row in db.occurrences("a" * 40)] == ["retrace"]
        assert db.buckets()[0]["count"] == 2 and db.totals() == {"reports": 0, "buckets": 1}
        db.remember_symbols({("ab" * 20, 16): [("main", "/src/a.c", 4)]})
        assert db.symbols({("ab" * 20, 16), ("ab" * 20, 17)}) == {("ab" * 20, 16): [("main", "/src/a.c", 4)]}


def test_a_buckets_attachments_are_kept_once_each_and_go_with_it(tmp_path):
    with buckets.BucketDB(tmp_path / "problems.db") as db:
        db.record("a" * 40, "crasher\nmain", "/usr/bin/crasher", "#0 main", "report", when=1000.0)
        assert db.attach("a" * 40, "RHBZ", "123", when=1001.0)
        assert not db.attach("a" * 40, "RHBZ", "123", when=1002.0), "the same bug twice is kept once"
        assert db.attach("a" * 40, "email", "x@example.com", who="alice", when=1003.0)
        with pytest.raises(KeyError):
            db.attach("b" * 40, "RHBZ", "1")
        assert [item["value"] for item in db.attachments("a" * 40)] == ["123", "x@example.com"]
        assert db.attachments("a" * 40, ("RHBZ", "url")) == [
            {"type": "RHBZ", "value": "123", "who": None, "time": 1001.0}]
        db.record("c" * 40, "crasher\nother", "/usr/bin/crasher", "#0 other", "report", when=1000.0)
        assert [row["bthash"] for row in db.buckets(has_bug=True)] == ["a" * 40]
        assert [row["bthash"] for row in db.buckets(has_bug=False)] == ["c" * 40]
        assert {row["bthash"]: row["bugs"] for row in db.buckets()} == {"a" * 40: 1, "c" * 40: 0}
        assert db.forget_buckets_before(2000.0) == 2
        assert db.attachments("a" * 40) == []


def test_triage_views_filter_by_release_component_and_arch_and_sort_by_the_window_or_its_growth(tmp_path):
    day = 86400.0
    now = 100 * day
    with buckets.BucketDB(tmp_path / "problems.db") as db:
        # "old": many reports long ago, one this week; "new": none before, three this week; "arm": another arch.
        for when in [now - 30 * day] * 5 + [now - day]:
            db.record("a" * 40, "app\nold", "app", "#0 old", "report", release="fedora-41-x86_64", arch="x86_64",
                      when=when, component="app")
        for when in (now - 10 * day, now - 2 * day, now - day, now - 3600):
            db.record("b" * 40, "app\nnew", "app", "#0 new", "report", release="fedora-41-x86_64", arch="x86_64",
                      when=when, component="app")
        db.record("c" * 40, "lib\narm", "lib", "#0 arm", "report", release="fedora-42-aarch64", arch="aarch64",
                  when=now - day, component="lib")

        def shown(**view):
            return [row["bthash"][0] for row in db.buckets(view=buckets.View(now=now, **view))]

        assert shown() == ["a", "b", "c"], "by all reports"
        assert shown(sort="window") == ["b", "a", "c"], "top crashers of the week"
        assert shown(sort="growth", days=7)[0] == "b", "3 this week against 1 the week before"
        assert shown(release="fedora-41-x86_64") == ["a", "b"] and shown(arch="aarch64") == ["c"]
        assert shown(component="lib") == ["c"] and shown(component="nothing") == []
        (new,) = [row for row in db.buckets(view=buckets.View(now=now)) if row["bthash"][0] == "b"]
        assert (new["recent"], new["before"]) == (3, 1)
