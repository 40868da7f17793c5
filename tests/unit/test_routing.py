"""Handlers through the WSGI app with webob's Request.blank: no server needed."""

import dataclasses
import io
import re
import tarfile

import pytest
from webob import Request

from retrace_server.config import Config
from retrace_server.errors import MethodNotAllowed, NotFound
from retrace_server.protocol import from_header_text, header_text
from retrace_server.wsgi import handlers
from retrace_server.wsgi.app import make_app, route

CORE = b"\x7fELF\x02\x01\x01" + bytes(9) + b"\x04\x00" + bytes(46)


@pytest.fixture
def config(tmp_path):
    (tmp_path / "repos" / "fedora-41-x86_64" / "repodata").mkdir(parents=True)
    (tmp_path / "spool").mkdir()
    return Config(SaveDir=tmp_path / "spool", RepoDir=tmp_path / "repos", LogDir=tmp_path, MinStorageLeft=0)


# No dispatcher listens here: created tasks stay in the queue, where these tests look at them.
def call(config, path, method="GET", scheme="https", **kwargs):
    request = Request.blank(path, method=method, base_url=f"{scheme}://localhost", **kwargs)
    return request.get_response(make_app(config))


def archive(**files):
    files = {"coredump": CORE, "executable": b"/usr/bin/crasher", "package": b"crasher-1.0-1.fc41", **files}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def create(config, body=None, **headers):
    body = archive() if body is None else body
    return call(config, "/create", method="POST", body=body,
                headers={"Content-Type": "application/x-tar", **headers})


def test_routes_map_task_urls_with_their_ids():
    handler, parts, https = route("/123456789/backtrace", "GET")
    assert (handler, parts, https) == (handlers.backtrace, {"task_id": "123456789"}, True)


def test_status_route_accepts_a_trailing_slash():
    assert route("/123456789/", "GET")[0] is handlers.status


def test_unknown_path_is_not_found():
    with pytest.raises(NotFound, match="Invalid URL"):
        route("/123456789/start", "GET")


def test_wrong_method_lists_the_allowed_ones():
    with pytest.raises(MethodNotAllowed) as refused:
        route("/create", "GET")
    assert refused.value.allowed == ("POST",)


def test_settings_report_slots_and_releases(config):
    response = call(config, "/settings")
    assert response.status_int == 200
    assert "max_running_tasks 25" in response.text
    assert response.text.endswith("supported_releases fedora-41-x86_64\nsupported_architectures x86_64")


def test_create_then_status_is_pending(config):
    created = create(config)
    assert created.status_int == 201
    status = call(config, f"/{created.headers['X-Task-Id']}",
                  headers={"X-Task-Password": created.headers["X-Task-Password"]})
    assert status.headers["X-Task-Status"] == "PENDING"
    assert status.text == "Waiting in the queue for a free worker (position 1)"


def test_plain_http_is_refused_when_https_is_required(config):
    response = call(config, "/create", method="POST", scheme="http")
    assert (response.status_int, response.text) == (403, "You must use HTTPS")


def test_plain_http_is_served_when_https_is_not_required(config):
    relaxed = dataclasses.replace(config, RequireHTTPS=False)
    response = call(relaxed, "/create", method="POST", scheme="http", body=archive(),
                    headers={"Content-Type": "application/x-tar"})
    assert response.status_int == 201


def test_settings_are_served_over_plain_http_as_upstream(config):
    assert call(config, "/settings", scheme="http").status_int == 200


def test_finished_task_reports_finished_status_and_backtrace(config):
    created = create(config)
    task_dir = config.SaveDir / created.headers["X-Task-Id"]
    (task_dir / "retrace_backtrace").write_text("#0  crash_in_library ()")
    (task_dir / "status").write_text("6")
    headers = {"X-Task-Password": created.headers["X-Task-Password"]}
    status = call(config, f"/{created.headers['X-Task-Id']}", headers=headers)
    assert (status.headers["X-Task-Status"], status.text) == ("FINISHED_SUCCESS", "Retrace job finished successfully")
    assert call(config, f"/{created.headers['X-Task-Id']}/backtrace", headers=headers).text == "#0  crash_in_library ()"


def test_delete_removes_a_finished_task_when_allowed(config):
    allowed = dataclasses.replace(config, AllowAPIDelete=True)
    created = create(allowed)
    task_id, headers = created.headers["X-Task-Id"], {"X-Task-Password": created.headers["X-Task-Password"]}
    deleted = call(allowed, f"/{task_id}/delete", headers=headers)
    assert (deleted.status_int, deleted.text) == (200, "All task data were deleted successfully")
    assert call(allowed, f"/{task_id}", headers=headers).status_int == 404


def test_delete_of_a_running_task_is_409(config):
    allowed = dataclasses.replace(config, AllowAPIDelete=True)
    created = create(allowed)
    (allowed.SaveDir / created.headers["X-Task-Id"] / "status").write_text("2")
    deleted = call(allowed, f"/{created.headers['X-Task-Id']}/delete",
                   headers={"X-Task-Password": created.headers["X-Task-Password"]})
    assert deleted.status_int == 409


def test_unexpected_exception_is_a_500_without_details(config, monkeypatch):
    def explode(config, request):
        raise RuntimeError(f"secret path {config.SaveDir}")

    monkeypatch.setattr("retrace_server.wsgi.app._COMPILED", [(re.compile("/settings"), explode, ("GET",), False)])
    response = call(config, "/settings")
    assert response.status_int == 500
    assert str(config.SaveDir) not in response.text


def test_index_escapes_release_names(config):
    response = call(config, "/")
    assert "fedora-41-x86_64" in response.text
    assert response.content_type == "text/html"


def test_checkpackage_without_nvr_is_403(config):
    response = call(config, "/checkpackage", headers={"X-Package-Arch": "x86_64"})
    assert (response.status_int, response.text) == (403, "Required header 'X-Package-NVR' not found")


def test_checkpackage_with_bad_release_is_403(config):
    response = call(config, "/checkpackage", headers={
        "X-Package-NVR": "bash-5.2-1.fc41", "X-Package-Arch": "x86_64", "X-OS-Release": "../../etc"})
    assert (response.status_int, response.text) == (403, "OS release contains illegal characters")


@pytest.mark.parametrize("reason", ["release fedora-40-x86_64 is not served", "maps '/tmp/\u2028x' and 100% of\r\nit",
                                    "x" * 5000])
def test_a_failure_reason_header_is_one_latin1_line_that_decodes_back(reason):
    value = header_text(reason)
    assert value.isascii() and value.isprintable() and len(value) <= 3 * 4000
    assert from_header_text(value) == reason[:4000]
