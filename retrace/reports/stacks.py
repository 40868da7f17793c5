"""What a crash bucket's signature is computed from, kept per report so that a rule change can split buckets.

A *stack* is the crash as the signature rules read it: the kind of crash,
the program, and its crash thread's frames, innermost first (a core's
function names; a Python exception's functions with their files and its
exception type; an oop's functions with their modules).  Reports whose
stacks are equal are counted on one row; under the rules in force every
stack belongs to exactly one bucket, so ``retrace-server-cleanup
--rebucket`` can move each stack (with its counts, days and reports) to the
bucket the new rules give it: two buckets merge when their stacks now sign
alike, and a bucket splits when its stacks no longer do.

The signature of a core is taken from the symbolized crash thread: frames
of the machinery every crash passes through (raise, abort, assert, the
allocator's consistency checks) are skipped from the top, glibc's internal
aliases are folded (``__GI_raise`` is ``raise``), and the first names the
rules count, with the executable's name, are hashed (SHA-1, hex, like FAF's
``bthash``).  A coreless report (symbolized here) and a full gdb retrace of
the same crash give the same names, so they land in the same bucket.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

from retrace_server.reports.rules import Rules, folded

DEFAULT_RULES = Rules()
# The innermost frames a stack keeps: more than any rule counts (32) after a long run of skipped machinery.
MAX_STACK_FRAMES = 64
# Compiler clones of one kernel function (``__handle_sysrq.cold``, ``foo.isra.0``): another build names them apart.
_CLONE_SUFFIX = re.compile(r"\.(?:cold|isra|constprop|part|llvm)(?:\.\d+)*$|\.\d+$")


def normalized(functions: list[str], rules: Rules = DEFAULT_RULES) -> list[str]:
    """The crash thread's function names (innermost first) that tell the bug (``rules``: SignatureRules)."""
    return rules.normalized([folded(function) or "??" for function in functions])


def signature(executable: str, functions: list[str], rules: Rules = DEFAULT_RULES) -> tuple[str, str]:
    """``(bthash, the text it hashes)`` for a crash of ``executable`` with these crash-thread functions."""
    text = "\n".join([Path(executable).name, *normalized(functions, rules)])
    return hashlib.sha1(text.encode("utf-8")).hexdigest(), text


def kernel_function(name: str) -> str:
    """An oops frame's function without its compiler-clone suffix."""
    while (shorter := _CLONE_SUFFIX.sub("", name)) != name:
        name = shorter
    return name


@dataclasses.dataclass(frozen=True)
class Stack:
    """One crash thread as its bucket's signature reads it (see the module's docstring)."""

    kind: str  # "core", "python" or "kerneloops"
    executable: str  # the program's file name; "python" or "kerneloops" for those kinds
    frames: tuple[tuple[str, str | None], ...]  # (function, Python file or kernel module), innermost first
    headline: str = ""  # a Python exception's type

    @classmethod
    def core(cls, executable: str, functions: list[str]) -> Stack:
        return cls("core", Path(executable).name, tuple((name, None) for name in functions[:MAX_STACK_FRAMES]))

    def signed(self, rules: Rules) -> tuple[str, str]:
        """``(bthash, text)`` under ``rules`` (the section of this stack's kind)."""
        names = [function for function, _ in self.frames]
        if self.kind == "core":
            return signature(self.executable, names, rules)
        if self.kind == "python":
            start, end = rules.span(names)
            lines = ["python", self.headline, *(f"{(place or '').rsplit('/', 1)[-1]}:{function}"
                                                for function, place in self.frames[start:end])]
        else:
            functions = [kernel_function(name) for name in names]
            start, end = rules.span(functions)
            lines = ["kerneloops", *functions[start:end]]
        text = "\n".join(lines)
        return hashlib.sha1(text.encode("utf-8")).hexdigest(), text

    def encoded(self) -> str:
        """The stack as stored (JSON); ``decoded`` reads it back."""
        return json.dumps([self.kind, self.executable, self.headline, [list(frame) for frame in self.frames]],
                          separators=(",", ":"))

    @classmethod
    def decoded(cls, text: str) -> Stack:
        kind, executable, headline, frames = json.loads(text)
        return cls(kind, executable, tuple((function, place) for function, place in frames), headline)

    @property
    def digest(self) -> str:
        return hashlib.sha1(self.encoded().encode("utf-8")).hexdigest()
