"""Signature rules as configuration: the shipped file is today's rules, a team's edits change the buckets, and
a rebucket moves what was stored."""

from pathlib import Path

import pytest

from retrace_server.errors import ConfigError
from retrace_server.reports import buckets, rules, stacks
from retrace_server.reports.stacks import Stack

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
    assert stacks.signature("/usr/bin/app", names, team) != stacks.signature("/usr/bin/app", names)


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


def same_rules(rules_for_core):
    """``rebucket``'s argument: ``rules_for_core`` for cores, the shipped rules for the other kinds."""
    return lambda kind: rules_for_core if kind == "core" else rules.load("/nonexistent", kind)


def test_rebucketing_under_the_same_rules_changes_nothing_even_for_inlined_report_frames(tmp_path):
    thread = crash_thread(("inner", 3, True), ("outer", 9, False), ("main", 20, False))
    functions = buckets.located_functions([("inner", True), ("outer", True), ("main", True)])
    with buckets.BucketDB(tmp_path / "problems.db") as db:
        bthash = db.record(Stack.core("/usr/bin/app", functions), rules.Rules(), thread, "report", when=1000.0).bthash
        assert db.rebucket(same_rules(rules.Rules())) == (1, 1)
        assert db.bucket(bthash)["count"] == 1


def test_rebucketing_under_new_rules_merges_buckets_and_splits_them_back_with_their_counts_reports_and_bugs(tmp_path):
    first = crash_thread(("crash_here", 5, False), ("from_a", 10, False), ("main", 20, False))
    second = crash_thread(("crash_here", 5, False), ("from_b", 14, False), ("main", 20, False))
    with buckets.BucketDB(tmp_path / "problems.db") as db:
        hashes = []
        for thread, when, kind in ((first, 1000.0, "report"), (second, 2000.0, "retrace"), (second, 3000.0, "report")):
            functions = buckets.gdb_crash_thread_functions("\n" + thread)
            hashes.append(db.record(Stack.core("/usr/bin/app", functions), rules.Rules(), thread, kind,
                                    task_id="42" if kind == "retrace" else None, when=when,
                                    release="fedora-41-x86_64", arch="x86_64", version="1.0-1").bthash)
        db.attach(hashes[0], "RHBZ", "777")
        assert len(set(hashes)) == 2
        assert db.rebucket(same_rules(rules.Rules(frames=1))) == (2, 1)
        (merged,) = db.buckets(view=buckets.View(now=3000.0))
        assert merged["count"] == 3 and merged["full_task"] == "42" and merged["signature"] == "app\ncrash_here"
        assert (merged["first_seen"], merged["last_seen"], merged["recent"]) == (1000.0, 3000.0, 3)
        assert [item["value"] for item in db.attachments(merged["bthash"])] == ["777"] and merged["bugs"] == 1
        assert len(db.occurrences(merged["bthash"])) == 3
        assert db.rebucket(same_rules(rules.Rules())) == (1, 2), "each report's stack is kept: the merge undone"
        split = {row["bthash"]: row for row in db.buckets(view=buckets.View(now=3000.0))}
        assert {bthash: row["count"] for bthash, row in split.items()} == {hashes[0]: 1, hashes[1]: 2}
        assert split[hashes[1]]["full_task"] == "42" and split[hashes[0]]["full_task"] is None
        assert (split[hashes[1]]["first_seen"], split[hashes[1]]["recent"]) == (2000.0, 2)
        assert [len(db.occurrences(bthash)) for bthash in hashes[:2]] == [1, 2]
        assert all(split[bthash]["bugs"] == 1 for bthash in hashes[:2]), "the bug link follows both parts"
        assert split[hashes[0]]["versions"] == "1.0-1"


def test_python_and_oops_buckets_follow_their_own_sections(tmp_path):
    oops = Stack("kerneloops", "kerneloops", (("sysrq_handle_crash", None), ("__handle_sysrq.cold", None),
                                               ("write_sysrq_trigger", None)))
    with buckets.BucketDB(tmp_path / "problems.db") as db:
        before = db.record(oops, rules.load("/nonexistent", "kerneloops"), "#0 sysrq_handle_crash ()", "report").bthash
        assert db.bucket(before)["signature"] == "kerneloops\nsysrq_handle_crash\n__handle_sysrq\nwrite_sysrq_trigger"
        one_frame = {"kerneloops": rules.Rules(skip=(), frames=1)}
        assert db.rebucket(lambda kind: one_frame.get(kind) or rules.load("/nonexistent", kind)) == (1, 1)
        (moved,) = db.buckets()
        assert moved["bthash"] != before and moved["signature"] == "kerneloops\nsysrq_handle_crash"
