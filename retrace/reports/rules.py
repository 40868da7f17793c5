"""The rules a crash bucket's signature follows, as configuration a triage team edits (``SignatureRules``).

A signature is the crash thread's function names, innermost first (per
kind of crash: ``[core]``, ``[python]``, ``[kerneloops]``): the
frames every crash of their kind passes through (raise, abort, the
allocator's checks) are skipped from the top, a frame that means nothing
without its caller (a wrapper such as ``xmalloc``) is kept but does not
count, and ``frames`` names are taken.  The shipped file
(``config/signature-rules.conf``) holds the defaults below; a missing
file means them too.  Changing the rules changes future buckets;
``retrace-server-cleanup --rebucket`` recomputes the stored ones.
"""
from __future__ import annotations

import configparser
import dataclasses
import fnmatch
import functools
import re
from pathlib import Path

from retrace_server.errors import ConfigError

# The kinds of crash a bucket can hold, each with a section of the rules file.
KINDS = ("core", "python", "kerneloops")
_NAME = re.compile(r"[A-Za-z0-9_:.<>~*?\[\]$@-]{1,200}")
_MAX_NAMES = 2000

# Entered on the way to a crash, by every crash of their kind: never what tells two bugs apart.
DEFAULT_SKIP = (
    "raise", "abort", "pthread_kill", "__pthread_kill_implementation", "__pthread_kill_internal", "__assert_fail",
    "__assert_fail_base", "__assert_perror_fail", "__libc_message", "__libc_fatal", "__fortify_fail",
    "__chk_fail", "__stack_chk_fail", "malloc_printerr", "_int_free", "_int_malloc", "_int_realloc", "free",
    "malloc", "realloc", "calloc", "cfree", "__libc_free", "__libc_malloc", "__libc_realloc", "__libc_calloc",
    "g_assertion_message", "g_assertion_message_expr", "g_log", "g_logv", "g_log_structured",
    "std::terminate", "__cxa_throw", "__gnu_cxx::__verbose_terminate_handler", "std::__terminate",
    "__cxxabiv1::__terminate", "__cxxabiv1::__unexpected", "__GI___libc_message", "sigabrt_handler",
)
DEFAULT_FRAMES = 5
# What every oops of its kind passes through on the way to the report: the bug is below it.
DEFAULT_OOPS_SKIP = (
    "dump_stack", "dump_stack_lvl", "show_stack", "panic", "__warn", "warn_slowpath_fmt", "report_bug", "handle_bug",
    "exc_invalid_op", "asm_exc_invalid_op", "do_error_trap", "do_trap", "die", "__die", "oops_end",
    "page_fault_oops", "kernelmode_fixup_or_oops", "__bad_area_nosemaphore", "bad_area_nosemaphore",
    "do_user_addr_fault", "exc_page_fault", "asm_exc_page_fault", "no_context",
)


@dataclasses.dataclass(frozen=True)
class Rules:
    skip: tuple[str, ...] = DEFAULT_SKIP  # names or shell patterns (``g_assert*``)
    with_caller: tuple[str, ...] = ()  # kept, but only meaningful with their caller: not counted
    frames: int = DEFAULT_FRAMES

    def skips(self, function: str) -> bool:
        return _matches(function, self.skip) or _matches(folded(function.lstrip("_")), self.skip)

    def normalized(self, names: list[str]) -> list[str]:
        """The names that tell the bug: machinery skipped from the top, ``frames`` of them counted."""
        start, end = self.span(names)
        return names[start:end]

    def span(self, names: list[str]) -> tuple[int, int]:
        """``(start, end)`` of the frames that tell the bug among ``names`` (innermost first)."""
        start = 0
        while start < len(names) and self.skips(names[start]):
            start += 1
        if start == len(names):
            start = 0  # a crash that is all machinery still has a signature
        end, counted = start, 0
        while end < len(names) and counted < self.frames:
            if not _matches(names[end], self.with_caller):
                counted += 1
            end += 1
        return start, end


def folded(function: str) -> str:
    """``__GI_raise`` -> ``raise``: glibc's internal names for public functions."""
    return re.sub(r"^__GI_+", "", function) if function else function


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(name == pattern or (any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(name, pattern))
               for pattern in patterns)


def _defaults(kind: str) -> Rules:
    return {"core": Rules(), "python": Rules(skip=()), "kerneloops": Rules(skip=DEFAULT_OOPS_SKIP)}[kind]


def parse(text: str, source: object, kind: str = "core") -> Rules:
    """The rules for ``kind`` from the INI text of a rules file (its section, else that kind's defaults), or
    ConfigError naming the file and the value."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text, source=str(source))
    except configparser.Error as err:
        raise ConfigError(f"{source}: not a valid rules file: {err.message.splitlines()[0]}") from None
    stray = [name for name in parser.sections() if name not in KINDS]
    if stray or not parser.sections():
        raise ConfigError(f"{source}: has {f'a section [{stray[0]}]' if stray else 'no section'}; a rules file has "
                          f"[{'], ['.join(KINDS)}]")
    defaults = _defaults(kind)
    if not parser.has_section(kind):
        return defaults
    section = parser[kind]
    unknown = set(section) - {"skip", "with_caller", "frames"}
    if unknown:
        raise ConfigError(f"{source}: [{kind}] has no key {sorted(unknown)[0]} (it knows skip, with_caller, "
                          "frames)")

    def names(key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        if key not in section:
            return default
        words = tuple(section[key].split())
        bad = next((word for word in words if not _NAME.fullmatch(word)), None)
        if bad is not None or len(words) > _MAX_NAMES:
            raise ConfigError(f"{source}: {key} must list at most {_MAX_NAMES} function names or patterns, "
                              f"not {(bad or words[-1])[:60]!r}")
        return words

    frames_text = section.get("frames", str(defaults.frames)).strip()
    if not frames_text.isdigit() or not 1 <= int(frames_text) <= 32:
        raise ConfigError(f"{source}: frames must be a whole number from 1 to 32, not {frames_text!r}")
    return Rules(names("skip", defaults.skip), names("with_caller", defaults.with_caller), int(frames_text))


@functools.lru_cache(maxsize=12)
def _load(path: str, mtime_ns: int, kind: str) -> Rules:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the signature rules ({getattr(err, 'strerror', None) or err})") from None
    return parse(text, path, kind)


def load(path: Path | str, kind: str = "core") -> Rules:
    """The rules for ``kind`` in ``path`` (read again when the file changes); its defaults when there is no such
    file."""
    try:
        mtime_ns = Path(path).stat().st_mtime_ns
    except FileNotFoundError:
        return _defaults(kind)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the signature rules ({err.strerror})") from None
    return _load(str(path), mtime_ns, kind)
