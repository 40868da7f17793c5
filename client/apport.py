"""Ubuntu's apport reports (``/var/crash/*.crash``) as a crash to upload.

Ubuntu users already have what a retrace needs in the report apport wrote:
``CoreDump`` (a gzip stream, base64 in lines of 76 characters, one
compressed chunk per line), ``ExecutablePath``, ``Package`` (``name
version``, sometimes followed by ``[origin: ...]``), ``DistroRelease``
(``Ubuntu 24.04``) and ``Architecture`` (Debian's name).  The core is
decoded while it is read, into the problem directory, never into memory
whole.
"""

from __future__ import annotations

import base64
import binascii
import re
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from io import BufferedReader, BufferedWriter

    from retrace_server.paths import StrPath

_FIELD = re.compile(r"^([A-Za-z0-9_.-]+):(?: (.*))?$")
_ARCHES = {"amd64": "x86_64", "arm64": "aarch64", "ppc64el": "ppc64le", "s390x": "s390x", "i386": "i386",
           "armhf": "armhfp", "riscv64": "riscv64"}
_TEXT_FIELDS = ("ExecutablePath", "Package", "DistroRelease", "Architecture")
_MAX_TEXT = 4096


class ApportError(Exception):
    """The report cannot be used; the message says why."""


def _fields(handle: BufferedReader, core_out: BufferedWriter) -> dict[str, str]:
    """The report's text fields; ``CoreDump`` is streamed into ``core_out`` as it is decoded."""
    fields: dict[str, str] = {}
    current: str | None = None
    inflater = None
    for raw in handle:
        line = raw.rstrip(b"\n")
        if line.startswith(b" "):
            if current == "CoreDump" and inflater is not None:
                try:
                    core_out.write(inflater.decompress(base64.b64decode(line.strip(), validate=True)))
                except (binascii.Error, zlib.error) as err:
                    raise ApportError(f"its CoreDump is damaged ({err})") from None
            elif current in fields and len(fields[current]) < _MAX_TEXT:
                fields[current] += "\n" + line.decode("utf-8", "replace").strip()
            continue
        match = _FIELD.match(line.decode("utf-8", "replace"))
        if not match:
            current = None
            continue
        current = match[1]
        if current == "CoreDump":
            if (match[2] or "").strip() != "base64":
                raise ApportError("its CoreDump is not base64 (was the report written by apport?)")
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # the gzip header comes in the first line
        elif current in _TEXT_FIELDS:
            fields[current] = (match[2] or "").strip()
    if inflater is None:
        raise ApportError("it has no CoreDump (apport keeps none for crashes of unpackaged programs)")
    core_out.write(inflater.flush())
    return fields


def package_name_version(package_field: str) -> str:
    """``binutils 2.40-2 [origin: Ubuntu]`` -> ``binutils-2.40-2``."""
    words = package_field.split()
    if len(words) < 2:
        raise ApportError(f"its Package field {package_field!r} has no version")
    return f"{words[0]}-{words[1]}"


def problem_dir_from_apport(report: StrPath) -> tuple[Path, dict[str, str]]:
    """``(directory, fields)``: a problem directory in /var/tmp made from the report."""
    directory = Path(tempfile.mkdtemp(prefix="retrace-client-apport-", dir="/var/tmp"))
    try:
        with open(report, "rb") as handle, open(directory / "coredump", "wb") as core:
            fields = _fields(handle, core)
        missing = [name for name in ("ExecutablePath", "Package", "DistroRelease") if not fields.get(name)]
        if missing:
            raise ApportError(f"it has no {', '.join(missing)}")
        (directory / "executable").write_text(fields["ExecutablePath"])
        (directory / "package").write_text(package_name_version(fields["Package"]))
        (directory / "os_release").write_text(fields["DistroRelease"] + "\n")
        if fields.get("Architecture"):
            (directory / "architecture").write_text(_ARCHES.get(fields["Architecture"], fields["Architecture"]))
        return directory, fields
    except ApportError as err:
        shutil.rmtree(directory, ignore_errors=True)
        raise ApportError(f"{report} cannot be used: {err}") from None
    except OSError as err:
        shutil.rmtree(directory, ignore_errors=True)
        raise ApportError(f"{report} cannot be read: {err.strerror}") from None
