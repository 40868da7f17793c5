"""ABRT's uReport (version 2, problem type ``core``), read the way FAF reads it, with this server's caps.

What a client sends instead of a core: per thread, per frame the module's
build-id, the offset in the module and the module's file name (satyr's
``core_backtrace``), plus signal, executable, packages and release.  Every
field is checked and capped here, so that nothing downstream (the
symbolizer's argv, the database, the pages) sees a value it did not expect;
each refusal is a sentence naming the field.
"""

import dataclasses
import json
import re
import zlib

from retrace_server.errors import BadRequest, UploadTooLarge

VERSION = 2
MAX_BYTES = 1024 * 1024
MAX_THREADS = 64
MAX_FRAMES = 256  # per thread
MAX_ALL_FRAMES = 4096
_BUILD_ID = re.compile(r"[0-9a-fA-F]{8,128}")
_WORD = re.compile(r"[A-Za-z0-9_.+~-]{1,64}")
_ARCH = re.compile(r"[A-Za-z0-9_]{1,32}")
# An executable's file name, as buckets keep and show it.
_FILE_NAME = re.compile(r"[A-Za-z0-9_.+~@:-]{1,128}")
_TEXT_LIMIT = 512


class InvalidReport(BadRequest):
    """The report is not one this server reads; the sentence says which part."""


@dataclasses.dataclass(frozen=True)
class ReportFrame:
    build_id: str | None
    offset: int
    file_name: str
    function_name: str | None = None


@dataclasses.dataclass(frozen=True)
class ReportThread:
    crash_thread: bool
    frames: tuple


@dataclasses.dataclass(frozen=True)
class Report:
    os_name: str
    os_version: str
    arch: str
    executable: str
    component: str
    signal: int
    package: str | None  # the affected package's name-version-release, as the crash data's ``package``
    version: str | None
    threads: tuple
    reason: str = ""

    @property
    def crash_thread(self):
        return next(thread for thread in self.threads if thread.crash_thread)

    @property
    def executable_name(self):
        return self.executable.rsplit("/", 1)[-1]

    @property
    def release(self):
        return f"{self.os_name}-{self.os_version}-{self.arch}".lower()


def _get(mapping, key, kind, where, required=True):
    value = mapping.get(key) if isinstance(mapping, dict) else None
    if value is None:
        if required:
            raise InvalidReport(f"The report has no {where}{key}")
        return None
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise InvalidReport(f"The report's {where}{key} is not a whole number")
    if kind is not int and not isinstance(value, kind):
        raise InvalidReport(f"The report's {where}{key} is not a {kind.__name__}")
    if kind is str and (len(value) > _TEXT_LIMIT or any(ord(char) < 0x20 for char in value)):
        raise InvalidReport(f"The report's {where}{key} is longer than {_TEXT_LIMIT} characters or holds control "
                            "characters")
    return value


def _word(value, pattern, what):
    if not pattern.fullmatch(value):
        raise InvalidReport(f"The report's {what} '{value[:64]}' holds characters this server does not accept")
    return value


def _frame(raw, thread_number, frame_number):
    where = f"problem.stacktrace[{thread_number}].frames[{frame_number}]."
    if not isinstance(raw, dict):
        raise InvalidReport(f"The report's {where[:-1]} is not an object")
    build_id = _get(raw, "build_id", str, where, required=False)
    if build_id is not None and not _BUILD_ID.fullmatch(build_id):
        raise InvalidReport(f"The report's {where}build_id is not a hexadecimal build-id")
    offset = _get(raw, "build_id_offset", int, where)
    if not 0 <= offset < 1 << 48:
        raise InvalidReport(f"The report's {where}build_id_offset {offset} is not an offset in a module")
    function = _get(raw, "function_name", str, where, required=False)
    return ReportFrame(build_id.lower() if build_id else None, offset, _get(raw, "file_name", str, where), function)


def _threads(stacktrace):
    if not isinstance(stacktrace, list) or not stacktrace:
        raise InvalidReport("The report's problem.stacktrace is not a list of threads")
    if len(stacktrace) > MAX_THREADS:
        raise InvalidReport(f"The report has {len(stacktrace)} threads; this server reads at most {MAX_THREADS}")
    threads, total = [], 0
    for number, raw in enumerate(stacktrace):
        frames = raw.get("frames") if isinstance(raw, dict) else None
        if not isinstance(frames, list) or not frames:
            raise InvalidReport(f"The report's problem.stacktrace[{number}] has no frames")
        total += len(frames)
        if len(frames) > MAX_FRAMES or total > MAX_ALL_FRAMES:
            raise InvalidReport(f"The report has too many frames: at most {MAX_FRAMES} per thread and "
                                f"{MAX_ALL_FRAMES} in all are read")
        crash = raw.get("crash_thread", False) is True
        threads.append(ReportThread(crash, tuple(_frame(frame, number, index) for index, frame in enumerate(frames))))
    crashed = sum(thread.crash_thread for thread in threads)
    if crashed != 1:
        raise InvalidReport(f"The report marks {crashed} threads as crash_thread; exactly one must be")
    return tuple(threads)


def _affected(packages):
    """``(name-version-release, version)`` of the package the report names as affected (or the first)."""
    if not isinstance(packages, list) or len(packages) > 1000:
        raise InvalidReport("The report's packages is not a list")
    chosen = next((p for p in packages if isinstance(p, dict) and p.get("package_role") == "affected"),
                  packages[0] if packages else None)
    if chosen is None:
        return None, None
    name = _word(_get(chosen, "name", str, "packages[]."), _WORD, "package name")
    version = _word(_get(chosen, "version", str, "packages[]."), _WORD, "package version")
    release = _word(_get(chosen, "release", str, "packages[]."), _WORD, "package release")
    return f"{name}-{version}-{release}", f"{version}-{release}"


def _decompressed(data):
    """A gzip-compressed report (retrace-client sends one) unpacked, at most MAX_BYTES of it."""
    try:
        reader = zlib.decompressobj(wbits=31)
        plain = reader.decompress(data, MAX_BYTES + 1)
    except zlib.error as err:
        raise InvalidReport(f"The report is gzip-compressed but corrupt ({err})") from None
    if len(plain) > MAX_BYTES or reader.unconsumed_tail:
        raise UploadTooLarge(f"The report unpacks to more than {MAX_BYTES} bytes, the most this server reads")
    if not reader.eof:
        raise InvalidReport("The report is gzip-compressed but corrupt (it is truncated)")
    return plain


def parse(data):
    """The Report in ``data`` (the bytes of the form's ``file`` field, JSON or gzip-compressed JSON), or
    InvalidReport with a sentence."""
    if len(data) > MAX_BYTES:
        raise UploadTooLarge(f"The report is {len(data)} bytes; this server reads reports of at most {MAX_BYTES}")
    if data[:2] == b"\x1f\x8b":
        data = _decompressed(data)
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as err:
        raise InvalidReport(f"The report is not JSON ({str(err)[:120]})") from None
    if not isinstance(document, dict):
        raise InvalidReport("The report is not a JSON object")
    version = document.get("ureport_version")
    if version != VERSION:
        raise InvalidReport(f"This server reads uReport version {VERSION}; this report is version {version!r}")
    os_info = document.get("os")
    problem = document.get("problem")
    if not isinstance(os_info, dict) or not isinstance(problem, dict):
        raise InvalidReport("The report has no os or no problem object")
    kind = problem.get("type")
    if kind != "core":
        raise InvalidReport(f"This server reads reports of crashed programs (problem type 'core'), not {kind!r}")
    signal = _get(problem, "signal", int, "problem.")
    if not 0 <= signal <= 128:
        raise InvalidReport(f"The report's problem.signal {signal} is not a signal number")
    executable = _get(problem, "executable", str, "problem.")
    if not executable.startswith("/"):
        raise InvalidReport("The report's problem.executable is not an absolute path")
    _word(executable.rsplit("/", 1)[-1], _FILE_NAME, "executable's file name")
    package, version_text = _affected(document.get("packages", []))
    return Report(
        os_name=_word(_get(os_info, "name", str, "os."), _WORD, "os.name"),
        os_version=_word(_get(os_info, "version", str, "os."), _WORD, "os.version"),
        arch=_word(_get(os_info, "architecture", str, "os."), _ARCH, "os.architecture"),
        executable=executable,
        component=_word(problem.get("component") or executable.rsplit("/", 1)[-1], _WORD, "problem.component"),
        signal=signal, package=package, version=version_text,
        threads=_threads(problem.get("stacktrace")),
        reason=(document.get("reason") or "")[:_TEXT_LIMIT] if isinstance(document.get("reason"), str) else "",
    )
