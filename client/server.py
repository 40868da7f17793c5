"""The retrace server's HTTP protocol, as abrt-retrace-client spoke it.

Every method maps one request; anything but the expected answer raises
ServerRefused with the sentence a person should read (the server's own
sentence where it sent one), so that this client also works against an old
upstream server.
"""

from __future__ import annotations

import dataclasses
import json
import socket
from typing import TYPE_CHECKING, Any

import requests
import urllib3

from retrace_server.protocol import FAILURE_REASON, from_header_text

if TYPE_CHECKING:
    from collections.abc import Callable, Sized

XZ_TAR = "application/x-xz-compressed-tar"
ZSTD_TAR = "application/x-zstd-compressed-tar"
_TIMEOUT = 60
_UPLOAD_TIMEOUT = 600


class ServerRefused(Exception):
    """The server said no (or answered something we cannot use); exit status 3."""


@dataclasses.dataclass(frozen=True)
class Settings:
    running_tasks: int
    max_running_tasks: int
    max_packed_size: int  # MiB
    max_unpacked_size: int  # MiB
    supported_formats: tuple[str, ...]
    supported_releases: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Settings:
        """Upstream's ``key value`` lines; keys case-insensitive, unknown keys ignored."""
        values: dict[str, str] = {}
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            values[key.strip().lower()] = value.strip()
        try:
            return cls(
                int(values.get("running_tasks", "0")), int(values.get("max_running_tasks", "0")),
                int(values.get("max_packed_size", "0")), int(values.get("max_unpacked_size", "0")),
                tuple(values.get("supported_formats", "").split()), tuple(values.get("supported_releases", "").split()),
            )
        except ValueError:
            raise ServerRefused("The server sent settings this client cannot read") from None

    @property
    def fully_occupied(self) -> bool:
        return self.running_tasks >= self.max_running_tasks


@dataclasses.dataclass(frozen=True)
class Status:
    state: str  # PENDING, FINISHED_SUCCESS or FINISHED_FAILURE
    sentence: str
    waited: bool = False  # the server held the poll until the stage changed (X-Wait): poll again at once

    @property
    def finished(self) -> bool:
        return self.state.startswith("FINISHED")


def unreachable(err: BaseException) -> str:
    """Why a request failed, as a sentence: the cause at the bottom of requests' and urllib3's wrappers
    (whose reprs, ``HTTPSConnectionPool(host=..., port=...): Max retries exceeded ...``, tell a person
    nothing)."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [err]
    while pending:
        cause = pending.pop(0)
        if cause is None or id(cause) in seen:
            continue
        seen.add(id(cause))
        if isinstance(cause, socket.gaierror):
            return "its host name cannot be resolved"
        if isinstance(cause, ConnectionRefusedError):
            return "the connection was refused (is the server running, on that port?)"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror[:1].lower() + cause.strerror[1:]
        pending += [cause.__cause__, cause.__context__, getattr(cause, "reason", None),
                    *(arg for arg in cause.args if isinstance(arg, BaseException))]
    if isinstance(err, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema)):
        return "that is not a URL"
    return f"the connection failed ({type(err).__name__})"


def _body(response: requests.Response) -> str:
    """The server's sentence: the text, or the "error" of a JSON answer (FAF's shape, as /reports/ answers)."""
    text = response.text.strip()
    if text.startswith("{"):
        try:
            error = json.loads(text).get("error")
        except (ValueError, AttributeError):
            error = None
        if isinstance(error, str) and error.strip():
            return error.strip()
    return text or f"HTTP {response.status_code} without explanation"


class RetraceServer:
    def __init__(self, uri: str, verify: bool | str = True,
                 show_headers: Callable[[requests.Response], None] | None = None) -> None:
        self.uri = uri if "://" in uri else f"https://{uri}"
        self.uri = self.uri.rstrip("/")
        # Passed with every request: a session-wide verify loses to REQUESTS_CA_BUNDLE.
        self.verify = verify
        if verify is False:
            # The person chose -k; one warning from the CLI beats one per request from urllib3.
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self.session = requests.Session()
        self.session.headers["Accept-Charset"] = "UTF-8"
        self.show_headers = show_headers

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", _TIMEOUT)
        kwargs["verify"] = self.verify
        try:
            response = self.session.request(method, self.uri + path, allow_redirects=False, **kwargs)
        except requests.exceptions.SSLError as err:
            raise ServerRefused(
                f"The server's TLS certificate cannot be verified ({err.__class__.__name__}); "
                "use --cafile FILE, or -k to skip the check"
            ) from None
        except requests.exceptions.Timeout:
            raise ServerRefused(f"The retrace server at {self.uri} did not answer within {kwargs['timeout']} s; "
                                "try again later") from None
        except requests.RequestException as err:
            raise ServerRefused(f"Cannot reach the retrace server at {self.uri}: {unreachable(err)}") from None
        if self.show_headers is not None:
            self.show_headers(response)
        return response

    def settings(self) -> Settings:
        response = self._request("GET", "/settings")
        if response.status_code != 200 or not response.text.strip():
            raise ServerRefused(f"Unexpected HTTP response from server: {response.status_code}")
        return Settings.parse(response.text)

    def package_known(self, nvr: str, arch: str, release: str) -> bool:
        """True (302) or False (404) for /checkpackage."""
        response = self._request(
            "GET", "/checkpackage", headers={"X-Package-NVR": nvr, "X-Package-Arch": arch, "X-OS-Release": release}
        )
        if response.status_code in (302, 404):
            return bool(response.status_code == 302)
        raise ServerRefused(f"Unexpected HTTP response from server: {response.status_code}\n{_body(response)}")

    def create(self, archive: Sized, task_type: int = 0, content_type: str = XZ_TAR) -> tuple[str, str]:
        """Upload ``archive`` (a file-like object with ``len()``); ``(task id, password)``."""
        response = self._request(
            "POST", "/create", data=archive, timeout=_UPLOAD_TIMEOUT,
            headers={"Content-Type": content_type, "X-Task-Type": str(task_type),
                     "Content-Length": str(len(archive))},
        )
        if response.status_code == 201:
            task_id = response.headers.get("X-Task-Id")
            password = response.headers.get("X-Task-Password")
            if not task_id or not password:
                missing = "X-Task-Id" if not task_id else "X-Task-Password"
                raise ServerRefused(f"Invalid response from server: missing {missing}.")
            return task_id, password
        if response.status_code == 403:
            raise ServerRefused(
                "Your problem directory is corrupted and can not be processed by the Retrace server: "
                + _body(response)
            )
        raise ServerRefused(f"Unexpected HTTP response from server: {response.status_code}\n{_body(response)}")

    def report(self, document: bytes) -> tuple[Any, int]:
        """Send a uReport (bytes of JSON) as reporter-ureport does; ``(the answer, bytes sent)``."""
        boundary = "retrace-client-ureport"
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="ureport.json"\r\n'
                f"Content-Type: application/json\r\n\r\n").encode() + document + f"\r\n--{boundary}--\r\n".encode()
        response = self._request("POST", "/reports/new/", data=body,
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        if response.status_code != 202:
            raise ServerRefused(f"The server refused the report: {_body(response)}")
        try:
            return response.json(), len(body)
        except ValueError:
            raise ServerRefused("The server's answer to the report is not JSON") from None

    def status(self, task_id: str, password: str, wait: int = 0) -> Status:
        """The task's status; with ``wait`` the server (ours; upstream's answers at once) holds the answer up to
        that many seconds until the stage changes."""
        headers = {"X-Task-Password": password, **({"X-Wait": str(wait)} if wait else {})}
        response = self._request("GET", f"/{task_id}", headers=headers)
        state = response.headers.get("X-Task-Status")
        if response.status_code != 200 or not state:
            raise ServerRefused(f"Unexpected HTTP response from server: {response.status_code}\n{_body(response)}")
        sentence = response.text.strip()
        reason = response.headers.get(FAILURE_REASON)
        return Status(state, f"{sentence}: {from_header_text(reason)}" if reason else sentence,
                      response.headers.get("X-Task-Waited") == "1")

    def result(self, task_id: str, password: str, name: str) -> str | None:
        """The text of ``backtrace``, ``log`` or ``exploitable``; None when the server has none (404)."""
        response = self._request("GET", f"/{task_id}/{name}", headers={"X-Task-Password": password})
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ServerRefused(f"Unexpected HTTP response from server: {response.status_code}\n{_body(response)}")
        return str(response.text)
