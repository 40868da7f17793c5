"""The rules every package format's files obey before they touch the disk.

A package comes from a mirror, and a mirror is untrusted: a name with
``..`` or an entry below the package's own symlink could write outside the
cache entry, so each format's reader passes every name through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from retrace_server.errors import RetraceError

if TYPE_CHECKING:
    import os
    from collections.abc import Collection


# What a cache entry's manifest says of one unpacked file: (relative path, kind: "d" directory,
# "l" symlink or "f" file, the symlink's target, the file's build-id).
ManifestEntry = tuple[str, str, str, str]


class UnpackError(RetraceError):
    """A package's files cannot be unpacked."""

    category = "unpack error"


def safe_relative(name: str) -> str:
    """``usr/bin/x`` from a payload name; UnpackError for anything that could escape."""
    relative = name.lstrip("/")
    if relative.startswith("./"):
        relative = relative[2:]
    parts = relative.split("/")
    if not relative or any(part in ("", ".", "..") for part in parts):
        raise UnpackError(f"the package contains an unsafe file name {name!r}")
    return relative


def refuse_below_symlink(relative: str, symlinks: Collection[str], package_path: str | os.PathLike[str]) -> None:
    """A payload entry below one of its own symlinks could land outside the tree."""
    parts = relative.split("/")
    for depth in range(1, len(parts)):
        if "/".join(parts[:depth]) in symlinks:
            raise UnpackError(f"{Path(package_path).name} places {relative!r} below its own symlink")
