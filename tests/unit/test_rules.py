"""Signature rules as configuration: the shipped file is today's rules, a team's edits change the buckets, and
a rebucket moves what was stored."""

from pathlib import Path

import pytest

from retrace_server.errors import ConfigError
from retrace_server.reports import buckets, rules

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "signature-rules.conf"


def crash_thread(*frames):
    """A stored crash thread in gdb's format: ``(function, line or None, inlined)`` innermost first."""
    lines = ["Thread 1 (crashed):"]
    for number, (function, line, inlined) in enumerate(frames):
        address = "" if inlined else f"0x{0x401000 + number:016x} in "
        where = f" at app.c:{line}" if line else ""
        lines.append(f"#{number:<2} {address}{function} (){where}{' [inlined]' if inlined else ''}")
    return "\n".join(lines) + "\n"


def test_the_shipped_file_is_the_built_in_rules():
    assert rules.load(SHIPPED) == rules.Rules()
    assert rules.load(SHIPPED.with_name("no-such-file.conf")) == rules.Rules()


def test_skip_patterns_and_frames_that_count_only_with_their_caller(tmp_path):
    path = tmp_path / "rules.conf"
    path.write_text("[core]\nskip = raise abort g_assert*\nwith_caller = xmalloc xstrdup\nframes = 2\n")
    team = rules.load(path)
    names = ["raise", "g_assertion_message_expr", "xmalloc", "parse", "main", "start"]
    assert team.normalized(names) == ["xmalloc", "parse", "main"]
    assert buckets.signature("/usr/bin/app", names, team) != buckets.signature("/usr/bin/app", names)


@pytest.mark.parametrize("text, sentence", [
    ("[core]\nframes = 0\n", "frames must be a whole number from 1 to 32, not '0'"),
    ("[core]\nskipp = raise\n", r"\[core\] has no key skipp"),
    ("[core]\nskip = raise $(reboot)\n", "skip must list at most 2000 function names or patterns, not '\\$\\(reboot\\)'"),
    ("[other]\n", r"has a section \[other\]; a rules file has \[core\], \[python\], \[kerneloops\]"),
])
def test_a_bad_rules_file_is_named_with_what_is_wrong(tmp_path, text, sentence):
    path = tmp_path / "rules.conf"
    path.write_text(text)
    with pytest.raises(ConfigError, match=sentence):
        rules.load(path)


def test_rebucketing_under_the_same_rules_changes_nothing_even_for_inlined_report_frames(tmp_path):
    thread = crash_thread(("inner", 3, True), ("outer", 9, False), ("main", 20, False))
    functions = buckets.located_functions([("inner", True), ("outer", True), ("main", True)])
    bthash, text = buckets.signature("/usr/bin/app", functions)
    with buckets.BucketDB(tmp_path / "problems.db") as db:
        db.record(bthash, text, "app", thread, "report", when=1000.0)
        assert db.rebucket(rules.Rules()) == (1, 1)
        assert db.bucket(bthash)["count"] == 1


def test_rebucketing_under_new_rules_merges_buckets_with_their_counts_reports_and_bugs(tmp_path):
    first = crash_thread(("crash_here", 5, False), ("from_a", 10, False), ("main", 20, False))
    second = crash_thread(("crash_here", 5, False), ("from_b", 14, False), ("main", 20, False))
    with buckets.BucketDB(tmp_path / "problems.db") as db:
        hashes = []
        for thread, when, kind in ((first, 1000.0, "report"), (second, 2000.0, "retrace")):
            functions = buckets.gdb_crash_thread_functions("\n" + thread)
            bthash, text = buckets.signature("/usr/bin/app", functions)
            db.record(bthash, text, "app", thread, kind, task_id="42" if kind == "retrace" else None, when=when)
            hashes.append(bthash)
        db.attach(hashes[0], "RHBZ", "777")
        assert len(set(hashes)) == 2
        assert db.rebucket(rules.Rules(frames=1)) == (2, 1)
        (merged,) = db.buckets()
        assert merged["count"] == 2 and merged["full_task"] == "42" and merged["signature"] == "app\ncrash_here"
        assert (merged["first_seen"], merged["last_seen"]) == (1000.0, 2000.0)
        assert [item["value"] for item in db.attachments(merged["bthash"])] == ["777"]
        assert len(db.occurrences(merged["bthash"])) == 2
        assert db.rebucket(rules.Rules()) == (1, 1), "one stored crash thread cannot be split back into two"
