"""apt repositories (Debian, Ubuntu) as a release: their indexes, read into the release's package index.

A release directory is an apt repository when it has ``dists/`` (a mirror:
``dists/<suite>/<component>/binary-<arch>/Packages.xz``, ``pool/``) or a
``Packages`` index at its top (a flat repository, as ``dpkg-scanpackages``
and ``apt-ftparchive`` write it).  Three sources fill the same tables as
rpm-md metadata does (``retrace_server.packaging.repoindex``):

* ``Packages`` stanzas: the packages, their SHA256 (the package id, and what
  a downloaded file is checked against), and ``Build-Ids:``, which
  Debian's ``-dbgsym`` and classic ``-dbg`` packages (``libc6-dbg``) carry:
  the build-ids whose debuginfo they hold;
* ``Contents-<arch>``: which package owns a path (Debian binary packages
  ship no ``/usr/lib/.build-id`` links, so a binary package is found by the
  mapped path and proven by the build-id of the unpacked file), and the
  ``/usr/lib/debug/.build-id/`` files of debug packages without the field.

Every index is untrusted text: stanzas and lines are capped, and a
``Filename:`` is joined to the repository only through ``retrace_server.paths``
when the package is needed.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

if TYPE_CHECKING:
    from collections.abc import Iterator

# Debian's architecture names for the arches in release ids.
# A Packages index by the compressions this reader takes, in the order preferred.
INDEX_NAMES = ("Packages.xz", "Packages.gz", "Packages.zst", "Packages.bz2", "Packages")
_CONTENTS = re.compile(r"Contents-(?:udeb-)?(?P<arch>[a-z0-9]+)(?:\.gz|\.xz)?")
_SEARCH_DEPTH = 5
# Real indexes have long lines: bookworm's librust-winapi-dev has a 75 KiB Provides.
_MAX_STANZA_BYTES = 4 << 20
_MAX_LINE_BYTES = 1 << 20
_HEX = re.compile(r"[0-9a-f]+", re.ASCII)
_BUILD_ID = re.compile(r"[0-9a-f]{8,128}", re.ASCII)
_SOURCE = re.compile(r"(?P<name>[a-z0-9][a-z0-9.+-]*)(?: \((?P<version>[^)\s]+)\))?", re.ASCII)


# A package's values in the index: pkgid (SHA256), name, epoch, version, revision, arch, source, file name, size.
PackageRow = tuple[str, str, str, str, str, str, str, str, int]


class AptIndexError(ValueError):
    """An apt index that cannot be read."""


def contents_arch(name: str) -> str | None:
    """``Contents-amd64.gz`` -> ``amd64``."""
    match = _CONTENTS.fullmatch(name)
    return match["arch"] if match else None


def is_apt_repository(release_dir: Path | str) -> bool:
    release_dir = Path(release_dir)
    return (release_dir / "dists").is_dir() or any((release_dir / name).is_file() for name in INDEX_NAMES)


def _walk(release_dir: Path) -> Iterator[Path]:
    """Directories of the repository that may hold indexes: the top and ``dists/`` down to a few levels."""
    yield release_dir
    dists = release_dir / "dists"
    for directory, subdirectories, _files in os.walk(dists):
        depth = Path(directory).relative_to(dists).parts
        if len(depth) >= _SEARCH_DEPTH:
            subdirectories.clear()
        subdirectories[:] = [name for name in subdirectories if not os.path.islink(os.path.join(directory, name))]
        yield Path(directory)


def index_files(release_dir: Path) -> tuple[list[Path], list[Path]]:
    """``(Packages indexes, Contents files)``: one Packages file per directory (the first compression
    found), and every Contents file."""
    packages: list[Path] = []
    contents: list[Path] = []
    for directory in _walk(Path(release_dir)):
        found = next((directory / name for name in INDEX_NAMES if (directory / name).is_file()), None)
        if found is not None:
            packages.append(found)
        contents += sorted(path for path in directory.glob("Contents-*")
                           if path.is_file() and _CONTENTS.fullmatch(path.name))
    return packages, contents


def digest(release_dir: Path) -> str:
    """What changes when the repository's indexes change (their names, sizes and times)."""
    packages, contents = index_files(release_dir)
    if not packages:
        raise AptIndexError("it has no Packages index")
    summary = hashlib.sha256()
    for path in (*packages, *contents):
        status = path.stat()
        summary.update(f"{path.relative_to(release_dir)}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
    return summary.hexdigest()


def _lines(stream: BinaryIO) -> Iterator[str]:
    """The index's lines, each capped (a line without end is not an index)."""
    # A raw decoder (zstd's) would be read byte by byte.
    reader = stream if isinstance(stream, io.BufferedIOBase) else io.BufferedReader(cast(io.RawIOBase, stream))
    while line := reader.readline(_MAX_LINE_BYTES + 1):
        if len(line) > _MAX_LINE_BYTES and not line.endswith(b"\n"):
            raise AptIndexError(f"a line longer than {_MAX_LINE_BYTES} bytes")
        yield line.decode("utf-8", "replace").rstrip("\n")


def stanzas(stream: BinaryIO) -> Iterator[dict[str, str]]:
    """Each deb822 stanza as ``{Field: value}`` (continuation lines joined with spaces)."""
    fields: dict[str, str] = {}
    field: str | None = None
    size = 0
    for line in _lines(stream):
        size += len(line) + 1
        if size > _MAX_STANZA_BYTES:
            raise AptIndexError(f"a stanza longer than {_MAX_STANZA_BYTES} bytes")
        if not line.strip():
            if fields:
                yield fields
            fields, field, size = {}, None, 0
        elif line[0] in " \t":
            if field is not None:
                fields[field] += " " + line.strip()
        elif ":" in line:
            field, value = line.split(":", 1)
            fields[field] = value.strip()
    if fields:
        yield fields


def split_version(version: str) -> tuple[str, str, str]:
    """``1:1.2.13.dfsg-1`` -> ``("1", "1.2.13.dfsg", "1")``; a native version has no revision."""
    epoch, _, rest = version.rpartition(":") if ":" in version else ("0", "", version)
    upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
    return epoch or "0", upstream, revision


def package_rows(stream: BinaryIO, arches: set[str]) -> Iterator[tuple[PackageRow, list[str]]]:
    """``(row values, build-ids)`` of every well-formed stanza built for ``arches`` (or ``all``)."""
    for fields in stanzas(stream):
        name, version = fields.get("Package", ""), fields.get("Version", "")
        checksum = fields.get("SHA256", "").lower()
        if not name or not version or not _HEX.fullmatch(checksum) or fields.get("Architecture") not in arches:
            continue
        source = _SOURCE.fullmatch(fields.get("Source", name)) or _SOURCE.fullmatch(name)
        if source is None:
            continue
        epoch, upstream, revision = split_version(version)
        try:
            size = int(fields.get("Size", "0"))
        except ValueError:
            size = 0
        row = (checksum, name, epoch, upstream, revision, fields["Architecture"],
               f"{source['name']} {source['version'] or version}", fields.get("Filename", ""), size)
        build_ids = [word for word in fields.get("Build-Ids", "").split() if _BUILD_ID.fullmatch(word)]
        yield row, build_ids


def contents_rows(stream: BinaryIO) -> Iterator[tuple[str, list[str]]]:
    """``(path, [package names])`` of a Contents file (``usr/bin/x  section/name,section/other``)."""
    for line in _lines(stream):
        path, _, owners = line.rstrip().rpartition(" ")
        path = path.strip()
        if not path or not owners or path == "FILE":
            continue
        yield "/" + path.lstrip("/"), [owner.rsplit("/", 1)[-1] for owner in owners.split(",") if owner]
