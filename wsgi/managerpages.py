"""The task manager's HTML: plain server-rendered pages that work without JavaScript.

Upstream's ``retrace-server-task`` reads the task page line by line, so a
few lines keep upstream's shape exactly (and tests pin them):
``<title>Task #N ...`` with a space after the number; ``<th>Status:</th>``
alone with ``<td>status</td>`` alone on the next line; ``<th>Md5sum:</th>``
with the sum ending its line; and each of case number, bugzilla numbers and
e-mail on one line whose first ``value="..."`` is the current value, or
the button's own label (``Update case no.``) when there is none.
Everything that came from a task (file names, notes, logs) is escaped.
"""
from __future__ import annotations

import html
import time
import urllib.parse
from typing import TYPE_CHECKING

from retrace_server.environments.session import Session
from retrace_server.intake.remote import Source
from retrace_server.tasks import casedata
from retrace_server.tasks.task import MD5_NAME, REMOTE_NAME, TaskStatus, TaskType
from retrace_server.wsgi.handlers import TASK_FILES

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from retrace_server.config import Config
    from retrace_server.intake.remote import DropListing
    from retrace_server.tasks.task import Task
    from retrace_server.tasks.tasklist import Listing

_e = html.escape

TYPE_NAMES = {
    TaskType.COREDUMP: "Coredump retrace",
    TaskType.DEBUG: "Coredump retrace - debug",
    TaskType.VMCORE: "VMcore retrace",
    TaskType.COREDUMP_INTERACTIVE: "Coredump retrace - interactive",
    TaskType.VMCORE_INTERACTIVE: "VMcore retrace - interactive",
}
_STATUS_LABELS = {"": "any status", "running": "running", "queued": "queued", "finished": "finished successfully",
                  "failed": "failed"}
_PAGE_VIEW_LIMIT = 256 * 1024

_STYLE = """body{font-family:sans-serif;max-width:72em;margin:2em auto;line-height:1.4;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{padding:.25em .8em;border-bottom:1px solid #ddd;text-align:left;
vertical-align:top}td.n{text-align:right;font-variant-numeric:tabular-nums}th{white-space:nowrap}
pre{background:#f6f6f6;padding:.6em;overflow:auto;max-height:30em;font-size:.85em}
form.inline{display:inline}input,select,textarea,button{font:inherit;margin:.15em .3em .15em 0}
textarea{width:100%;height:8em}.failed{color:#a00}.ok{color:#070}section{margin-bottom:2em}
nav a{margin-right:1em}.muted{color:#666}"""


def _page(title: str, body: str, user: str) -> str:
    # The <title> line stays alone with a space after "#N": upstream's CLI splits it to find the id.
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">\n<title>{_e(title)} </title>\n"
            f"<style>{_STYLE}</style></head>\n<body>\n"
            f"<nav><a href=\"/manager\">Task manager</a><a href=\"/problems\">Crash buckets</a><a href=\"/stats\">Statistics</a>"
            f"<span class=\"muted\">Signed in as {_e(user)}</span></nav>\n{body}\n</body></html>\n")


def _size(nbytes: float | None) -> str:
    if nbytes is None:
        return "unknown size"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""


def _age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds // length:.0f} {unit}"
    return f"{seconds:.0f} s"


def _when(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else ""


def status_text(task: Task) -> str:
    """The status as upstream's manager shows it (download progress appended)."""
    status = task.status
    if status is None:
        return "Waiting in the queue for a free worker"
    text = status.sentence
    progress = task.read_text("progress", 64)
    if status == TaskStatus.DOWNLOADING and progress:
        text += f" {progress.strip()}"
    return text


# -- the list ---------------------------------------------------------------------------


def _filters_form(filters: Mapping[str, str]) -> str:
    options = "".join(f'<option value="{value}"{" selected" if filters["status"] == value else ""}>{label}</option>'
                      for value, label in _STATUS_LABELS.items())
    return (f'<form method="get" action="/manager" id="filters"><label>Status <select name="status">{options}</select>'
            f'</label> <label>Case no. <input name="case" size="10" value="{_e(filters["case"])}"></label> '
            f'<label>Search <input name="q" size="24" value="{_e(filters["q"])}"></label> '
            '<button type="submit">Filter</button></form>')


def _rows(listing: Listing, now: float) -> str:
    if not listing.rows:
        return "<p>No tasks match.</p>"
    head = ("<tr><th>Task</th><th>Type</th><th>Status</th><th>Age</th><th>Case no.</th>"
            "<th>Package, kernel or source</th><th>Size</th></tr>")
    cells = []
    for row in listing.rows:
        status = row.status.sentence if row.status is not None else "Queued"
        css = "failed" if row.status == TaskStatus.FAIL else "ok" if row.status == TaskStatus.SUCCESS else ""
        subject = Source.from_line(row.subject).shown if row.subject.startswith(("FTP ", "/", "http", "ftp:")) \
            else row.subject
        cells.append(
            f'<tr><td><a href="/manager/{row.task_id}">{row.task_id}</a></td><td>{_e(TYPE_NAMES[row.task_type])}</td>'
            f'<td class="{css}">{_e(status)}</td><td class="n">{_age(now - row.queued_time if row.queued_time else None)}'
            f'</td><td>{_e(row.caseno)}</td><td>{_e(subject[:120])}</td><td class="n">{_size(row.size)}</td></tr>')
    return f'<table id="tasks">{head}{"".join(cells)}</table>'


def _pager(listing: Listing, filters: Mapping[str, str]) -> str:
    if listing.pages <= 1:
        return ""
    links = []
    for page in (listing.page - 1, listing.page + 1):
        if 1 <= page <= listing.pages:
            query = urllib.parse.urlencode({**{k: v for k, v in filters.items() if v}, "page": page})
            links.append(f'<a href="/manager?{_e(query)}">{"Previous" if page < listing.page else "Next"} page</a>')
    narrow = " More tasks match than are shown here: narrow the search." if listing.more else ""
    return f'<p id="pages">Page {listing.page} of {listing.pages}.{narrow} {" ".join(links)}</p>'


def _type_fields(config: Config) -> str:
    vmcore = '<option value="vmcore" selected>vmcore (kernel)</option>' if config.AllowVMCoreTask else ""
    return (f'<label>Type <select name="task_type">{vmcore}<option value="coredump">coredump (process)</option>'
            '</select></label> <label>Kernel version <input name="kernelver" size="28" '
            'placeholder="empty: read it from the vmcore"></label><br>'
            '<label>Case no. <input name="caseno" size="10"></label> <label>E-mail when done <input name="notify" '
            'size="30"></label><br><span class="muted">For a bare coredump:</span> <label>package <input '
            'name="package" size="24"></label> <label>executable <input name="executable" size="24"></label> '
            '<label>release <input name="os_release" size="24"></label><br>'
            f'<label><input type="checkbox" name="md5sum"{" checked" if config.CalculateMd5 else ""}> '
            'Calculate the md5sum</label> <label><input type="checkbox" name="debug"> Be more verbose in the log</label>')


def _create_forms(config: Config) -> str:
    where = ["an http(s) or ftp URL"]
    if config.import_dirs:
        where.append("a path under " + ", ".join(_e(str(directory)) for directory in config.import_dirs))
    return (f'<section id="create"><h2>New task</h2><form method="post" action="/manager/__custom__" id="create-url">'
            f'<label>Core or vmcore ({" or ".join(where)}) <input name="custom_url" size="60" required></label><br>'
            f'{_type_fields(config)}<br><button type="submit">Create task</button></form>'
            '<h3>Upload from this computer</h3>'
            '<form method="post" action="/manager/__upload__" enctype="multipart/form-data" id="create-upload">'
            f'{_type_fields(config)}<br><label>File <input type="file" name="file" required></label> '
            '<button type="submit">Upload and create task</button></form></section>')


def _drop_section(config: Config, drop: DropListing | str | None) -> str:
    if drop is None:
        return ""
    if isinstance(drop, str):
        return f'<section id="ftp"><h2>FTP drop</h2><p class="failed">{_e(drop)}</p></section>'
    if not drop:
        return '<section id="ftp"><h2>FTP drop</h2><p>The FTP drop holds no files.</p></section>'
    rows = "".join(
        f'<tr><td>{_e(name)}</td><td class="n">{_size(size)}</td><td><form class="inline" method="post" '
        f'action="/manager/{_e(urllib.parse.quote(name, safe=""))}/start"><select name="task_type">'
        '<option value="vmcore">vmcore</option><option value="coredump">coredump</option></select> '
        '<input name="caseno" size="8" placeholder="case no."> <button type="submit">Start task</button></form></td></tr>'
        for name, size in drop)
    return f'<section id="ftp"><h2>FTP drop</h2><table><tr><th>File</th><th>Size</th><th></th></tr>{rows}</table></section>'


def confirm_start_page(name: str, query: Iterable[tuple[str, str]], user: str) -> str:
    """What a browser that followed a link to ``/manager/<file>/start`` sees: a GET never starts a task for a
    browser, the button posts what the link carried."""
    hidden = "".join(f'<input type="hidden" name="{_e(key)}" value="{_e(value)}">' for key, value in query)
    body = (f'<h1>Start a task from {_e(name)}?</h1><form method="post" action="/manager/'
            f'{_e(urllib.parse.quote(name, safe=""))}/start" id="confirm-start">{hidden}'
            f'<p>The file {_e(name)} on the FTP drop becomes a new task.</p>'
            '<button type="submit">Start task</button> <a href="/manager">Back to the task list</a></form>')
    return _page(f"Start a task from {name}", body, user)


def list_page(config: Config, listing: Listing, filters: Mapping[str, str], drop: DropListing | str | None,
              user: str) -> str:
    now = time.time()
    counted = f"{'more than ' if listing.more else ''}{listing.total}"
    body = (f"<h1>Retrace Server task manager</h1>\n{_create_forms(config)}\n{_drop_section(config, drop)}\n"
            f'<section id="list"><h2>Tasks ({counted})</h2>{_filters_form(filters)}{_rows(listing, now)}'
            f"{_pager(listing, filters)}</section>")
    return _page("Retrace Server task manager", body, user)


# -- one task ---------------------------------------------------------------------------


def _field_line(task_id: str, action: str, name: str, value: str | None, label: str) -> str:
    """One line; its first value= is the current value, or the button's label when there is none."""
    current = f' value="{_e(value)}"' if value else ""
    return (f'<form class="inline" method="post" action="/manager/{task_id}/{action}"><input type="text" '
            f'name="{name}" size="30"{current}> <input type="submit" value="{label}"></form>')


def _case_link(config: Config, caseno: int | None) -> str:
    if not caseno or not config.CaseNumberURL:
        return ""
    url = config.CaseNumberURL.replace("{caseno}", str(caseno)).replace("%d", str(caseno))
    return f' <a href="{_e(url)}">case {caseno}</a>'


def _results_links(task: Task) -> str:
    links = []
    for name, (what, _limit, _missing) in TASK_FILES.items():
        if (task.path / what).is_file():
            links.append(f'<a href="/manager/{task.task_id}/{name}">{name}</a>')
    if task.results_dir.is_dir():
        for entry in sorted(task.results_dir.iterdir()):
            if entry.name in ("sys", "bt", "mod", "py-bt") or entry.name.startswith("crash-"):
                links.append(f'<a href="/manager/{task.task_id}/results/{_e(entry.name)}">{_e(entry.name)}</a>')
    return " ".join(links) or "none yet"


def _retention(config: Config, task: Task) -> str:
    when, why = casedata.expiry(task, config, task.status == TaskStatus.FAIL)
    kept = f"until {_when(when)} ({_e(why)})" if when else _e(why)
    return (f'{kept} <form class="inline" method="post" action="/manager/{task.task_id}/keep">'
            f'<input name="days" size="4" value="30"> days from now <input type="submit" value="Keep longer"></form>')


def _interactive(task: Task) -> str:
    """Upstream's instructions for a task that keeps its environment: the command that reopens it on the server."""
    if not task.task_type.keeps_environment:
        return ""
    session = Session.load(task)
    if session is None:
        said = "Its debugger session is not ready yet: the worker has not reached the backtrace stage."
    else:
        said = (f"On the server, as root: <code>retrace-server-interact {task.task_id} {session.debugger}</code> "
                f"(or <code>retrace-server-interact {task.task_id} shell</code>).")
    return f'<section id="interactive"><h2>Interactive session</h2><p>{said}</p></section>'


def task_page(config: Config, task: Task, user: str, may_delete: bool) -> str:
    tid = task.task_id
    data = casedata.CaseData.read(task)
    status = task.status
    rows = [f"<tr><th>Type:</th><td>{_e(TYPE_NAMES[task.task_type])}</td></tr>",
            # Two lines, as upstream: its CLI reads the line after <th>Status:</th>.
            f'<tr><th>Status:</th>\n<td>{_e(status_text(task))}</td>\n</tr>']
    if status == TaskStatus.FAIL and task.failure_reason:
        rows.append(f'<tr><th>Why it failed:</th><td class="failed" id="reason">{_e(task.failure_reason)}</td></tr>')
    source = task.read_text(REMOTE_NAME, 4096)
    if source and source.strip():
        rows.append(f"<tr><th>Source:</th><td>{_e(Source.from_line(source.splitlines()[0]).shown)}</td></tr>")
    for label, name in (("Kernel:", "kernelver"), ("Package:", "crash/package"), ("Executable:", "crash/executable")):
        value = task.read_text(name, 512)
        if value and value.strip():
            rows.append(f"<tr><th>{label}</th><td>{_e(value.strip())}</td></tr>")
    for label, name in (("Queued:", "queued_time"), ("Started:", "started_time"), ("Finished:", "finished_time")):
        if task.timestamp(name):
            rows.append(f"<tr><th>{label}</th><td>{_when(task.timestamp(name))}</td></tr>")
    md5 = task.read_text(MD5_NAME, 200)
    if md5 and md5.split():
        rows.append(f"<tr><th>Md5sum:</th><td>{_e(md5.split()[0])}\n</td></tr>")
    caseno = str(data.caseno) if data.caseno is not None else ""
    rows += [
        f"<tr><th>Case no.:</th><td>{_field_line(tid, 'caseno', 'caseno', caseno, 'Update case no.')}"
        f"{_case_link(config, data.caseno)}</td></tr>",
        f"<tr><th>Bugzilla no.:</th><td>"
        f"{_field_line(tid, 'bugzillano', 'bugzillano', ', '.join(map(str, data.bugzillano)), 'Update bugzilla no.')}"
        "</td></tr>",
        f"<tr><th>E-mail notification:</th><td>"
        f"{_field_line(tid, 'notify', 'notify', ', '.join(data.notify), 'Update e-mail(s)')}</td></tr>",
        f"<tr><th>Kept:</th><td>{_retention(config, task)}</td></tr>",
        f"<tr><th>Results:</th><td>{_results_links(task)}</td></tr>",
    ]
    ended = status is not None and status.is_final
    actions = ""
    if ended:
        kernel = ('<label>Kernel version <input name="kernelver" size="28"></label> '
                  if task.task_type.is_vmcore else "")
        actions += (f'<section id="restart"><h2>Restart</h2><form method="post" action="/manager/{tid}/restart">'
                    f'{kernel}<label><input type="checkbox" name="debug"> Be more verbose in the log</label> '
                    '<label>New e-mail <input name="notify" size="30"></label> '
                    '<button type="submit">Restart task</button></form></section>')
        if may_delete:
            actions += (f'<section id="delete"><h2>Delete</h2><form method="post" action="/manager/{tid}/delete">'
                        '<label><input type="checkbox" name="sure" required> I am sure</label> '
                        '<button type="submit">Delete task</button></form></section>')
    notes = _interactive(task) + (f'<section id="notes"><h2>Notes</h2><form method="post" action="/manager/{tid}/savenotes">'
             f'<textarea name="notes">{_e(data.notes)}</textarea><br><input type="submit" value="Update notes">'
             "</form></section>")
    views = ""
    for title, name in (("Backtrace", "retrace_backtrace"), ("Log", "retrace_log")):
        text = task.read_text(name, _PAGE_VIEW_LIMIT)
        if text:
            views += f'<section id="{name}"><h2>{title}</h2><pre>{_e(text)}</pre></section>'
    body = (f"<h1>Task #{tid}</h1>\n<table id=\"facts\">\n" + "\n".join(rows) + "\n</table>\n"
            f"{notes}{actions}{views}")
    return _page(f"Task #{tid} - Retrace Server task manager", body, user)
