"""The manager's handlers through the WSGI app (webob's Request.blank; Apache's REMOTE_USER set by hand)."""

import pytest
from webob import Request

from retrace_server.config import Config
from retrace_server.environments.session import Session
from retrace_server.tasks import casedata, notify
from retrace_server.tasks.task import MD5_NAME, IncomingTask, TaskStatus, TaskType
from retrace_server.wsgi.app import make_app
from tests.integration.manager_client import page_field, page_md5, page_status, page_task_id


@pytest.fixture
def config(tmp_path):
    (tmp_path / "spool").mkdir()
    return Config(SaveDir=tmp_path / "spool", RepoDir=tmp_path, LogDir=tmp_path, MinStorageLeft=0,
                  AllowTaskManager=True, ImportDirs=str(tmp_path / "imports"))


def call(config, path, method="GET", user="engineer", headers=None, **kwargs):
    environ = {"REMOTE_USER": user} if user else {}
    request = Request.blank(path, method=method, base_url="https://retrace.example.com", environ=environ,
                            headers=headers or {}, **kwargs)
    return request.get_response(make_app(config))


def finished_task(config, reason=None):
    with IncomingTask(config.SaveDir) as incoming:
        task, _ = incoming.commit(TaskType.VMCORE_INTERACTIVE, id_length=config.TaskIdLength, password_length=32)
    if reason:
        task.fail(reason)
    else:
        task.set_status(TaskStatus.SUCCESS)
    return task


def test_the_task_page_has_the_lines_upstreams_cli_reads(config):
    task = finished_task(config, reason="cannot tell which kernel wrote this vmcore <it is damaged>")
    page = call(config, f"/manager/{task.task_id}").text
    assert page_task_id(page) == task.task_id
    assert page_status(page) == "Retrace job failed"
    assert "cannot tell which kernel wrote this vmcore &lt;it is damaged&gt;" in page
    assert page_md5(page) is None
    assert [page_field(page, label) for label in ("Update case no.", "Update e-mail(s)", "Update bugzilla no.")] == [
        None, None, None]
    (task.path / MD5_NAME).write_text("0123456789abcdef0123456789abcdef  vmcore\n")
    casedata.set_caseno(task, 17)
    casedata.set_notify(task, ["a@example.com", "b@example.com"])
    page = call(config, f"/manager/{task.task_id}").text
    assert page_md5(page) == "0123456789abcdef0123456789abcdef"
    assert page_field(page, "Update case no.") == "17"
    assert page_field(page, "Update e-mail(s)") == "a@example.com, b@example.com"


def test_changes_answer_see_other_to_the_task_page(config):
    task = finished_task(config)
    answer = call(config, f"/manager/{task.task_id}/caseno", "POST", POST={"caseno": "12"})
    assert (answer.status_int, answer.location) == (303, f"https://retrace.example.com/manager/{task.task_id}")
    assert casedata.CaseData.read(task).caseno == 12


def test_without_remote_user_or_from_another_site_nothing_happens(config):
    task = finished_task(config)
    assert call(config, "/manager", user=None).status_int == 403
    forged = call(config, f"/manager/{task.task_id}/caseno", "POST", POST={"caseno": "12"},
                  headers={"Origin": "https://evil.example.com"})
    assert forged.status_int == 403 and casedata.CaseData.read(task).caseno is None
    assert call(config, "/manager", headers={"Origin": "https://evil.example.com"}).status_int == 200  # reading


def test_restart_and_delete_wait_for_the_task_to_end(config):
    task = finished_task(config)
    task.set_status(TaskStatus.BACKTRACE)
    assert call(config, f"/manager/{task.task_id}/restart", "POST").text == (
        "The task is still running; restart it after it has ended")
    assert call(config, f"/manager/{task.task_id}/delete", "POST").status_int == 409


def test_the_end_mail_says_what_happened_and_where_to_look(config):
    task = finished_task(config, reason="no kernel debuginfo")
    casedata.set_notify(task, ["eng@example.com"])
    casedata.mark_managed(task, "https://retrace.example.com/manager/1")
    assert notify.compose(config, task, False, "no kernel debuginfo") is None  # EmailNotify = 0
    mail = notify.compose(Config(EmailNotify=True, EmailNotifyFrom="r@example.com"), task, False, "no kernel debuginfo")
    assert mail["Subject"] == f"Retrace Server task #{task.task_id} failed"
    assert (mail["From"], mail["To"]) == ("r@example.com", "eng@example.com")
    body = mail.get_content()
    assert "Why it failed: no kernel debuginfo" in body and "Log: https://retrace.example.com/manager/1/log" in body


def test_an_interactive_tasks_page_shows_the_command_that_reopens_it(config):
    task = finished_task(config)
    page = call(config, f"/manager/{task.task_id}").text
    assert "Its debugger session is not ready yet" in page
    Session("crash", ("crash", "vmlinux", "vmcore"), (), ()).save(task)
    page = call(config, f"/manager/{task.task_id}").text
    assert f"<code>retrace-server-interact {task.task_id} crash</code>" in page
    assert f"<code>retrace-server-interact {task.task_id} shell</code>" in page


def test_a_batch_tasks_page_offers_no_session(config):
    with IncomingTask(config.SaveDir) as incoming:
        task, _ = incoming.commit(TaskType.COREDUMP, id_length=config.TaskIdLength, password_length=32)
    task.set_status(TaskStatus.SUCCESS)
    assert 'id="interactive"' not in call(config, f"/manager/{task.task_id}").text
