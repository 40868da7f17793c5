"""The task manager at ``/manager``: support engineers' tasks, case data and imports, for browsers and scripts.

URLs, form fields and the markers in the pages follow upstream's
``manager.wsgi``, because upstream's ``retrace-server-task`` scripts them:
it posts ``/manager/__custom__`` to start a task from a URL or a server
path, ``GET /manager/<file>/start`` for a file on the FTP drop, posts
``caseno``, ``bugzillano``, ``notify`` and ``restart``, and reads the task
page (see ``managerpages``).  Every change answers ``303 See Other`` to the
task page, which both a browser and ``requests`` follow.

Apache authenticates the user (``ManagerUserFile``, or Kerberos, OpenID
Connect: httpd/retrace.conf); a request that reaches us without
``REMOTE_USER`` is refused, so a missing ``<Location>`` can never open
the manager to everyone.  Changes sent by a browser from another site are
refused by their ``Origin``, ``Referer`` or ``Sec-Fetch-Site``; a script
sends none of them and is let through.
"""
from __future__ import annotations

import hashlib
import logging
import time
import urllib.parse
from typing import TYPE_CHECKING, Any, Callable

from webob import Response

from retrace_server import intake
from retrace_server.errors import BadRequest, Conflict, Forbidden, NotFound, UploadTooLarge
from retrace_server.files import write_atomically
from retrace_server.intake import archive, crashdata, imported, multipart, remote, storage
from retrace_server.intake.overrides import InvalidOverride, Overrides
from retrace_server.tasks import casedata, dispatch, tasklist, taskqueue
from retrace_server.tasks.hooks import delete_task
from retrace_server.tasks.task import (
    CUSTOM_FILES,
    DEBUG_NAME,
    MD5_NAME,
    MD5_REQUESTED,
    REMOTE_NAME,
    Task,
    TaskType,
    worker_alive,
)
from retrace_server.wsgi import handlers, managerpages

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from webob import Request

    from retrace_server.config import Config
    from retrace_server.intake.remote import DropListing
    from retrace_server.tasks.task import IncomingTask

log = logging.getLogger(__name__)

def authenticated_user(config: Config, request: Request, changes: bool = False) -> str:
    """The authenticated user; refuses when the manager is off, unauthenticated, or a change is forged."""
    if not config.AllowTaskManager:
        raise Forbidden("Task manager was disabled by the server administrator")
    user = request.environ.get("REMOTE_USER")
    if not user:
        raise Forbidden("The task manager needs authentication, and none is configured: the administrator sets "
                        "ManagerUserFile (or another Apache authentication, see httpd/retrace.conf)")
    if changes:
        _refuse_cross_site(request)
    return str(user)


def _refuse_cross_site(request: Request) -> None:
    sentence = ("This change was sent from another web site and is refused; make it from the task manager's "
                "own pages")
    if request.headers.get("Sec-Fetch-Site", "").lower() in ("cross-site", "same-site"):
        raise Forbidden(sentence)
    for header in ("Origin", "Referer"):
        value = request.headers.get(header)
        if value is None:
            continue
        parts = urllib.parse.urlsplit(value)
        if value == "null" or (parts.scheme, parts.netloc.lower()) != (request.scheme, request.host.lower()):
            raise Forbidden(sentence)


def see_other(request: Request, path: str) -> Response:
    """303 to a task manager page, the answer to a change made from one of its forms."""
    return Response(status=303, location=f"{request.application_url}/manager{path}", content_type="text/plain")


def _open(config: Config, task_id: str) -> Task:
    return Task.open(config.SaveDir, task_id, config.TaskIdLength)


def _html(text: str) -> Response:
    return Response(content_type="text/html", charset="utf-8", text=text)


# -- the list -------------------------------------------------------------------------


def task_list(config: Config, request: Request) -> Response:
    user = authenticated_user(config, request)
    query = request.GET
    status = query.get("status") if query.get("status") in tasklist.STATUS_FILTERS else None
    caseno = query.get("case", "").strip()
    if caseno and not caseno.isdigit():
        raise BadRequest(f"'{caseno[:40]}' is not a case number: use digits only")
    search = query.get("q", "").strip()[:200]
    page = query.get("page", "1")
    listing = tasklist.list_tasks(config, status, caseno or None, search or None, int(page) if page.isdigit() else 1)
    drop: DropListing | str | None = None
    if config.UseFTPTasks:
        try:
            drop = remote.FtpDrop(config).listing()
        except BadRequest as err:
            drop = str(err)
    filters = {"status": status or "", "case": caseno, "q": search}
    return _html(managerpages.list_page(config, listing, filters, drop, user))


# -- one task -------------------------------------------------------------------------


def task_page(config: Config, request: Request, task_id: str) -> Response:
    user = authenticated_user(config, request)
    task = _open(config, task_id)
    return _html(managerpages.task_page(config, task, user, _may_delete(config, user)))


def task_file(config: Config, request: Request, task_id: str, name: str) -> Response:
    authenticated_user(config, request)
    return handlers.stored_file(_open(config, task_id), name)


def result(config: Config, request: Request, task_id: str, name: str) -> Response:
    authenticated_user(config, request)
    return handlers.stored_result(_open(config, task_id), name)


# A case field: how the form's text is checked, how its value is stored.
_FIELDS: dict[str, tuple[Callable[[str], Any], Callable[[Task | IncomingTask, Any], None]]] = {
    "caseno": (casedata.parse_caseno, casedata.set_caseno),
    "bugzillano": (casedata.parse_bugzillano, casedata.set_bugzillano),
    "notify": (casedata.parse_emails, casedata.set_notify),
    "notes": (casedata.parse_notes, casedata.set_notes),
}


def update_field(config: Config, request: Request, task_id: str, field: str) -> Response:
    """``caseno``, ``bugzillano``, ``notify`` or ``savenotes`` (upstream's URL for the ``notes`` field)."""
    user = authenticated_user(config, request, changes=True)
    task = _open(config, task_id)
    name = "notes" if field == "savenotes" else field
    parse, store = _FIELDS[name]
    store(task, parse(request.POST.get(name)))
    log.info("task %s: %s set by %s", task_id, name, user)
    return see_other(request, f"/{task_id}")


def keep(config: Config, request: Request, task_id: str) -> Response:
    user = authenticated_user(config, request, changes=True)
    task = _open(config, task_id)
    days = casedata.parse_keep_days(request.POST.get("days"))
    until = casedata.keep_for(task, days)
    log.info("task %s: kept until %s by %s", task_id, time.strftime("%Y-%m-%d", time.localtime(until)), user)
    return see_other(request, f"/{task_id}")


def _ended(task: Task, doing: str) -> None:
    status = task.status
    if (status is not None and not status.is_final) or worker_alive(task):
        raise Conflict(f"The task is still running; {doing} it after it has ended")
    if status is None:
        raise Conflict(f"The task is still waiting in the queue; {doing} it after it has ended")


def restart(config: Config, request: Request, task_id: str) -> Response:
    """Run the task again, optionally with a kernel version, at debug level, with new case data."""
    user = authenticated_user(config, request, changes=True)
    task = _open(config, task_id)
    form = request.POST
    overrides = _overrides(form, task.task_type, config)
    updates = _case_updates(form)
    _ended(task, "restart")
    try:
        task.check_restartable()
    except Conflict as err:
        raise Conflict(f"The task {err}") from None
    # All before forget_run: the task is queued, and may be started, the moment its status goes.
    overrides.save(task)
    _set_debug(task, form)
    for name, value in updates.items():
        _FIELDS[name][1](task, value)
    write_atomically(task.path / "queued_time", repr(time.time()))
    task.forget_run()
    log.info("task %s restarted by %s%s", task_id, user, f" ({overrides.describe()})" if overrides else "")
    _poke(config, task)
    return see_other(request, f"/{task_id}")


def _may_delete(config: Config, user: str) -> bool:
    return not config.TaskManagerAuthDelete or user in config.TaskManagerDeleteUsers.split()


def delete(config: Config, request: Request, task_id: str) -> Response:
    user = authenticated_user(config, request, changes=True)
    if not _may_delete(config, user):
        raise Forbidden(f"User '{user}' may not delete tasks on this server (TaskManagerDeleteUsers)")
    task = _open(config, task_id)
    status = task.status
    if (status is not None and not status.is_final) or worker_alive(task):
        raise Conflict("The task is still running; delete it after it has ended")
    delete_task(config, task, log)
    log.info("task %s deleted by %s in the task manager", task_id, user)
    return see_other(request, "")


# -- creating tasks -------------------------------------------------------------------


def _overrides(form: Mapping[str, str], task_type: TaskType, config: Config) -> Overrides:
    kernelver = (form.get("kernelver") or "").strip()
    try:
        return Overrides(kernelver=kernelver or None).checked(task_type, config)
    except InvalidOverride as err:
        raise BadRequest(str(err).replace("--kernelver", "The kernel version")) from None


def _case_updates(form: Mapping[str, str]) -> dict[str, Any]:
    """The case data fields a form filled in, parsed (an empty field is left alone)."""
    return {name: _FIELDS[name][0](form[field]) for name, field in
            (("caseno", "caseno"), ("bugzillano", "bugzillano"), ("notify", "notify")) if (form.get(field) or "").strip()}


def _set_debug(task: Task | IncomingTask, form: Mapping[str, str]) -> None:
    marker = task.path / DEBUG_NAME
    if _checked(form.get("debug"), False):
        write_atomically(marker, "1\n")
    else:
        marker.unlink(missing_ok=True)


def _task_type(form: Mapping[str, str], config: Config) -> TaskType:
    kind = (form.get("task_type") or "vmcore").strip()
    if kind not in ("vmcore", "coredump"):
        raise BadRequest(f"task_type is 'vmcore' or 'coredump', not '{kind[:40]}'")
    if kind == "vmcore" and not config.AllowVMCoreTask:
        raise Forbidden("Vmcore tasks are disabled on this server (AllowVMCoreTask = 0)")
    return TaskType.VMCORE_INTERACTIVE if kind == "vmcore" else TaskType.COREDUMP_INTERACTIVE


def _custom_files(form: Mapping[str, str], task_type: TaskType) -> dict[str, str]:
    """A bare coredump's package, executable and release, checked as if they came in an archive."""
    values = {}
    for custom, name in CUSTOM_FILES.items():
        value = (form.get(name) or "").strip()
        if not value or task_type.is_vmcore:
            continue
        rule = crashdata.broken_rule(name, value)
        if rule is not None:
            raise BadRequest(f"The {name.replace('_', ' ')} '{value[:80]}' is not {rule}")
        values[custom] = value
    return values


def _checked_form(form: Mapping[str, str], task_type: TaskType,
                  config: Config) -> tuple[Overrides, dict[str, str], dict[str, Any]]:
    """``(overrides, custom files, case data)`` from a create form, each checked."""
    if form.get("vmem-check") or form.get("custom_vmem_url"):
        raise BadRequest("VMware snapshot memory files (vmem) are not supported; convert the snapshot to a vmcore")
    return _overrides(form, task_type, config), _custom_files(form, task_type), _case_updates(form)


def _checked(value: str | None, default: bool) -> bool:
    """A checkbox's value (upstream's CLI sends "on" or "off"); absent: ``default``."""
    return default if value is None else value in ("on", "md5sum", "debug", "1", "true")


def _commit(config: Config, request: Request, incoming: IncomingTask, task_type: TaskType, form: Mapping[str, str],
            overrides: Overrides, updates: Mapping[str, Any]) -> Task:
    """Publish the new task with what the form asked for; the worker may start it at once."""
    _set_debug(incoming, form)
    overrides.save(incoming)
    for name, value in updates.items():
        _FIELDS[name][1](incoming, value)
    task, _password = incoming.commit(task_type, id_length=config.TaskIdLength, password_length=config.TaskPassLength)
    casedata.mark_managed(task, f"{request.application_url}/manager/{task.task_id}")
    return task


def _create(config: Config, request: Request, source: remote.Source, form: Mapping[str, str], user: str) -> Response:
    """Check ``source`` now, then queue a task that fetches it; 303 to its page."""
    task_type = _task_type(form, config)
    overrides, custom, updates = _checked_form(form, task_type, config)
    size, head = remote.check(source, config)
    cap = config.unpacked_cap_bytes(task_type.is_vmcore)
    if size is not None and size > cap:
        raise UploadTooLarge(f"{source.shown} is {size} bytes; this server accepts at most {cap} bytes for this task type")
    if head is not None:
        imported.check_head(head, task_type.is_vmcore)
    storage.ensure_free(config.SaveDir, size or 0, config.min_storage_left_bytes)
    with taskqueue.admitted_upload(config, request.remote_addr) as incoming:
        write_atomically(incoming.path / REMOTE_NAME, source.line() + "\n")
        for name, value in custom.items():
            write_atomically(incoming.path / name, value)
        if _checked(form.get("md5sum"), config.CalculateMd5):
            write_atomically(incoming.path / MD5_REQUESTED, "1\n")
        task = _commit(config, request, incoming, task_type, form, overrides, updates)
    log.info("task %s created by %s from %s", task.task_id, user, source.shown)
    _poke(config, task)
    return see_other(request, f"/{task.task_id}")


def create_from_upload(config: Config, request: Request) -> Response:
    """``/manager/__upload__``: a core or vmcore (bare, compressed, or a tar) uploaded from the browser.

    The form's fields come before its file (the page puts them there), and
    the file streams into the new task's directory through the upload
    path's caps; then it is turned into crash data as a fetched file is.
    """
    user = authenticated_user(config, request, changes=True)
    boundary = multipart.boundary_of(request.headers.get("Content-Type"))
    cap = config.unpacked_cap_bytes(config.AllowVMCoreTask)  # the type is known once the form has been read
    length = archive.declared_length(request.content_length, cap + multipart.FIELD_LIMIT * multipart.MAX_PARTS)
    storage.ensure_free(config.SaveDir, length, config.min_storage_left_bytes)
    form, received = {}, None
    with taskqueue.admitted_upload(config, request.remote_addr) as incoming:
        upload = incoming.path / "upload"
        digest = hashlib.md5(usedforsecurity=False)
        for part in multipart.parts(request.environ["wsgi.input"], length, boundary, config.min_upload_rate_bytes):
            if part.filename is None:
                form[part.name] = part.text()
            elif part.name == "file" and received is None:
                received = _receive(part, upload, cap, digest, config, incoming)
        if not received:
            raise BadRequest("Choose the core or vmcore file to upload")
        task_type = _task_type(form, config)
        overrides, custom, updates = _checked_form(form, task_type, config)
        try:
            sizes = intake.receive(config, task_type, incoming.crash_dir,
                                   lambda nbytes: storage.reserve(config.SaveDir, incoming.path, nbytes,
                                                                  config.min_storage_left_bytes),
                                   file=upload, custom={CUSTOM_FILES[name]: value for name, value in custom.items()})
        finally:
            upload.unlink(missing_ok=True)
        if _checked(form.get("md5sum"), config.CalculateMd5):
            write_atomically(incoming.path / MD5_NAME, f"{digest.hexdigest()}  {_e_name(received)}\n")
        task = _commit(config, request, incoming, task_type, form, overrides, updates)
    log.info("task %s created by %s from an upload of %s (%d bytes)", task.task_id, user, _e_name(received),
             sum(sizes.values()))
    _poke(config, task)
    return see_other(request, f"/{task.task_id}")


def _e_name(name: str) -> str:
    """An uploaded file's name for logs and the md5sum file: its last component, printable."""
    return "".join(char for char in name.replace("\\", "/").rsplit("/", 1)[-1] if char.isprintable())[:200] or "upload"


def _receive(part: multipart.Part, target: Path, cap: int, digest: hashlib._Hash, config: Config,
             incoming: IncomingTask) -> str:
    written = 0
    with open(target, "xb") as handle:
        while chunk := part.read():
            written += len(chunk)
            if written > cap:
                raise UploadTooLarge(f"The file is larger than this server accepts ({cap} bytes)")
            if written % (256 * 1024 * 1024) < len(chunk):
                storage.reserve(config.SaveDir, incoming.path, 256 * 1024 * 1024, config.min_storage_left_bytes)
            handle.write(chunk)
            digest.update(chunk)
    storage.reserve(config.SaveDir, incoming.path, 0, config.min_storage_left_bytes)
    return part.filename or "upload"


def create_from_source(config: Config, request: Request) -> Response:
    """``/manager/__custom__``: a task from an http(s)/ftp URL or a path under ImportDirs."""
    user = authenticated_user(config, request, changes=True)
    form = request.POST
    return _create(config, request, remote.parse_source(form.get("custom_url")), form, user)


# What browsers send and scripts do not: a GET that carries one is a browser's, and never changes anything.
_BROWSER_HEADERS = ("Sec-Fetch-Mode", "Sec-Fetch-Site", "Sec-Fetch-Dest", "Origin", "Referer",
                    "Upgrade-Insecure-Requests", "Cookie")


def _scripted(request: Request) -> bool:
    """Whether a GET comes from a script holding credentials (upstream's CLI: Basic or Kerberos, which Apache
    checked and names in AUTH_TYPE), not from a browser following a link, which a page elsewhere can make it do."""
    authentication = request.environ.get("AUTH_TYPE", "").lower()
    return authentication in ("basic", "negotiate") and not any(name in request.headers for name in _BROWSER_HEADERS)


def start(config: Config, request: Request, name: str) -> Response:
    """``/manager/<file>/start``: a task from a file on the FTP drop.

    Upstream's CLI sends a GET, which starts the task; a browser's GET (a
    link, an image on another site) gets a page whose button posts instead.
    """
    user = authenticated_user(config, request, changes=True)
    if name.isdigit() and len(name) == config.TaskIdLength:
        _open(config, name)
        return see_other(request, f"/{name}")  # our tasks start when created
    if not remote.is_drop_name(name):
        raise NotFound("There is no such file on the FTP drop")
    if request.method == "GET" and not _scripted(request):
        return _html(managerpages.confirm_start_page(name, list(request.GET.items()), user))
    form = request.POST if request.method == "POST" else request.GET
    return _create(config, request, remote.Source("drop", name), form, user)


def _poke(config: Config, task: Task) -> None:
    if not dispatch.poke(config):
        log.error("task %s waits: no dispatcher listens on %s (is retrace-server-dispatcher running?)",
                  task.task_id, dispatch.socket_path(config))

