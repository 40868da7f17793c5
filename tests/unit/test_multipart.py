"""A browser form read as it streams: fields, a file of any size, and forms that are not what they claim."""

import io

import pytest
import requests

from retrace_server.errors import BadRequest
from retrace_server.intake import multipart


class Trickle(io.BytesIO):
    """A request body that arrives in uneven pieces, as from a socket."""

    def read(self, size=-1):
        return super().read(min(size, 7777) if size > 0 else 7777)


def form(fields, files):
    prepared = requests.Request("POST", "http://x/", data=fields, files=files).prepare()
    return prepared.body, multipart.boundary_of(prepared.headers["Content-Type"])


def read_all(body, boundary):
    seen = []
    for part in multipart.parts(Trickle(body), len(body), boundary):
        if part.filename is None:
            seen.append((part.name, part.text()))
        else:
            data = b""
            while chunk := part.read(65536):
                data += chunk
            seen.append((part.name, part.filename, data))
    return seen


@pytest.mark.parametrize("size", [0, 1, 65535, 1024 * 1024 + 3, 3 * 1024 * 1024])
def test_fields_and_a_file_come_out_byte_for_byte(size):
    payload = bytes(range(256)) * (size // 256) + b"\r\n--" * (size % 3)
    body, boundary = form({"task_type": "vmcore", "caseno": "12"}, {"file": ("vmcore", payload, "application/x")})
    assert read_all(body, boundary) == [("task_type", "vmcore"), ("caseno", "12"), ("file", "vmcore", payload)]


def test_a_part_the_caller_skips_is_read_past():
    body, boundary = form({"a": "1"}, {"file": ("f", b"x" * 100000, "application/x"), "other": ("g", b"y", "a/b")})
    names = [part.name for part in multipart.parts(io.BytesIO(body), len(body), boundary)]
    assert names == ["a", "file", "other"]


def test_a_body_cut_short_is_refused():
    body, boundary = form({"a": "1"}, {"file": ("f", b"data" * 1000, "application/x")})
    with pytest.raises(BadRequest, match=r"The upload ended after \d+ of the \d+ bytes announced in Content-Length"):
        [part.text() for part in multipart.parts(Trickle(body[:-40]), len(body), boundary)]


def test_a_part_without_a_name_is_refused():
    body, boundary = form({"a": "1"}, {"file": ("f", b"data", "application/x")})
    with pytest.raises(BadRequest, match="A part of the form upload has no field name"):
        read_all(body.replace(b"Content-Disposition", b"X-Nothing-Here-At"), boundary)


def test_limits_hold():
    file = {"file": ("f", b"", "application/x")}
    body, boundary = form({"notes": "x" * (multipart.FIELD_LIMIT + 1)}, file)
    with pytest.raises(BadRequest, match="The form field 'notes' is longer than 65536 bytes"):
        read_all(body, boundary)
    body, boundary = form({f"f{n}": "1" for n in range(multipart.MAX_PARTS + 1)}, file)
    with pytest.raises(BadRequest, match="The form upload has more than 50 fields"):
        read_all(body, boundary)
    with pytest.raises(BadRequest, match="Send the form as multipart/form-data"):
        multipart.boundary_of("application/x-www-form-urlencoded")
