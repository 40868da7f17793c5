"""Untrusted paths joined to a root: the one place that decides whether they stay inside.

A core names the files its process mapped (``NT_FILE``), a package names
its members and its symlinks' targets, repository metadata names package
files: all of it comes from outside.  The worker turns such names into
directories and symlinks under a task's sysroot or reads files under a
repository, so a single ``..`` that slips through writes outside the task
(or plants files in the shared package cache, where every later task
trusts them).  Every such join goes through ``inside``; every symlink target
from a package goes through ``clamped_link_target``.
"""

from __future__ import annotations

import os
import posixpath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Union

    # A file system path as the os functions take it.
    StrPath = Union[str, os.PathLike[str]]
# PATH_MAX: the kernel never writes a longer name into a core.
MAX_PATH_BYTES = 4096


class UnsafePath(ValueError):
    """A name that is not a plain path below its root; the message quotes it for users."""


def shown(path: str) -> str:
    """``path`` as safe to quote back: printable and short."""
    text = "".join(ch if ch.isprintable() else "?" for ch in path)
    return text if len(text) <= 80 else text[:77] + "..."


def is_normal_absolute(path: str) -> bool:
    """Whether ``path`` is what the kernel writes for a mapped file: absolute, no empty, ``.`` or ``..`` part."""
    if not path.startswith("/") or len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES or "\0" in path:
        return False
    return all(part not in ("", ".", "..") for part in path[1:].split("/"))


def inside(root: str | os.PathLike[str], path: str) -> str:
    """``root`` joined with ``path`` (absolute or relative, read as below ``root``).

    UnsafePath when a component is ``..``, ``.`` or empty (``//``): such a
    name was made to leave the root, or to alias another name.
    """
    relative = path.lstrip("/")
    if not relative or not is_normal_absolute("/" + relative):
        raise UnsafePath(f"'{shown(path)}' is not a plain path below its root")
    return os.path.join(root, relative)


def clamped_link_target(link: str, target: str) -> str:
    """The target a symlink at ``link`` (a path in the tree) gets, relative and never above the tree.

    Read as the kernel reads links inside a chroot: absolute targets start
    at the tree's top and ``..`` at the top stays there.  Returns the
    relative target that resolves to that place from the link's directory.
    """
    directory = posixpath.dirname("/" + link.lstrip("/"))
    resolved = posixpath.normpath(posixpath.join(directory, target) if not target.startswith("/") else target)
    resolved = "/" + resolved.lstrip("/")
    return posixpath.relpath(resolved, directory)
