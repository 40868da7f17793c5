"""The WSGI application: routing, and RetraceError -> HTTP in one place."""
from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING, Any, Callable

from webob import Request, Response

from retrace_server.config import CONFIG_PATH_VARIABLE, load_config
from retrace_server.errors import Forbidden, MethodNotAllowed, NotFound, RetraceError
from retrace_server.wsgi import handlers, manager, problems

if TYPE_CHECKING:
    from collections.abc import Iterable
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

    from retrace_server.config import Config

log = logging.getLogger(__name__)

_READ = ("GET", "HEAD")
_TASK = r"/(?P<task_id>[0-9]+)"
_MANAGED = r"/manager/(?P<task_id>[0-9]+)"
_RESULT = r"/results/(?P<name>sys|bt|mod|py-bt|crash-[a-z0-9-]{1,60})"

# A handler: (config, request, the URL's named parts) -> a webob Response.
Handler = Callable[..., Any]

# (path pattern, handler, allowed methods, needs HTTPS when RequireHTTPS);
# which routes check HTTPS follows upstream's scripts.
ROUTES: list[tuple[str, Handler, tuple[str, ...], bool]] = [
    (r"/", handlers.index, _READ, False),
    (r"/settings", handlers.settings, _READ, False),
    (r"/checkpackage", handlers.checkpackage, _READ, False),
    (r"/stats", handlers.stats_page, _READ, False),
    (r"/metrics", handlers.metrics_page, _READ, True),
    (r"/create", handlers.create, ("POST",), True),
    (_TASK + r"/?", handlers.status, _READ, True),
    (_TASK + r"/backtrace", handlers.backtrace, _READ, True),
    (_TASK + r"/log", handlers.task_log, _READ, True),
    (_TASK + r"/exploitable", handlers.exploitable, _READ, True),
    (_TASK + _RESULT, handlers.result, _READ, True),
    (_TASK + r"/delete", handlers.delete, ("GET", "POST", "DELETE"), True),
    # Coreless reports and crash buckets (wsgi.problems); FAF's URL for reports.
    (r"/reports/new/?", problems.new_report, ("POST",), True),
    (r"/reports/attach/?", problems.attach, ("POST",), True),
    (r"/reports/bthash/(?P<bthash>[0-9a-f]{40})/?", problems.bthash_redirect, _READ, False),
    (r"/problems/?", problems.problems, _READ, False),
    (r"/problems/(?P<bthash>[0-9a-f]{1,64})", problems.bucket_page, _READ, False),
    (r"/manager/problems/(?P<bthash>[0-9a-f]{1,64})", problems.managed_bucket_page, _READ, True),
    (r"/manager/problems/(?P<bthash>[0-9a-f]{40})/bugs", problems.add_bug, ("POST",), True),
    # The task manager (wsgi.manager), with upstream's URLs.
    (r"/manager/?", manager.task_list, _READ, True),
    (r"/manager/__custom__", manager.create_from_source, ("POST",), True),
    (r"/manager/__upload__", manager.create_from_upload, ("POST",), True),
    (_MANAGED + r"/?", manager.task_page, _READ, True),
    (_MANAGED + r"/(?P<field>caseno|bugzillano|notify|savenotes)", manager.update_field, ("POST",), True),
    (_MANAGED + r"/keep", manager.keep, ("POST",), True),
    (_MANAGED + r"/restart", manager.restart, ("POST",), True),
    (_MANAGED + r"/delete", manager.delete, ("POST",), True),
    (_MANAGED + r"/(?P<name>backtrace|log|exploitable)", manager.task_file, _READ, True),
    (_MANAGED + _RESULT, manager.result, _READ, True),
    (r"/manager/(?P<name>[^/]{1,255})/start", manager.start, ("GET", "POST"), True),
]
_COMPILED = [(re.compile(pattern), handler, methods, https) for pattern, handler, methods, https in ROUTES]

_METHOD_SENTENCES: dict[tuple[str, ...], str] = {("POST",): "You must use POST method"}
# Where the client is libreport's reporter-ureport, which shows a JSON answer's "error" and cannot parse text.
_JSON_ERRORS = "/reports/"


def route(path: str, method: str) -> tuple[Handler, dict[str, str], bool]:
    """``(handler, url parts, needs_https)`` for a request, or NotFound / MethodNotAllowed."""
    for pattern, handler, methods, https in _COMPILED:
        match = pattern.fullmatch(path)
        if match is None:
            continue
        if method not in methods:
            sentence = _METHOD_SENTENCES.get(methods, f"This URL accepts only {', '.join(methods)}")
            raise MethodNotAllowed(sentence, methods)
        return handler, match.groupdict(), https
    raise NotFound("Invalid URL")


def error_response(err: RetraceError, as_json: bool = False) -> Response:
    """The refusal as text, or as FAF's ``{"error": sentence}`` where libreport reads the answer (/reports/)."""
    if as_json:
        response = Response(status=err.http_status, content_type="application/json", charset="utf-8",
                            text=json.dumps({"error": err.sentence}))
    else:
        response = handlers.text_response(err.sentence, status=err.http_status)
    if isinstance(err, MethodNotAllowed):
        response.headers["Allow"] = ", ".join(err.allowed)
    if err.retry_after is not None:
        response.headers["Retry-After"] = str(err.retry_after)
    return response


def make_app(config: Config) -> WSGIApplication:
    """The WSGI callable serving ``config``'s spool."""

    def application(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        try:
            handler, parts, needs_https = route(request.path_info or "/", request.method)
            if needs_https and config.RequireHTTPS and request.scheme != "https":
                raise Forbidden("You must use HTTPS")
            response = handler(config, request, **parts)
        except RetraceError as err:
            if err.http_status >= 500 and err.http_status not in (503, 507):
                log.error("%s %s failed: %s", request.method, request.path_info, err, exc_info=err.__cause__)
            response = error_response(err, as_json=(request.path_info or "").startswith(_JSON_ERRORS))
        except Exception:
            log.exception("%s %s crashed", request.method, request.path_info)
            response = handlers.text_response(
                "Internal server error; the administrator finds the details in the server log", status=500
            )
        answer: Iterable[bytes] = response(environ, start_response)
        return answer

    return application


class LazyApplication:
    """Loads the config named by the request environment on first use.

    Under mod_wsgi, ``SetEnv RETRACE_SERVER_CONFIG_PATH`` reaches only the
    per-request environ, not ``os.environ`` at import time, so the real
    application is built on the first request (once per process).
    """

    def __init__(self) -> None:
        self._apps: dict[str | None, WSGIApplication] = {}

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get(CONFIG_PATH_VARIABLE)
        app = self._apps.get(path)
        if app is None:
            try:
                app = make_app(load_config(path))
            except RetraceError as err:
                log.error("cannot serve: %s", err)
                response = handlers.text_response(
                    "The server is misconfigured; the administrator finds the details in the server log", status=500
                )
                answer: Iterable[bytes] = response(environ, start_response)
                return answer
            self._apps[path] = app
        return app(environ, start_response)
