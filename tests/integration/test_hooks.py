"""Administrators' hook scripts at upstream's points, run by the real worker, cleanup and the API's delete."""

import shutil
import tempfile
import time
from pathlib import Path

import pytest

from retrace_server.tasks.task import TaskStatus
from testkit.helpers import outcome, problem_members, submit, tar_bytes, wait_final, xz
from tests.integration.test_cleanup import cleanup, finished_task_idle_for

WORKER_POINTS = ["pre_start", "start", "pre_prepare_debuginfo", "post_prepare_debuginfo", "pre_prepare_environment",
                 "post_prepare_environment", "pre_retrace", "post_retrace", "pre_clean_task", "post_clean_task"]
RECORDER = """#!/bin/sh
echo "$RETRACE_HOOK $RETRACE_TASK_ID $(basename "$0") $*" >> "$(dirname "$0")/../../calls"
"""


@pytest.fixture
def hooks():
    """A hooks configuration and HookDir in upstream's layout (where the service user reaches them), a
    recorder script at every point; ``calls()`` lists what ran: ``(hook, task id, script, arguments)``."""
    root = Path(tempfile.mkdtemp(prefix="retrace-hooks-", dir="/var/tmp"))
    root.chmod(0o755)
    hook_dir = root / "libexec" / "hooks"
    for point in ("pre_start", "start", "pre_prepare_debuginfo", "post_prepare_debuginfo", "pre_prepare_environment",
                  "post_prepare_environment", "pre_retrace", "post_retrace", "pre_clean_task", "post_clean_task",
                  "success", "fail", "pre_remove_task", "post_remove_task"):
        (hook_dir / point).mkdir(parents=True)
        script = hook_dir / point / "50-record"
        script.write_text(RECORDER)
        script.chmod(0o755)
    (hook_dir.parent / "calls").touch()
    (hook_dir.parent / "calls").chmod(0o666)
    config = root / "retrace-server-hooks.conf"
    config.write_text(f"[main]\nHookDir = {hook_dir}\nTimeout = 2\n\n[success]\ncmdline = {{taskid}} "
                      "{task_results_dir} 'two words'\n")

    class Hooks:
        directory, file = hook_dir, config

        @staticmethod
        def calls():
            return [tuple(line.split(" ", 3)) for line in (hook_dir.parent / "calls").read_text().splitlines()]

        @staticmethod
        def add(point, name, text):
            script = hook_dir / point / name
            script.write_text(text)
            script.chmod(0o755)

    yield Hooks
    shutil.rmtree(root)


def test_every_worker_point_runs_in_order_with_the_task_named(start_server, problem_dir, hooks):
    server = start_server(HookConfig=str(hooks.file))
    task_id, auth = submit(server, problem_dir)
    assert wait_final(server, task_id, auth).headers["X-Task-Status"] == "FINISHED_SUCCESS"
    calls = hooks.calls()
    assert [(hook, task) for hook, task, *_ in calls] == [(point, task_id) for point in [*WORKER_POINTS, "success"]]
    assert calls[-1][3] == f"{task_id} {server.save_dir / task_id / 'results'} two words", "cmdline, word by word"


def test_a_failed_task_runs_the_fail_hook_and_no_success_or_post_stage_hooks(start_server, problem_dir, hooks):
    server = start_server(HookConfig=str(hooks.file))
    archive = xz(tar_bytes(problem_members(problem_dir, os_release=b"Fedora release 40 (Forty)\n")))
    task_id, auth = submit(server, problem_dir, archive=archive)
    assert wait_final(server, task_id, auth).headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert [hook for hook, *_ in hooks.calls()] == ["pre_start", "start", "pre_prepare_debuginfo", "pre_clean_task",
                                                    "post_clean_task", "fail"]


def test_a_failing_or_hanging_hook_is_logged_and_never_changes_the_task(start_server, problem_dir, hooks):
    hooks.add("pre_retrace", "10-fails", "#!/bin/sh\necho 'the case system is down' >&2\nexit 3\n")
    hooks.add("post_retrace", "10-hangs", "#!/bin/sh\nsleep 60\n")
    server = start_server(HookConfig=str(hooks.file))
    task_id, auth = submit(server, problem_dir)
    started = time.monotonic()
    status = wait_final(server, task_id, auth)
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", outcome(status)
    assert time.monotonic() - started < 30, "the hanging hook was stopped at its 2 s limit"
    log = (server.log_dir / "worker.log").read_text()
    assert (f"hook pre_retrace/10-fails for task {task_id}: failed with exit status 3" in log
            and "it said: the case system is down" in log)
    assert f"hook post_retrace/10-hangs for task {task_id}: timed out after 2 s and was killed" in log
    task_log = server.get(f"/{task_id}/log", headers=auth).text
    assert "10-fails" not in task_log and "case system" not in task_log, "hooks are the administrator's"
    assert ("post_retrace", task_id, "50-record", "") in [call + ("",) * (4 - len(call)) for call in hooks.calls()]


def test_cleanup_and_the_api_delete_run_the_remove_hooks(start_server, problem_dir, hooks):
    server = start_server(HookConfig=str(hooks.file), AllowAPIDelete="1")
    expired, _, _ = finished_task_idle_for(server, problem_dir, 200)
    assert cleanup(server, HookConfig=str(hooks.file)).returncode == 0
    deleted, auth = submit(server, problem_dir)
    wait_final(server, deleted, auth)
    assert server.get(f"/{deleted}/delete", headers=auth).status_code == 200
    removals = [(hook, task) for hook, task, *_ in hooks.calls() if hook.endswith("remove_task")]
    assert removals == [("pre_remove_task", expired), ("post_remove_task", expired),
                        ("pre_remove_task", deleted), ("post_remove_task", deleted)]


def test_a_hook_configuration_that_names_an_unknown_placeholder_skips_that_hook_with_a_reason(
        start_server, problem_dir, hooks):
    hooks.file.write_text(hooks.file.read_text() + "\n[start]\ncmdline = {password}\n")
    server = start_server(HookConfig=str(hooks.file))
    task_id, auth = submit(server, problem_dir)
    assert wait_final(server, task_id, auth).headers["X-Task-Status"] == "FINISHED_SUCCESS"
    assert "start" not in [hook for hook, *_ in hooks.calls()]
    assert (f"hook start/50-record for task {task_id}: not run, its configuration is wrong (KeyError: 'password')"
            in (server.log_dir / "worker.log").read_text())


def test_a_status_poll_with_x_wait_is_held_until_the_stage_changes(start_server, problem_dir, hooks):
    """Our client's long poll (X-Wait), seen while a hook holds the task at INIT."""
    hooks.add("pre_retrace", "05-slow", "#!/bin/sh\nsleep 1\n")  # the task stays a while at INIT
    server = start_server(HookConfig=str(hooks.file))
    task_id, auth = submit(server, problem_dir)
    for _ in range(1200):
        plain = server.get(f"/{task_id}", headers=auth)
        if plain.text == TaskStatus.INIT.sentence:
            break
        time.sleep(0.01)
    else:
        pytest.fail("the task was never seen preparing its environment")
    held = server.get(f"/{task_id}", headers={**auth, "X-Wait": "30"})
    assert held.headers.get("X-Task-Waited") == "1" and "X-Task-Waited" not in plain.headers
    assert held.text != plain.text, "answered when the stage changed"
    assert wait_final(server, task_id, auth).headers["X-Task-Status"] == "FINISHED_SUCCESS"
    ended = server.get(f"/{task_id}", headers={**auth, "X-Wait": "30"})
    assert ended.headers["X-Task-Status"] == "FINISHED_SUCCESS", "an ended task is never held"
    bad = server.get(f"/{task_id}", headers={**auth, "X-Wait": "soon"})
    assert bad.status_code == 400 and "X-Wait must be a whole number of seconds" in bad.text
