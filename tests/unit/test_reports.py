"""Coreless reports: the uReport's checks, the signature's normalization, eu-stack and eu-addr2line output read."""

from __future__ import annotations

import gzip
import json
import shutil
import sqlite3
import subprocess

import pytest

from retrace_server.analysis import symbolize
from retrace_server.client.unwind import parse_stack
from retrace_server.errors import UploadTooLarge
from retrace_server.reports import buckets, rules, stacks, ureport
from retrace_server.reports.stacks import Stack

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
    assert stacks.normalized(abort_path) == ["parse_header", "read_file", "main", "__libc_start_call_main"]
    same, _ = stacks.signature("/usr/bin/tool", abort_path)
    assert stacks.signature("/opt/other/tool", abort_path[1:])[0] == same
    assert stacks.signature("/usr/bin/tool", ["read_file", "main"])[0] != same
    assert stacks.normalized(["abort"]) == ["abort"], "a crash that is all machinery still has a signature"


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


@pytest.mark.parametrize("program", ["addr2line", "eu-addr2line"])
def test_addr2line_gives_the_function_its_line_and_the_inlined_callers(library, program):
    """binutils' (the one used) and elfutils' (without binutils) print the same form."""
    assert symbolize.symbolizer() == "addr2line"
    first, end = symbolize.load_layout(library)
    symbols = subprocess.run(["nm", str(library)], capture_output=True, text=True, check=True).stdout
    outer = int(next(line.split()[0] for line in symbols.splitlines() if line.endswith(" outer")), 16)
    found = symbolize.addr2line(library, list(range(outer, outer + 16)), program)
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


def stack(*functions, executable="/usr/bin/crasher"):
    return Stack.core(executable, list(functions))


RULES = rules.Rules()


def test_buckets_count_and_old_reports_are_forgotten_but_counted(tmp_path):
    with buckets.BucketDB(tmp_path / "problems.db") as db:
        first = db.record(stack("main"), RULES, "#0 main", "report", when=1000.0)
        assert first.before is None and first.signature == "crasher\nmain"
        assert db.record(stack("main"), RULES, "#0 main ()", "retrace", task_id="123", when=2000.0).before["count"] == 1
        bucket = db.bucket(first.bthash)
        assert (bucket["count"], bucket["full_task"], bucket["backtrace"], bucket["first_seen"]) == (
            2, "123", "#0 main ()", 1000.0)
        assert db.forget_before(1500.0) == 1
        assert [row["kind"] for row in db.occurrences(first.bthash)] == ["retrace"]
        assert db.buckets()[0]["count"] == 2 and db.totals() == {"reports": 1, "buckets": 1}, "reports ever: a counter"
        db.remember_symbols({("ab" * 20, 16): [("main", "/src/a.c", 4)]})
        assert db.symbols({("ab" * 20, 16), ("ab" * 20, 17)}) == {("ab" * 20, 16): [("main", "/src/a.c", 4)]}


def test_a_buckets_attachments_are_kept_once_each_and_go_with_it(tmp_path):
    with buckets.BucketDB(tmp_path / "problems.db") as db:
        bthash = db.record(stack("main"), RULES, "#0 main", "report", when=1000.0).bthash
        assert db.attach(bthash, "RHBZ", "123", when=1001.0)
        assert not db.attach(bthash, "RHBZ", "123", when=1002.0), "the same bug twice is kept once"
        assert db.attach(bthash, "email", "x@example.com", who="alice", when=1003.0)
        with pytest.raises(KeyError):
            db.attach("b" * 40, "RHBZ", "1")
        assert [item["value"] for item in db.attachments(bthash)] == ["123", "x@example.com"]
        assert db.attachments(bthash, ("RHBZ", "url")) == [
            {"type": "RHBZ", "value": "123", "who": None, "time": 1001.0}]
        other = db.record(stack("other"), RULES, "#0 other", "report", when=1000.0).bthash
        assert [row["bthash"] for row in db.buckets(has_bug=True)] == [bthash]
        assert [row["bthash"] for row in db.buckets(has_bug=False)] == [other]
        assert {row["bthash"]: row["bugs"] for row in db.buckets()} == {bthash: 1, other: 0}
        assert db.forget_buckets_before(2000.0) == 2
        assert db.attachments(bthash) == []


def test_triage_views_filter_by_release_component_arch_and_version_and_sort_by_the_window_or_its_growth(tmp_path):
    day = 86400.0
    now = 100 * day
    with buckets.BucketDB(tmp_path / "problems.db") as db:
        # "old": many reports long ago, one this week; "new": none before, three this week; "arm": another arch.
        for when in [now - 30 * day] * 5 + [now - day]:
            old = db.record(stack("old", executable="app"), RULES, "#0 old", "report", release="fedora-41-x86_64",
                            arch="x86_64", when=when, component="app", version="1.0-1.fc41").bthash
        for when, version in ((now - 10 * day, "1.0-1.fc41"), (now - 2 * day, "1.2-1.fc41"), (now - day, "1.2-1.fc41"),
                              (now - 3600, "1.10-1.fc41")):
            new = db.record(stack("new", executable="app"), RULES, "#0 new", "report", release="fedora-41-x86_64",
                            arch="x86_64", when=when, component="app", version=version).bthash
        arm = db.record(stack("arm", executable="lib"), RULES, "#0 arm", "report", release="fedora-42-aarch64",
                        arch="aarch64", when=now - day, component="lib").bthash
        names = {old: "old", new: "new", arm: "arm"}

        def shown(**view):
            return [names[row["bthash"]] for row in db.buckets(view=buckets.View(now=now, **view))]

        assert shown() == ["old", "new", "arm"], "by all reports"
        assert shown(sort="window") == ["new", "old", "arm"], "top crashers of the week"
        assert shown(sort="growth", days=7)[0] == "new", "3 this week against 1 the week before"
        assert shown(release="fedora-41-x86_64") == ["old", "new"] and shown(arch="aarch64") == ["arm"]
        assert shown(component="lib") == ["arm"] and shown(component="nothing") == []
        assert shown(version_from="1.2-1.fc41") == ["new"], "1.10 is newer than 1.2, and 1.0 older"
        assert shown(version_from="1.1", version_to="1.3") == ["new"] and shown(version_to="1.0-1.fc41") == [
            "old", "new"]
        (listed,) = [row for row in db.buckets(view=buckets.View(now=now)) if row["bthash"] == new]
        assert (listed["recent"], listed["before"]) == (3, 1)
        assert listed["versions"] == "1.0-1.fc41,1.2-1.fc41,1.10-1.fc41" and listed["releases"] == "fedora-41-x86_64"
        assert db.per_day(new, days=3, now=now) == [("1970-04-09", 1), ("1970-04-10", 2), ("1970-04-11", 0)]


def test_a_database_of_the_first_layout_is_upgraded_with_its_buckets_days_and_bugs(tmp_path):
    """problems.db as the previous release wrote it (buckets without stacks or aggregates) keeps working."""
    path = tmp_path / "problems.db"
    thread = "Thread 1 (crashed):\n#0  0x0000000000401000 in crash_here () at app.c:5\n#1  main () at app.c:9\n"
    bthash, text = stacks.signature("app", ["crash_here", "main"])
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE buckets (bthash TEXT PRIMARY KEY, executable TEXT NOT NULL, signature TEXT NOT NULL, "
        "backtrace TEXT NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL, count INTEGER NOT NULL, "
        "full_task TEXT, component TEXT, problem_type TEXT NOT NULL DEFAULT 'core');"
        "CREATE TABLE occurrences (id INTEGER PRIMARY KEY, bthash TEXT NOT NULL, time REAL NOT NULL, kind TEXT NOT "
        "NULL, package TEXT, version TEXT, release TEXT, arch TEXT, task_id TEXT);"
        "CREATE TABLE attachments (id INTEGER PRIMARY KEY, bthash TEXT NOT NULL, type TEXT NOT NULL, value TEXT NOT "
        "NULL, who TEXT, time REAL NOT NULL, UNIQUE (bthash, type, value));")
    old.execute("INSERT INTO buckets VALUES (?, 'app', ?, ?, 86400, 172800, 5, NULL, 'app', 'core')",
                (bthash, text, thread))
    old.executemany("INSERT INTO occurrences (bthash, time, kind, version, release, arch) VALUES "
                    "(?, ?, 'report', '1.0-1', 'fedora-41-x86_64', 'x86_64')", [(bthash, 86400.0), (bthash, 172800.0)])
    old.execute("INSERT INTO attachments (bthash, type, value, time) VALUES (?, 'RHBZ', '12', 1)", (bthash,))
    old.commit()
    old.close()
    with buckets.BucketDB(path) as db:
        (row,) = db.buckets(view=buckets.View(now=172800.0, days=2))
        assert (row["count"], row["recent"], row["bugs"], row["versions"]) == (5, 2, 1, "1.0-1")
        again = db.record(stack("crash_here", "main", executable="app"), RULES, thread, "report", when=172801.0)
        assert again.bthash == bthash and db.bucket(bthash)["count"] == 6
    with buckets.BucketDB(path) as db:  # opened again: upgraded once
        assert db.bucket(bthash)["count"] == 6


def test_a_report_symbolized_anew_moves_to_its_bucket_and_the_old_one_goes_when_empty(tmp_path):
    with buckets.BucketDB(tmp_path / "problems.db") as db:
        partial = db.record(stack("??", "main"), RULES, "#0 ?? ()", "report", when=1000.0, release="fedora-41-x86_64",
                            version="1.0-1", component="crasher")
        db.keep_pending(partial.occurrence, "fedora-41-x86_64", {"frames": []}, "digest-1")
        assert [row[0] for row in db.pending("fedora-41-x86_64")] == [partial.occurrence]
        assert db.move(partial.occurrence, stack("??", "main"), RULES, "#0 ?? ()") is None, "nothing new: stays"
        moved = db.move(partial.occurrence, stack("crash_here", "main"), RULES, "#0 crash_here () at a.c:3")
        assert moved is not None and moved.bthash != partial.bthash and db.bucket(partial.bthash) is None
        bucket = db.bucket(moved.bthash)
        assert (bucket["count"], bucket["first_seen"], bucket["versions"], bucket["component"]) == (
            1, 1000.0, ["1.0-1"], "crasher")
        assert [row[0] for row in db.pending()] == [moved.occurrence], "still kept, as itself"
        db.tried_pending(moved.occurrence, "digest-2")
        assert db.pending()[0][3] == "digest-2"
        db.tried_pending(moved.occurrence, None)
        assert db.pending() == []


def test_a_line_binutils_marks_with_a_discriminator_is_still_a_line(tmp_path):
    fake = tmp_path / "addr2line"
    fake.write_text("#!/bin/sh\necho '0x0000000000001149: crash_in_library at /src/lib.c:11975 (discriminator 1)'\n"
                    "echo ' (inlined by) caller at /src/main.c:7'\n")
    fake.chmod(0o755)
    [found] = symbolize.addr2line(tmp_path / "lib.so", [0x1149], str(fake))
    assert found == [symbolize.Location("crash_in_library", "/src/lib.c", 11975), symbolize.Location("caller", "/src/main.c", 7)]
