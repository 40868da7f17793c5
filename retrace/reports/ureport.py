"""ABRT's uReport (version 2, problem type ``core``), read the way FAF reads it, with this server's caps.

What a client sends instead of a core: per thread, per frame the module's
build-id, the offset in the module and the module's file name (satyr's
``core_backtrace``), plus signal, executable, packages and release.  Every
field is checked and capped here, so that nothing downstream (the
symbolizer's argv, the database, the pages) sees a value it did not expect;
each refusal is a sentence naming the field.
"""
from __future__ import annotations

import dataclasses
import json
import re
import zlib
from typing import NamedTuple

from retrace_server.errors import BadRequest, UploadTooLarge

VERSION = 2
# The report itself (its JSON, unpacked); Apache lets 64 KiB more through for the form around it.
MAX_BYTES = 2 * 1024 * 1024
MAX_THREADS = 64
MAX_FRAMES = 256  # per thread
MAX_ALL_FRAMES = 4096
_BUILD_ID = re.compile(r"[0-9a-fA-F]{8,128}")
_WORD = re.compile(r"[A-Za-z0-9_.+~-]{1,64}")
_ARCH = re.compile(r"[A-Za-z0-9_]{1,32}")
# An executable's file name, as buckets keep and show it.
_FILE_NAME = re.compile(r"[A-Za-z0-9_.+~@:-]{1,128}")
_TEXT_LIMIT = 512
# A text the report's fields may hold.
_PLAIN = re.compile(rf"[^\x00-\x1f]{{0,{_TEXT_LIMIT}}}")


class InvalidReport(BadRequest):
    """The report is not one this server reads; the sentence says which part."""


class ReportFrame(NamedTuple):
    """A tuple: hundreds per report, hashed whole to find an identical report's symbolization."""

    build_id: str | None
    offset: int
    file_name: str
    function_name: str | None = None


@dataclasses.dataclass(frozen=True)
class ReportThread:
    crash_thread: bool
    frames: tuple[ReportFrame, ...]


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
    threads: tuple[ReportThread, ...]
    reason: str = ""

    @property
    def crash_thread(self) -> ReportThread:
        return next(thread for thread in self.threads if thread.crash_thread)

    @property
    def executable_name(self) -> str:
        return self.executable.rsplit("/", 1)[-1]

    @property
    def release(self) -> str:
        return f"{self.os_name}-{self.os_version}-{self.arch}".lower()


@dataclasses.dataclass(frozen=True)
class SymbolicFrame:
    function: str
    place: str | None  # the Python file, or the kernel module (None: built in)
    line: int | None


@dataclasses.dataclass(frozen=True)
class SymbolicReport:
    """A report whose frames the client already named: a Python exception or a kernel oops."""

    kind: str  # "python" or "kerneloops"
    os_name: str
    os_version: str
    arch: str
    component: str
    package: str | None
    version: str | None
    headline: str  # the exception's type, or "kernel oops"
    frames: tuple[SymbolicFrame, ...]  # innermost first
    reason: str = ""

    @property
    def release(self) -> str:
        return f"{self.os_name}-{self.os_version}-{self.arch}".lower()


# What becomes of the kinds FAF also takes and this server does not bucket.
_NOT_READ = {"java": "Java exceptions", "ruby": "Ruby exceptions", "selinux": "SELinux denials"}
_PY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,199}|<[a-z]{1,32}>")
_KERNEL_FUNCTION = re.compile(r"[A-Za-z0-9_.$]{1,200}")


def _symbolic_frames(raw: object, kind: str) -> tuple[SymbolicFrame, ...]:
    key = "stacktrace" if kind == "python" else "frames"
    if not isinstance(raw, list) or not raw:
        raise InvalidReport(f"The report's problem.{key} is not a list of frames")
    if len(raw) > MAX_FRAMES:
        raise InvalidReport(f"The report has too many frames: at most {MAX_FRAMES} are read")
    frames = []
    for number, frame in enumerate(raw):
        where = f"problem.{key}[{number}]."
        if not isinstance(frame, dict):
            raise InvalidReport(f"The report's {where[:-1]} is not an object")
        if kind == "python":
            function = _word(_text(frame, "function_name", where), _PY_NAME, f"{where}function_name")
            place = _text(frame, "file_name", where)
            line = frame.get("file_line")
            if line is not None and (isinstance(line, bool) or not isinstance(line, int) or not 0 <= line < 1 << 31):
                raise InvalidReport(f"The report's {where}file_line is not a line number")
            frames.append(SymbolicFrame(function, place, line))
        else:
            if frame.get("reliable", True) is not True:
                continue  # a guess the unwinder marked "?": not what the oops is
            function = _word(_text(frame, "function_name", where), _KERNEL_FUNCTION, f"{where}function_name")
            module = _optional_text(frame, "module_name", where)
            frames.append(SymbolicFrame(function, _word(module, _WORD, f"{where}module_name") if module else None,
                                        None))
    if not frames:
        raise InvalidReport("The report's oops has no reliable frame")
    return tuple(frames)


def _symbolic(document: dict[str, object], os_info: dict[str, object], problem: dict[str, object],
              kind: str) -> SymbolicReport:
    if kind == "python":
        headline = _word(_text(problem, "exception_name", "problem."), _PY_NAME, "problem.exception_name")
    else:
        headline = "kernel oops"
    frames = _symbolic_frames(problem.get("stacktrace" if kind == "python" else "frames"), kind)
    package, version_text = _affected(document.get("packages", []))
    default_component = "kernel" if kind == "kerneloops" else None
    component = _optional_text(problem, "component", "problem.") or default_component
    if component is None:
        raise InvalidReport("The report has no problem.component")
    reason = document.get("reason")
    return SymbolicReport(
        kind, _word(_text(os_info, "name", "os."), _WORD, "os.name"),
        _word(_text(os_info, "version", "os."), _WORD, "os.version"),
        _word(_text(os_info, "architecture", "os."), _ARCH, "os.architecture"),
        _word(component, _WORD, "problem.component"), package, version_text, headline, frames,
        reason[:_TEXT_LIMIT] if isinstance(reason, str) else "",
    )


def _value(mapping: object, key: str, where: str, required: bool) -> object:
    """The JSON value at ``key`` (None when absent); the report is untrusted, so anything may be there."""
    value = mapping.get(key) if isinstance(mapping, dict) else None
    if value is None and required:
        raise InvalidReport(f"The report has no {where}{key}")
    return value


def _number(mapping: object, key: str, where: str) -> int:
    value = _value(mapping, key, where, True)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidReport(f"The report's {where}{key} is not a whole number")
    return value


def _optional_text(mapping: object, key: str, where: str, required: bool = False) -> str | None:
    value = _value(mapping, key, where, required)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidReport(f"The report's {where}{key} is not a str")
    if not _PLAIN.fullmatch(value):
        raise InvalidReport(f"The report's {where}{key} is longer than {_TEXT_LIMIT} characters or holds control "
                            "characters")
    return value


def _text(mapping: object, key: str, where: str) -> str:
    value = _optional_text(mapping, key, where, required=True)
    assert value is not None  # required
    return value


def _word(value: str, pattern: re.Pattern[str], what: str) -> str:
    if not pattern.fullmatch(value):
        raise InvalidReport(f"The report's {what} '{value[:64]}' holds characters this server does not accept")
    return value


def _frame(raw: object, thread_number: int, frame_number: int) -> ReportFrame:
    """The frame, when every field is as the checks below want it, tested at once (a report carries hundreds of
    frames: checking each field in turn was a third of a known crash's whole request); else _checked_frame
    names what is wrong."""
    if type(raw) is dict:
        build_id, offset = raw.get("build_id"), raw.get("build_id_offset")
        file_name, function = raw.get("file_name"), raw.get("function_name")
        if (type(offset) is int and 0 <= offset < 1 << 48 and type(file_name) is str and _PLAIN.fullmatch(file_name)
                and (build_id is None or (type(build_id) is str and _BUILD_ID.fullmatch(build_id)))
                and (function is None or (type(function) is str and _PLAIN.fullmatch(function)))):
            return ReportFrame(build_id.lower() if build_id else None, offset, file_name, function)
    return _checked_frame(raw, thread_number, frame_number)


def _checked_frame(raw: object, thread_number: int, frame_number: int) -> ReportFrame:
    where = f"problem.stacktrace[{thread_number}].frames[{frame_number}]."
    if not isinstance(raw, dict):
        raise InvalidReport(f"The report's {where[:-1]} is not an object")
    build_id = _optional_text(raw, "build_id", where)
    if build_id is not None and not _BUILD_ID.fullmatch(build_id):
        raise InvalidReport(f"The report's {where}build_id is not a hexadecimal build-id")
    offset = _number(raw, "build_id_offset", where)
    if not 0 <= offset < 1 << 48:
        raise InvalidReport(f"The report's {where}build_id_offset {offset} is not an offset in a module")
    function = _optional_text(raw, "function_name", where)
    return ReportFrame(build_id.lower() if build_id else None, offset, _text(raw, "file_name", where), function)


def _threads(stacktrace: object) -> tuple[ReportThread, ...]:
    if not isinstance(stacktrace, list) or not stacktrace:
        raise InvalidReport("The report's problem.stacktrace is not a list of threads")
    if len(stacktrace) > MAX_THREADS:
        raise InvalidReport(f"The report has {len(stacktrace)} threads; this server reads at most {MAX_THREADS}")
    threads: list[ReportThread] = []
    total = 0
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


def _affected(packages: object) -> tuple[str | None, str | None]:
    """``(name-version-release, version)`` of the package the report names as affected (or the first)."""
    if not isinstance(packages, list) or len(packages) > 1000:
        raise InvalidReport("The report's packages is not a list")
    chosen = next((p for p in packages if isinstance(p, dict) and p.get("package_role") == "affected"),
                  packages[0] if packages else None)
    if chosen is None:
        return None, None
    name = _word(_text(chosen, "name", "packages[]."), _WORD, "package name")
    version = _word(_text(chosen, "version", "packages[]."), _WORD, "package version")
    release = _word(_text(chosen, "release", "packages[]."), _WORD, "package release")
    return f"{name}-{version}-{release}", f"{version}-{release}"


def _decompressed(data: bytes) -> bytes:
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


def parse(data: bytes) -> Report | SymbolicReport:
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
    if kind in ("python", "kerneloops"):
        return _symbolic(document, os_info, problem, str(kind))
    if kind in _NOT_READ:
        raise InvalidReport(f"This server buckets crashed programs (core), Python exceptions (python) and kernel "
                            f"oopses (kerneloops), not {_NOT_READ[str(kind)]} ('{kind}')")
    if kind != "core":
        raise InvalidReport(f"This server reads reports of crashed programs (problem type 'core'), Python exceptions "
                            f"('python') and kernel oopses ('kerneloops'), not {str(kind)[:40]!r}")
    signal = _number(problem, "signal", "problem.")
    if not 0 <= signal <= 128:
        raise InvalidReport(f"The report's problem.signal {signal} is not a signal number")
    executable = _text(problem, "executable", "problem.")
    if not executable.startswith("/"):
        raise InvalidReport("The report's problem.executable is not an absolute path")
    _word(executable.rsplit("/", 1)[-1], _FILE_NAME, "executable's file name")
    package, version_text = _affected(document.get("packages", []))
    return Report(
        os_name=_word(_text(os_info, "name", "os."), _WORD, "os.name"),
        os_version=_word(_text(os_info, "version", "os."), _WORD, "os.version"),
        arch=_word(_text(os_info, "architecture", "os."), _ARCH, "os.architecture"),
        executable=executable,
        component=_word(_optional_text(problem, "component", "problem.") or executable.rsplit("/", 1)[-1], _WORD,
                        "problem.component"),
        signal=signal, package=package, version=version_text,
        threads=_threads(problem.get("stacktrace")),
        reason=(document.get("reason") or "")[:_TEXT_LIMIT] if isinstance(document.get("reason"), str) else "",
    )
