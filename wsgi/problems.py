"""Coreless reports in (``POST /reports/new/``, FAF's URL and form) and crash buckets out (``/problems``).

``reporter-ureport`` posts the uReport as the multipart field ``file`` and
reads a JSON answer: ``result`` (the problem is known), ``bthash``,
``message`` and ``reported_to`` (where the bucket's page is).  Beside
those, the answer carries what this server adds: ``core_wanted`` (send the
core for a full retrace), ``count``, the symbolized ``backtrace`` in gdb's
format and the ``frames`` as JSON.
"""
from __future__ import annotations

import html
import json
import logging
import re
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

from webob import Response

from retrace_server.errors import (
    BadRequest,
    ConfigError,
    Forbidden,
    NotFound,
    TemporarilyUnavailable,
    UploadTooLarge,
)
from retrace_server.intake import multipart
from retrace_server.reports import ureport
from retrace_server.reports.buckets import BUG_KINDS, BucketDB, View
from retrace_server.reports.fixes import probable_fix
from retrace_server.reports.triage import triage, triage_symbolic
from retrace_server.wsgi.manager import authenticated_user, see_other

if TYPE_CHECKING:
    from webob import Request

    from retrace_server.config import Config

log = logging.getLogger(__name__)
_BTHASH_LENGTH = 40
_e = html.escape


def _form_file(config: Config, request: Request, what: str) -> bytes:
    """The multipart field ``file`` (how reporter-ureport sends a report and an attachment), at most
    ureport.MAX_BYTES of it."""
    boundary = multipart.boundary_of(request.headers.get("Content-Type"))
    if request.content_length is None:
        raise BadRequest(f"Send the {what} with a Content-Length")
    data = None
    for part in multipart.parts(request.environ["wsgi.input"], request.content_length, boundary,
                                config.min_upload_rate_bytes):
        if part.name == "file" and data is None:
            data = b""
            while chunk := part.read():
                data += chunk
                if len(data) > ureport.MAX_BYTES:
                    raise UploadTooLarge(f"The {what} is larger than {ureport.MAX_BYTES >> 20} MiB, the most this "
                                         "server reads (send fewer frames)")
    if data is None:
        raise BadRequest(f"The form has no 'file' field holding the {what}")
    return data


def new_report(config: Config, request: Request) -> Response:
    data = _form_file(config, request, "uReport")
    report = ureport.parse(data)
    buckets = BucketDB.kept_open(config)
    try:
        if isinstance(report, ureport.SymbolicReport):
            answer, what, where = triage_symbolic(config, report, buckets), report.headline, report.component
        else:
            answer, what, where = triage(config, report, buckets), f"signal {report.signal}", report.executable
    except ConfigError as err:  # the rules file an admin is editing: their log says which and why
        log.error("report refused: %s", err.sentence)
        raise TemporarilyUnavailable("This server cannot read its crash signature rules right now; its "
                                     "administrator finds why in the server's log. Try again later",
                                     retry_after=600) from None
    url = f"{request.application_url}/problems/{answer['bthash']}"
    if answer["known"]:
        message = (f"This crash is known: bucket {answer['bthash']}, seen {answer['count']} times; "
                   f"its backtrace is at {url}")
    else:
        message = f"This crash is new here: bucket {answer['bthash']}"
    if answer["missing_build_ids"]:
        message += (f". Symbolized in part: this server has no debuginfo yet for build-id "
                    f"{', '.join(answer['missing_build_ids'])}; the report is kept and symbolized again when the "
                    f"release's packages change")
    if answer["core_wanted"]:
        message += ". Please send its core for a full backtrace (retrace-client does, unless --no-core)"
    log.info("report of %s in %s (%s): bucket %s, %s in %.3f s", what, where, report.release, answer["bthash"],
             "known" if answer["known"] else "new", answer["seconds"])
    bugs = buckets.attachments(answer["bthash"], BUG_KINDS)
    body = {"result": answer["known"], "bthash": answer["bthash"], "message": message,
            "reported_to": [{"reporter": "Retrace Server", "type": "url", "value": url},
                            *({"reporter": _tracker(bug), "type": "url", "value": _bug_url(bug)} for bug in bugs)],
            "core_wanted": answer["core_wanted"], "count": answer["count"],
            "symbolized": "in part" if answer["missing_build_ids"] else "whole",
            "missing_build_ids": answer["missing_build_ids"], "seconds": answer["seconds"]}
    # The backtrace and frames come rendered as JSON members (an identical report's are rendered once).
    text = f"{json.dumps(body)[:-1]}, {answer['rendered']}}}"
    return Response(status=202, content_type="application/json", charset="utf-8", text=text)


# What reporter-ureport attaches to a bucket (-b BUG, -e EMAIL, -o COMMENT, -l DATA -T TYPE) and what is kept of
# it: bugs (BUG_KINDS) are shown with the bucket; e-mail addresses and comments only in the task manager.
_ATTACHMENT_RULES = {
    "RHBZ": (re.compile(r"[1-9][0-9]{0,9}"), "a Red Hat Bugzilla bug number"),
    "url": (re.compile(r"https?://[!#-~]{1,2040}"), "an http or https URL (no spaces)"),
    "email": (re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,190}\.[A-Za-z]{2,24}"), "an e-mail address"),
    "comment": (re.compile(r"[^\x00-\x08\x0b-\x1f\x7f]{1,4096}"), "text of at most 4096 characters"),
}


def _tracker(bug: dict[str, Any]) -> str:
    return "Bugzilla" if bug["type"] == "RHBZ" else urllib.parse.urlsplit(bug["value"]).hostname or "URL"


def _bug_url(bug: dict[str, Any]) -> str:
    return f"https://bugzilla.redhat.com/show_bug.cgi?id={bug['value']}" if bug["type"] == "RHBZ" else str(bug["value"])


def attach(config: Config, request: Request) -> Response:
    """``POST /reports/attach/`` (FAF's, libreport's reporter-ureport -a BTHASH with -b, -e, -o or -l/-T):
    ``{"bthash", "type", "data"}`` in the form's ``file``; the answer is ``{"result": true}``."""
    try:
        document = json.loads(_form_file(config, request, "attachment"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadRequest("The attachment is not JSON") from None
    if not isinstance(document, dict):
        raise BadRequest("The attachment must be a JSON object with bthash, type and data")
    bthash, kind, data = (document.get(key) for key in ("bthash", "type", "data"))
    if not isinstance(bthash, str) or not re.fullmatch(r"[0-9a-f]{40}", bthash):
        raise BadRequest("The attachment's bthash must be the 40 hexadecimal digits a report was answered with")
    if kind not in _ATTACHMENT_RULES:
        raise BadRequest(f"Attachments of type {str(kind)[:40]!r} are not kept here; this server keeps "
                         f"{', '.join(_ATTACHMENT_RULES)}")
    rule, described = _ATTACHMENT_RULES[kind]
    if isinstance(data, int) and not isinstance(data, bool):
        data = str(data)
    if not isinstance(data, str) or not rule.fullmatch(data.strip()):
        raise BadRequest(f"The data of a {kind} attachment must be {described}")
    try:
        with BucketDB.for_config(config) as buckets:
            added = buckets.attach(bthash, kind, data.strip(), request.remote_user)
    except KeyError:
        raise NotFound(f"There is no crash bucket {bthash} on this server") from None
    log.info("bucket %s: %s attachment %s", bthash, kind, "added" if added else "already there")
    return Response(status=202, content_type="application/json", charset="utf-8", text=json.dumps({"result": True}))


def add_bug(config: Config, request: Request, bthash: str) -> Response:
    """The manager's form on a bucket's page: a bug an engineer filed for it (a URL of any tracker, or a Red Hat
    Bugzilla number), kept with the engineer's name."""
    user = authenticated_user(config, request, changes=True)
    value = (request.POST.get("bug") or "").strip()
    kind = "RHBZ" if value.isdigit() else "url"
    if not _ATTACHMENT_RULES[kind][0].fullmatch(value):
        raise BadRequest("A bug is an http or https URL (Bugzilla, Jira, GitLab...) or a Red Hat Bugzilla number")
    try:
        with BucketDB.for_config(config) as buckets:
            buckets.attach(bthash, kind, value, user)
    except KeyError:
        raise NotFound("There is no such bucket") from None
    log.info("bucket %s: bug %s attached by %s in the task manager", bthash, value, user)
    return see_other(request, f"/problems/{bthash}")


def bthash_redirect(config: Config, request: Request, bthash: str) -> Response:
    """``/reports/bthash/<bthash>/``: the URL libreport keeps in reported_to, sent to the bucket's page."""
    place = "/problems/" if config.ProblemsPublic == "all" else "/manager/problems/"
    return Response(status=302, location=f"{request.application_url}{place}{bthash}")


def _when(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(epoch)) if epoch else ""


_STYLE = ("body{font-family:sans-serif;max-width:72em;margin:2em auto;line-height:1.4;color:#222;padding:0 1em}"
          "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{padding:.25em .8em;border-bottom:1px solid #ddd;"
          "text-align:left;vertical-align:top}td.n{text-align:right;font-variant-numeric:tabular-nums}"
          "pre{background:#f6f6f6;padding:.6em;overflow:auto;font-size:.85em}svg rect{fill:#4a7fb0}")


def _page(title: str, body: str) -> Response:
    return Response(content_type="text/html", charset="utf-8", text=(
        f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{_STYLE}</style></head>\n<body>\n<h1>{_e(title)}</h1>\n{body}\n</body></html>\n"))


def _wants_json(request: Request) -> bool:
    return bool(request.GET.get("format") == "json")


_SORTS = ("total", "window", "growth")
_VIEW_WORD = re.compile(r"[A-Za-z0-9._+~-]{1,128}")


_VERSION = re.compile(r"[A-Za-z0-9._+~:-]{1,128}")


def _view(request: Request) -> View:
    """The triage view the query asks for (release, component, arch, version range, days, sort), or BadRequest
    naming the part."""
    words: dict[str, str | None] = {}
    for name in ("release", "component", "arch"):
        value = request.GET.get(name, "").strip() or None
        if value is not None and not _VIEW_WORD.fullmatch(value):
            raise BadRequest(f"The {name} to show must be a name like fedora-41-x86_64, crasher or x86_64")
        words[name] = value
    for name in ("version_from", "version_to"):
        value = request.GET.get(name, "").strip() or None
        if value is not None and not _VERSION.fullmatch(value):
            raise BadRequest(f"{name} must be a package version like 1.2-3.fc41 or 1:2.36-9+deb12u4")
        words[name] = value
    days_text = request.GET.get("days", "7").strip()
    if not days_text.isdigit() or not 1 <= int(days_text) <= 366:
        raise BadRequest("days must be a whole number from 1 to 366")
    sort = request.GET.get("sort", "total")
    if sort not in _SORTS:
        raise BadRequest(f"sort must be one of {', '.join(_SORTS)}")
    return View(words["release"], words["component"], words["arch"], int(days_text), sort,
                version_from=words["version_from"], version_to=words["version_to"])


def problems(config: Config, request: Request) -> Response:
    """Buckets by count: first and last seen, releases, architectures, versions (public)."""
    page = request.GET.get("page", "1")
    page = int(page) if page.isdigit() and int(page) > 0 else 1
    has_bug = {"yes": True, "no": False}.get(request.GET.get("bug", ""))
    view = _view(request)
    with BucketDB.for_config(config) as buckets:
        rows = buckets.buckets(limit=100, offset=(page - 1) * 100, has_bug=has_bug, view=view)
        totals = buckets.totals()
    # The public list shows what the server derived, never a report's own words: the package name and
    # versions the release's index confirmed, releases it serves, counts and dates.
    shown = ("bthash", "type", "component", "count", "first_seen", "last_seen", "full_task", "releases",
             "architectures", "versions", "bugs", "recent", "before")
    rows = [{key: row[key] for key in shown} for row in rows]
    if _wants_json(request):
        view_fields = {"release": view.release, "component": view.component, "arch": view.arch, "days": view.days,
                       "sort": view.sort, "version_from": view.version_from, "version_to": view.version_to}
        return Response(content_type="application/json", charset="utf-8",
                        text=json.dumps({**totals, "view": view_fields, "buckets": rows}, indent=1))
    details = "/problems/" if config.ProblemsPublic == "all" else "/manager/problems/"
    table = "".join(
        f'<tr><td><a href="{details}{row["bthash"]}">{row["bthash"][:12]}</a></td><td>{_e(row["type"])}</td>'
        f'<td>{_e(row["component"] or "unknown")}</td>'
        f'<td class="n">{row["count"]}</td><td>{_when(row["first_seen"])}</td><td>{_when(row["last_seen"])}</td>'
        f'<td>{_e(row["versions"] or "")}</td><td>{_e(row["releases"] or "")}</td><td>{_e(row["architectures"] or "")}'
        f'</td><td>{"yes" if row["full_task"] else "no"}</td><td class="n">{row["bugs"]}</td>'
        f'<td class="n">{row["recent"]}</td><td class="n">{row["recent"] - row["before"]:+d}</td></tr>' for row in rows)
    shown_filter = {True: "with a bug", False: "without a bug", None: "all"}[has_bug]
    form = ('<form id="view" method="get" action="/problems">'
            + "".join(f'<label>{label} <input name="{name}" size="18" value="{_e(value or "")}"></label> '
                      for label, name, value in (("Release", "release", view.release),
                                                 ("Component", "component", view.component),
                                                 ("Architecture", "arch", view.arch),
                                                 ("Versions from", "version_from", view.version_from),
                                                 ("to", "version_to", view.version_to)))
            + f'<label>Days <input name="days" size="4" value="{view.days}"></label> <label>Sort <select name="sort">'
            + "".join(f'<option{" selected" if view.sort == sort else ""}>{sort}</option>' for sort in _SORTS)
            + '</select></label> <button type="submit">Show</button></form>')
    body = (f'<p id="totals">{totals["reports"]} reports in {totals["buckets"]} buckets.</p>{form}'
            f'<p id="filter">Showing {shown_filter}: <a href="/problems">all</a> · <a href="/problems?bug=yes">with a '
            'bug</a> · <a href="/problems?bug=no">without a bug</a></p>'
            '<table id="buckets"><tr><th>Bucket</th><th>Type</th><th>Package</th><th>Count</th><th>First seen</th>'
            '<th>Last seen</th><th>Versions</th><th>Releases</th><th>Architectures</th><th>Full retrace</th>'
            f"<th>Bugs</th><th>Last {view.days} days</th><th>Growth</th></tr>{table}</table>")
    return _page("Crash buckets", body)


def _bucket(config: Config, request: Request, bthash: str, managed: bool = False) -> Response:
    if len(bthash) != _BTHASH_LENGTH or any(char not in "0123456789abcdef" for char in bthash):
        raise NotFound("There is no such bucket")
    with BucketDB.for_config(config) as buckets:
        bucket = buckets.bucket(bthash)
        if bucket is None:
            raise NotFound("There is no such bucket")
        occurrences, days = buckets.occurrences(bthash), buckets.per_day(bthash)
        attachments = buckets.attachments(bthash, None if managed else BUG_KINDS)
        fix = probable_fix(config, buckets, bucket)
    if _wants_json(request):
        return Response(content_type="application/json", charset="utf-8",
                        text=json.dumps({**bucket, "occurrences": occurrences, "per_day": days,
                                         "attachments": attachments, "probable_fix": fix}, indent=1))
    most = max(count for _, count in days) or 1
    bars = "".join(f'<rect x="{index * 20}" y="{100 - 100 * count // most}" width="16" height="{100 * count // most}">'
                   f"<title>{day}: {count}</title></rect>" for index, (day, count) in enumerate(days))
    rows = "".join(
        f'<tr><td>{_when(row["time"])}</td><td>{_e(row["kind"])}</td><td>{_e(row["package"] or "")}</td>'
        f'<td>{_e(row["release"] or "")}</td><td>{_e(row["arch"] or "")}</td><td>{_e(row["task_id"] or "")}</td></tr>'
        for row in occurrences)
    full = f'Full retrace: task {_e(bucket["full_task"])}.' if bucket["full_task"] else "No full retrace yet."
    reported = "".join(
        f'<li><a href="{_e(_bug_url(item))}" rel="noreferrer">{_e(_tracker(item))}: {_e(item["value"])}</a></li>'
        if item["type"] in BUG_KINDS else f"<li>{_e(item['type'])}: {_e(item['value'])}</li>" for item in attachments)
    reported = f'<h2>Reported as</h2><ul id="reported">{reported or "<li>nothing yet</li>"}</ul>'
    if managed:
        reported += (f'<form id="add-bug" method="post" action="/manager/problems/{bthash}/bugs"><label>Bug (URL or '
                     'Red Hat Bugzilla number) <input name="bug" size="60" required></label> '
                     '<button type="submit">Attach</button></form>')
    body = (f'<p>{_e(bucket["executable"])}: {bucket["count"]} times, first {_when(bucket["first_seen"])}, last '
            f'{_when(bucket["last_seen"])}. {full}</p>{reported}{_fix_section(bucket, fix)}'
            f'<h2>Signature</h2><pre id="signature">{_e(bucket["signature"])}'
            f'</pre><h2>Per day (30 days)</h2><svg id="per-day" width="600" height="100">{bars}</svg>'
            f'<h2>Backtrace</h2><pre id="backtrace">{_e(bucket["backtrace"])}</pre><h2>Reports and retraces</h2>'
            f'<table id="occurrences"><tr><th>When (UTC)</th><th>Kind</th><th>Package</th><th>Release</th>'
            f"<th>Architecture</th><th>Task</th></tr>{rows}</table>")
    return _page(f"Bucket {bthash}", body)


def _fix_section(bucket: dict[str, Any], fix: dict[str, Any]) -> str:
    """The versions that crashed this way, the one that probably fixed it and each release's newest."""
    if not fix["crashed"]:
        return ""
    crashed = ", ".join(f"{_e(version)} ({count})" for version, count in fix["crashed"].items())
    verdict = (f'Probably fixed in {_e(bucket["component"])}-{_e(fix["probably_fixed_in"])}: crashes of that '
               "version and later are reported, none of them in this bucket." if fix["probably_fixed_in"] else
               "No newer version of the package is reported without this crash.")
    newest = "".join(f"<li>{_e(release)}: {_e(version)}</li>" for release, version in fix["newest"].items())
    return (f'<h2>Versions</h2><p id="crashed-versions">Crashed in {crashed}.</p><p id="probable-fix">{verdict}</p>'
            + (f'<ul id="newest">{newest}</ul>' if newest else ""))


def bucket_page(config: Config, request: Request, bthash: str) -> Response:
    """A bucket's backtrace and reports: public with ProblemsPublic = all, else in the task manager."""
    if config.ProblemsPublic != "all":
        raise Forbidden("A bucket's details are shown in the task manager (/manager/problems/...); this server keeps "
                        "them from the public (ProblemsPublic = counts)")
    return _bucket(config, request, bthash)


def managed_bucket_page(config: Config, request: Request, bthash: str) -> Response:
    authenticated_user(config, request)
    return _bucket(config, request, bthash, managed=True)
