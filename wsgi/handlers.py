"""One small function per route: (config, request, **url parts) -> Response.

Handlers raise RetraceError subclasses for every refusal; ``retrace_server.wsgi.app``
turns them into responses in one place.  Texts and status codes follow
upstream's scripts so that unmodified ABRT clients work.
"""
from __future__ import annotations

import contextlib
import functools
import html
import json
import logging
import re
import sqlite3
import threading
import time
from typing import TYPE_CHECKING

from webob import Response

from retrace_server import intake
from retrace_server.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    QueueFull,
    RetraceError,
    TemporarilyUnavailable,
)
from retrace_server.files import write_atomically
from retrace_server.intake import archive, crashdata, storage
from retrace_server.packaging.history import sources_for, wanted_of
from retrace_server.packaging.packages import is_package_known
from retrace_server.packaging.release import (
    ReleaseId,
    RepositoryFormat,
    repository_format,
    served_releases,
    supported_releases,
)
from retrace_server.packaging.repoindex import release_index
from retrace_server.protocol import FAILURE_REASON, header_text
from retrace_server.stats import StatsDB
from retrace_server.tasks import dispatch, taskqueue
from retrace_server.tasks.hooks import delete_task
from retrace_server.tasks.task import MD5_NAME, Task, TaskStatus, wire_status
from retrace_server.wsgi import metrics, statspage

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

    from webob import Request

    from retrace_server.config import Config

log = logging.getLogger(__name__)

BACKTRACE_LIMIT = 16 * 1024 * 1024
LOG_LIMIT = 4 * 1024 * 1024
EXPLOITABLE_LIMIT = 1024 * 1024

_NVR_HEADER = re.compile(r"[\w.+-]+([1-9][0-9]*:)?[a-zA-Z0-9.+~-]+", re.ASCII)
_ARCH_HEADER = re.compile(r"\w+", re.ASCII)


def text_response(text: str, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    response = Response(status=status, content_type="text/plain", charset="utf-8", text=text)
    response.headers.update(headers or {})
    return response


def _open_task(config: Config, request: Request, task_id: str) -> Task:
    task = Task.open(config.SaveDir, task_id, config.TaskIdLength)
    task.check_password(request.headers.get("X-Task-Password"))
    return task


def settings(config: Config, request: Request) -> Response:
    """Server limits and capabilities in upstream's exact ``key value`` lines.

    ``running_tasks`` counts every slot in use (running, queued, uploading)
    and ``max_running_tasks`` every slot there is, so an ABRT client, which
    refuses when the first reaches the second, refuses exactly when
    ``/create`` would answer 503.
    """
    lines = [
        f"running_tasks {taskqueue.occupancy(config).total}",
        f"max_running_tasks {config.task_slots}",
        f"max_packed_size {config.MaxPackedSize}",
        f"max_unpacked_size {config.MaxUnpackedSize}",
        "supported_formats " + " ".join(archive.supported_formats()),
        "supported_releases " + " ".join(str(release) for release in served_releases(config)),
        "supported_architectures " + " ".join(dict.fromkeys(release.arch for release in served_releases(config))),
    ]
    return text_response("\n".join(lines))


def _required_header(request: Request, name: str, pattern: re.Pattern[str], what: str) -> str:
    value = request.headers.get(name)
    if value is None:
        raise Forbidden(f"Required header '{name}' not found")
    value = value.strip()
    if not pattern.fullmatch(value):
        raise Forbidden(f"{what} contains illegal characters")
    return str(value)


def checkpackage(config: Config, request: Request) -> Response:
    """302 (and deliberately no Location) when the package is known, else 404.

    A Location header would make the ABRT client's HTTP library follow the
    redirect and misread the answer.
    """
    nvr = _required_header(request, "X-Package-NVR", _NVR_HEADER, "Package NVR")
    arch = _required_header(request, "X-Package-Arch", _ARCH_HEADER, "Architecture")
    releases = supported_releases(config.RepoDir)
    release_header = request.headers.get("X-OS-Release")
    if release_header is not None:
        wanted = ReleaseId.parse(release_header.strip().lower())
        if wanted is None:
            raise Forbidden("OS release contains illegal characters")
        if str(wanted) in config.debuginfod_releases and wanted not in releases:
            # No mirror to look in: debuginfod answers by build-id, whatever the package.
            return Response(status=302, content_type="text/plain", headers={"X-Retrace-Package-Check": "debuginfod"})
        releases = [release for release in releases if release == wanted]
    # True, False, or None: an index that could tell is not built yet (the files of a full mirror answer first).
    known = is_package_known(config.RepoDir, releases, nvr, arch) or _indexed(config, releases, nvr)
    if not known and _in_history(config, releases, nvr):
        return Response(status=302, content_type="text/plain", headers={"X-Retrace-Package-Check": "history"})
    if known is None:
        # A mirror no task has indexed yet (copied by hand, not by reposync): the first task builds its index.
        # A "no" would stop a client whose package is there, with a sentence that blames the package.
        return Response(status=302, content_type="text/plain", headers={"X-Retrace-Package-Check": "unindexed"})
    return Response(status=302 if known else 404, content_type="text/plain")


# How long /checkpackage waits for one history source: the client waits for the answer.
_HISTORY_CHECK_SECONDS = 10.0


def _in_history(config: Config, releases: Iterable[ReleaseId], nvr: str) -> bool:
    """Whether a history source of one of ``releases`` serves ``nvr`` (a build the mirror no longer lists:
    the worker will fetch it from there)."""
    for release in releases:
        for source in sources_for(config, release, _HISTORY_CHECK_SECONDS):
            try:
                if any(source.binary(wanted) for wanted in wanted_of(nvr, release.arch, source.format)):
                    return True
            except RetraceError as err:
                log.warning("/checkpackage could not ask %s about %s: %s", source, nvr, err.sentence)
    return False


def _indexed(config: Config, releases: Iterable[ReleaseId], nvr: str) -> bool | None:
    """apt releases hold their packages in pool/<component>/<x>/<source>/: ask the release's index, when
    it is current (a request never builds one). None: a release that only its index can tell of (apt, rpm-md
    metadata only; a full RPM mirror's files are looked at) has no current index, so nothing can be said."""
    untold = False
    for release in releases:
        index = release_index(config.RepoDir, config.CacheDir, release, rebuild=False)
        if index is None:
            untold = untold or repository_format(config.RepoDir / str(release)) not in (None, RepositoryFormat.RPM_MD)
            continue
        try:
            if index.holds_name_version(nvr):
                return True
        finally:
            index.close()
    return None if untold else False


def create(config: Config, request: Request) -> Response:
    """Accept a crash archive: check, stream, unpack, validate, queue."""
    fmt = archive.format_for(request.headers.get("Content-Type"))
    task_type = crashdata.parse_task_type(request.headers.get("X-Task-Type"), config.AllowInteractive,
                                          config.AllowVMCoreTask)
    is_vmcore = task_type.is_vmcore
    packed_cap = config.max_vmcore_packed_bytes if is_vmcore else config.max_packed_bytes
    length = archive.declared_length(request.content_length, packed_cap)
    if "X-CoreFileDirectory" in request.headers:
        raise Forbidden("X-CoreFileDirectory header has been disabled by server administrator")
    storage.ensure_free(config.SaveDir, length, config.min_storage_left_bytes)
    with _refusals_counted(config, request), \
            taskqueue.admitted_upload(config, request.remote_addr, limit_queued=True) as incoming:
        reserve = functools.partial(storage.reserve, config.SaveDir, incoming.path,
                                    min_left_bytes=config.min_storage_left_bytes)
        digests = {"vmcore": ""} if is_vmcore and config.CalculateMd5 else {}
        sizes = intake.receive(config, task_type, incoming.crash_dir, reserve,
                               body=(request.environ["wsgi.input"], length, fmt), digests=digests,
                               started=dispatch.prefetch_trigger(config, task_type, incoming.path))
        if digests.get("vmcore"):
            write_atomically(incoming.path / MD5_NAME, f"{digests['vmcore']}  vmcore\n")
        task, password = incoming.commit(
            task_type, id_length=config.TaskIdLength, password_length=config.TaskPassLength
        )
    log.info("task %s created: type %d, %d bytes uploaded, files %s", task.task_id, task_type, length, sizes)
    if not dispatch.poke(config):
        log.error("task %s waits: no dispatcher listens on %s (is retrace-server-dispatcher running?)",
                  task.task_id, dispatch.socket_path(config))
    return Response(status=201, headers={"X-Task-Id": task.task_id, "X-Task-Password": password})


@contextlib.contextmanager
def _refusals_counted(config: Config, request: Request) -> Iterator[None]:
    """Count a "server full" refusal in the statistics (upstream's reportfull) and let it through."""
    try:
        yield
    except QueueFull:
        try:
            with StatsDB.for_config(config) as stats:
                stats.record_refusal(request.remote_addr, config.StatsIPRetention)
        except (sqlite3.Error, OSError) as err:
            log.error("refusal not counted in the statistics: %s", err)
        raise


def stats_page(config: Config, request: Request) -> Response:
    """Statistics for people (HTML with SVG charts) or scripts (``?format=json``)."""
    try:
        with StatsDB.for_config(config) as stats:
            summary = stats.summary()
    except (sqlite3.Error, OSError) as err:
        log.error("statistics unavailable: %s", err)
        raise TemporarilyUnavailable("The statistics cannot be read right now (the server's disk may be full); "
                                     "try again later") from None
    now = taskqueue.occupancy(config)
    if request.GET.get("format") == "json":
        body = dict(summary, running=now.running, queued=now.queued)
        return Response(content_type="application/json", charset="utf-8", text=json.dumps(body, indent=1))
    return Response(content_type="text/html", charset="utf-8", text=statspage.render(summary, now))


def metrics_page(config: Config, request: Request) -> Response:
    if not config.AllowMetrics:
        raise Forbidden("Metrics are not enabled for this server")
    body, content_type = metrics.exposition(config)
    response = Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


# A status poll may ask to be held until the task's stage changes (X-Wait: seconds), at most this long; a
# process holds at most _MAX_WAITERS such polls at once (its other threads answer at once), and looks at the
# stage every _WAIT_STEP seconds.
MAX_WAIT_SECONDS = 30
_MAX_WAITERS = 5
_WAIT_STEP = 0.02
_waiters = threading.BoundedSemaphore(_MAX_WAITERS)


def _wait_seconds(request: Request) -> float:
    text = request.headers.get("X-Wait")
    if text is None:
        return 0.0
    if not text.strip().isdigit():
        raise BadRequest("X-Wait must be a whole number of seconds (how long to hold the answer until the task's "
                         f"stage changes, at most {MAX_WAIT_SECONDS})")
    return float(min(int(text.strip()), MAX_WAIT_SECONDS))


def _held_until_changed(config: Config, task: Task, seconds: float) -> bool:
    """Hold the poll while the task's stage stays what it was, for at most ``seconds`` (never for a task that
    ended or whose worker died); whether it was held at all (False: every waiting slot was taken)."""
    if not _waiters.acquire(blocking=False):
        return False
    try:
        first = task.status
        deadline = time.monotonic() + seconds
        while (first is None or not first.is_final) and task.status == first and time.monotonic() < deadline:
            if dispatch.dead_worker_reason(task, config) is not None:
                break
            time.sleep(_WAIT_STEP)
        return True
    finally:
        _waiters.release()


def status(config: Config, request: Request, task_id: str) -> Response:
    """The task's stage.  Read only: a task whose worker died reads as failed at once, and the
    dispatcher, poked, records it.  With ``X-Wait: N`` (our client's long poll) the answer waits up to N
    seconds for the stage to change and says ``X-Task-Waited: 1`` when it did wait; upstream's clients
    never send it and are answered at once."""
    task = _open_task(config, request, task_id)
    wait = _wait_seconds(request)
    held = _held_until_changed(config, task, wait) if wait else False
    current = task.status
    reason = task.failure_reason if current == TaskStatus.FAIL else None
    died = dispatch.dead_worker_reason(task, config)
    if died is not None:
        current, reason = TaskStatus.FAIL, died
        dispatch.poke(config)
    headers = {"X-Task-Status": wire_status(current)}
    if current is None:
        position = taskqueue.queue_position(task, config)
        sentence = f"Waiting in the queue for a free worker (position {position})"
    else:
        # Exactly upstream's sentence: its retrace-server-task compares the body with it.
        sentence = current.sentence
    if reason:
        headers[FAILURE_REASON] = header_text(reason)
    if held:
        headers["X-Task-Waited"] = "1"
    return text_response(sentence, headers=headers)


# What the task's file routes serve (the API's and the manager's): the file, at most how much of it, the
# sentence when it is absent.
TASK_FILES = {
    "backtrace": ("retrace_backtrace", BACKTRACE_LIMIT, "There is no backtrace for the specified task"),
    "log": ("retrace_log", LOG_LIMIT, "There is no log for the specified task"),
    "exploitable": ("results/exploitable", EXPLOITABLE_LIMIT, "There is no exploitability data for the specified task"),
}


def stored_file(task: Task, name: str) -> Response:
    """The task's TASK_FILES ``name`` as text, or NotFound with its sentence."""
    file_name, limit, missing = TASK_FILES[name]
    return _text_or(task, file_name, limit, missing)


def stored_result(task: Task, name: str) -> Response:
    """A vmcore task's ``crash`` output: ``sys`` (system summary), ``bt`` (backtrace), ``mod`` (modules),
    ``crash-<command>``; a crashed CPython's ``py-bt`` (every Python thread's traceback)."""
    return _text_or(task, f"results/{name}", BACKTRACE_LIMIT, f"There is no '{name}' result for the specified task")


def _text_or(task: Task, file_name: str, limit: int, missing: str) -> Response:
    text = task.read_text(file_name, limit)
    if text is None:
        raise NotFound(missing)
    return text_response(text)


def backtrace(config: Config, request: Request, task_id: str) -> Response:
    return stored_file(_open_task(config, request, task_id), "backtrace")


def task_log(config: Config, request: Request, task_id: str) -> Response:
    return stored_file(_open_task(config, request, task_id), "log")


def exploitable(config: Config, request: Request, task_id: str) -> Response:
    return stored_file(_open_task(config, request, task_id), "exploitable")


def result(config: Config, request: Request, task_id: str, name: str) -> Response:
    return stored_result(_open_task(config, request, task_id), name)


def delete(config: Config, request: Request, task_id: str) -> Response:
    if not config.AllowAPIDelete:
        raise Forbidden("Manual deleting is disabled")
    task = _open_task(config, request, task_id)
    current = task.status
    if current is not None and not current.is_final:
        raise Conflict("The task is still running; delete it after it has finished")
    delete_task(config, task, log)
    log.info("task %s deleted through the API", task_id)
    return text_response("All task data were deleted successfully")


_INDEX_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Retrace Server</title>
<style>body{{font-family:sans-serif;max-width:50em;margin:2em auto;line-height:1.4}}code{{background:#eee;padding:0 .2em}}</style>
</head>
<body>
<h1>Retrace Server</h1>
<p>This server turns C/C++ coredumps into symbolized backtraces, so that you do not
have to download debuginfo. Use <code>retrace-client</code> or any ABRT-compatible client.</p>
<h2>Load</h2>
<p>{load} <a href="stats">Statistics</a> <a href="problems">Crash buckets</a></p>
<h2>Supported releases</h2>
{releases}
<h2>Your data</h2>
<p>{https}</p>
<p>Your coredump is kept on the server only while the retrace job runs; it is deleted
as soon as the job ends. A kernel vmcore stays with its task, for a second look.
The backtrace, log and vmcores are deleted {retention}.</p>
</body>
</html>
"""


def index(config: Config, request: Request) -> Response:
    now = taskqueue.occupancy(config)
    load = (
        f"The server is loaded for {100 * now.running // config.MaxParallelTasks}%: "
        f"running {now.running} of {config.MaxParallelTasks} jobs, {now.queued + now.uploading} waiting "
        f"(room for {config.MaxQueuedTasks} in the queue)."
    )
    by_arch: dict[str, list[ReleaseId]] = {}
    for release in served_releases(config):
        by_arch.setdefault(release.arch, []).append(release)
    if by_arch:
        release_html = "".join(
            f"<h3>{html.escape(arch)}</h3><ul>"
            + "".join(f"<li><code>{html.escape(str(release))}</code></li>" for release in releases) + "</ul>"
            for arch, releases in sorted(by_arch.items()))
    else:
        release_html = "<p>No release repositories are set up yet.</p>"
    https = (
        "Uploads are only accepted over HTTPS."
        if config.RequireHTTPS
        else "This server also accepts uploads over plain HTTP; prefer HTTPS."
    )
    retention = (f"after {config.DeleteTaskAfter} hours of inactivity" if config.DeleteTaskAfter > 0
                 else "when the administrator removes them")
    page = _INDEX_TEMPLATE.format(load=html.escape(load), releases=release_html, https=https, retention=html.escape(retention))
    return Response(content_type="text/html", charset="utf-8", text=page)
