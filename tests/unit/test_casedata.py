"""Case data an engineer types: what is accepted, the sentence for what is not, and how it reads back."""

import os
import time

import pytest

from retrace_server.config import Config
from retrace_server.errors import BadRequest
from retrace_server.tasks import casedata
from retrace_server.tasks.task import IncomingTask, TaskType


@pytest.fixture
def task(tmp_path):
    with IncomingTask(tmp_path) as incoming:
        made, _ = incoming.commit(TaskType.VMCORE_INTERACTIVE, id_length=9, password_length=32)
    return made


def test_numbers_and_addresses_are_parsed_as_upstreams_forms_send_them():
    assert casedata.parse_caseno(" 01234 ") == 1234
    assert casedata.parse_bugzillano("1, 2;3 2") == [1, 2, 3]
    assert casedata.parse_emails("a@example.com; b.c+d@mail.example.org, a@example.com") == [
        "a@example.com", "b.c+d@mail.example.org"]


@pytest.mark.parametrize("parse, text, sentence", [
    (casedata.parse_caseno, "", "The case number is empty; give the support case's number (digits only)"),
    (casedata.parse_caseno, "1" * 13, "'1111111111111' is not a case number: use digits only (at most 12)"),
    (casedata.parse_bugzillano, "12, x", "'x' is not a bugzilla number: use digits only"),
    (casedata.parse_bugzillano, ",", "The bugzilla number is empty; give one or more separated by commas"),
    (casedata.parse_emails, "root@localhost\nBcc: x@y.z", "'Bcc:' is not an e-mail address this server sends to "
                                                           "(name@domain)"),
    (casedata.parse_emails, ", ".join(f"u{n}@example.com" for n in range(21)),
     "At most 20 e-mail addresses can be kept on a task"),
    (casedata.parse_notes, "x" * (64 * 1024 + 1), "The notes are too long: at most 64 KiB"),
    (casedata.parse_keep_days, "0", "Keep the task for 1 to 365 days, not '0'"),
])
def test_what_cannot_be_kept_is_refused_with_a_sentence(parse, text, sentence):
    with pytest.raises(BadRequest) as refused:
        parse(text)
    assert str(refused.value) == sentence


def test_case_data_reads_back_and_a_hand_edited_file_never_breaks_it(task):
    casedata.set_caseno(task, 42)
    casedata.set_bugzillano(task, [1, 2])
    casedata.set_notify(task, ["a@example.com"])
    casedata.set_notes(task, "customer says <it> happens on boot")
    casedata.mark_managed(task, "https://retrace.example.com/manager/123")
    data = casedata.CaseData.read(task)
    assert (data.caseno, data.bugzillano, data.notify, data.managed) == (42, [1, 2], ["a@example.com"], True)
    assert data.notes == "customer says <it> happens on boot" and data.url.endswith("/manager/123")
    (task.path / casedata.CASENO).write_text("not a number\n")
    (task.path / casedata.NOTIFY).write_text("a@example.com\n<script>\n")
    data = casedata.CaseData.read(task)
    assert (data.caseno, data.notify) == (None, ["a@example.com"])


def test_keeping_a_task_moves_its_expiry_and_never_shortens_an_earlier_promise(task):
    config = Config(DeleteTaskAfter=120, DeleteFailedTaskAfter=24)
    now = time.time()
    os.utime(task.path, (now, now))
    when, why = casedata.expiry(task, config, status_failed=False)
    assert abs(when - (now + 120 * 3600)) < 2 and why == "120 h after its last change (DeleteTaskAfter)"
    assert casedata.expiry(task, config, status_failed=True)[1] == "24 h after its last change (DeleteFailedTaskAfter)"
    until = casedata.keep_for(task, 30, now=now)
    assert casedata.expiry(task, config, status_failed=False) == (until, "kept for its case")
    assert casedata.keep_for(task, 1, now=now) == until
    assert casedata.kept(task, now + 29 * 86400) and not casedata.kept(task, now + 31 * 86400)
    assert casedata.expiry(task, Config(DeleteTaskAfter=0), False) == (
        None, "tasks are not deleted by age on this server")


def test_the_page_names_the_rule_cleanup_will_apply_first(task):
    now = time.time()
    os.utime(task.path, (now, now))
    archiving = Config(DeleteTaskAfter=120, DeleteFailedTaskAfter=72, ArchiveTaskAfter=48)
    when, why = casedata.expiry(task, archiving, status_failed=False)
    assert abs(when - (now + 48 * 3600)) < 2
    assert why == "archived to DropDir and deleted 48 h after its last change (ArchiveTaskAfter)"
    assert [(rule.action, rule.cited) for rule in casedata.age_rules(archiving, status_failed=True)] == [
        ("archive", "ArchiveTaskAfter = 48"), ("delete", "DeleteFailedTaskAfter"), ("delete", "DeleteTaskAfter")]
    assert [rule.action for rule in casedata.age_rules(Config(ArchiveTaskAfter=48), status_failed=True)] == [
        "delete", "delete"], "archived only when that comes before the failed task's deletion, as cleanup does"
