"""Administrators' scripts at fixed points of a task's life, as upstream ran them (its hook points, its
``retrace-server-hooks.conf`` and ``hooks/*.conf``, its ``HookDir/<hook>/`` of executables).

Every executable in ``HookDir/<hook>/`` runs, in name order, as the
service user, with the hook's directory as its working directory, no shell,
a minimal environment naming the task (``RETRACE_HOOK``, ``RETRACE_TASK_ID``,
``RETRACE_TASK_DIR``, ``RETRACE_TASK_RESULTS_DIR``), standard input from
/dev/null and a time limit (``Timeout`` in ``[main]``, a hook's own section,
or ``[<hook>.<script>]``).  A section's ``cmdline`` gives arguments, each
word formatted with ``{hook_name}``, ``{taskid}`` and ``{task_results_dir}``
(a word stays one argument whatever a value holds).  A hook that fails,
times out or cannot start is logged to the administrator's log and never
changes the task: hooks are the administrator's, the task is the user's.
"""
from __future__ import annotations

import configparser
import contextlib
import dataclasses
import logging
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from retrace_server.config import Config
    from retrace_server.tasks.task import Task

_config_log = logging.getLogger("retrace.hooks")

# Upstream's points, in the order a task meets them.
POINTS = (
    "pre_start", "start", "pre_prepare_debuginfo", "post_prepare_debuginfo", "pre_prepare_environment",
    "post_prepare_environment", "pre_retrace", "post_retrace", "pre_clean_task", "post_clean_task", "success",
    "fail", "pre_remove_task", "post_remove_task",
)
DEFAULT_HOOK_DIR = Path("/usr/libexec/retrace-server/hooks")
DEFAULT_TIMEOUT = 300
_OUTPUT_SHOWN = 2000  # characters of a script's output in the log


@dataclasses.dataclass(frozen=True)
class Hooks:
    hook_dir: Path = DEFAULT_HOOK_DIR
    sections: tuple[tuple[str, dict[str, str]], ...] = ()  # ((section name, {key: value}), ...)

    @classmethod
    def load(cls, config_file: Path) -> Hooks:
        """Upstream's hooks configuration: ``config_file`` and the ``hooks/*.conf`` beside it; none: defaults.
        A file that cannot be parsed is logged and left out (hooks never stop a task)."""
        parser = configparser.ConfigParser(interpolation=None)
        paths = [Path(config_file), *sorted(Path(config_file).parent.joinpath("hooks").glob("*.conf"))]
        for path in paths:
            try:
                parser.read(path, encoding="utf-8")
            except (configparser.Error, OSError, UnicodeDecodeError) as err:
                _config_log.error("hooks: %s is not read: %s", path, str(err).splitlines()[0])
        main = dict(parser.items("main")) if parser.has_section("main") else {}
        return cls(Path(main.get("hookdir", DEFAULT_HOOK_DIR)),
                   tuple((name, dict(parser.items(name))) for name in parser.sections()))

    def _setting(self, key: str, hook: str, script: str) -> str | None:
        """The most specific value of ``key``: ``[hook.script]``, ``[hook]``, then ``[main]``."""
        sections = dict(self.sections)
        for name in (f"{hook}.{script}", hook, "main"):
            if key in sections.get(name, {}):
                return sections[name][key]
        return None

    def scripts(self, hook: str) -> list[Path]:
        directory = self.hook_dir / hook
        try:
            entries = sorted(directory.iterdir())
        except OSError:
            return []
        return [entry for entry in entries if entry.is_file() and os.access(entry, os.X_OK)]

    def run(self, hook: str, task: Task, log: logging.Logger) -> None:
        """Every script of ``hook`` for ``task`` (a Task), one after the other; ``log``: the caller's
        administrator's log (the worker's, cleanup's, Apache's)."""
        assert hook in POINTS, hook
        for script in self.scripts(hook):
            try:
                self._run_script(hook, script, task, log)
            except Exception:
                log.exception("hook %s/%s for task %s: unexpected error", hook, script.name, task.task_id)

    def _run_script(self, hook: str, script: Path, task: Task, log: logging.Logger) -> None:
        what = f"hook {hook}/{script.name} for task {task.task_id}"
        try:
            timeout = int(self._setting("timeout", hook, script.name) or DEFAULT_TIMEOUT)
            values = {"hook_name": hook, "taskid": task.task_id, "task_results_dir": str(task.results_dir)}
            arguments = [word.format(**values) for word in shlex.split(self._setting("cmdline", hook, script.name) or "")]
        except (ValueError, KeyError, IndexError) as err:
            log.error("%s: not run, its configuration is wrong (%s: %s)", what, type(err).__name__, err)
            return
        environment = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "RETRACE_HOOK": hook,
                       "RETRACE_TASK_ID": task.task_id, "RETRACE_TASK_DIR": str(task.path),
                       "RETRACE_TASK_RESULTS_DIR": str(task.results_dir)}
        started = time.monotonic()
        try:
            process = subprocess.Popen([str(script), *arguments], cwd=script.parent, env=environment,
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        except OSError as err:
            log.error("%s: cannot start (%s)", what, err.strerror)
            return
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # the script's own children too
            output, _ = process.communicate()
            log.error("%s: timed out after %d s and was killed%s", what, timeout, _said(output))
            return
        seconds = time.monotonic() - started
        if process.returncode != 0:
            log.error("%s: failed with exit status %d in %.2f s%s", what, process.returncode, seconds, _said(output))
        else:
            log.info("%s: done in %.2f s%s", what, seconds, _said(output))


def _said(output: bytes) -> str:
    text = output.decode("utf-8", "replace").strip()
    if not text:
        return ""
    return f"; it said: {text[:_OUTPUT_SHOWN]}" + (" ..." if len(text) > _OUTPUT_SHOWN else "")


def delete_task(config: Config, task: Task, log: logging.Logger) -> None:
    """Delete ``task`` between upstream's pre_remove_task and post_remove_task hooks (cleanup, the API)."""
    hooks = Hooks.load(config.HookConfig)
    hooks.run("pre_remove_task", task, log)
    task.delete()
    hooks.run("post_remove_task", task, log)
