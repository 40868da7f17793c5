"""Package formats: which one a package file is, and what can be taken out of it.

The one place that dispatches on a package's format: the cache unpacks
whole packages through ``unpack``, the kernel path takes vmlinux and module
files through ``extract_file`` and ``extract_files``.  A format is known by
the file's name, which the repository index gave it (``location`` of
rpm-md, ``Filename:`` of apt), never by what a client sent.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from retrace_server.compression import DEFAULT_DECODER_MEMORY
from retrace_server.packaging import debpackage, rpmpackage
from retrace_server.packaging.payload import ManifestEntry, UnpackError

if TYPE_CHECKING:
    from collections.abc import Callable, Collection


class _Unpack(Protocol):
    def __call__(self, package: Path, target: Path, memlimit: int, /) -> list[ManifestEntry]: ...


class _ExtractFile(Protocol):
    def __call__(self, package: Path, member: str, target: Path, memlimit: int, /) -> bool: ...


class _ExtractFiles(Protocol):
    def __call__(self, package: Path, directory: str, names: Collection[str], target: Path, memlimit: int, /) -> None:
        ...


class _ExtractEach(Protocol):
    def __call__(self, package: Path, place: Callable[[str], Path | None], written: Callable[[str], None],
                 memlimit: int, /) -> None: ...


@dataclasses.dataclass(frozen=True)
class PackageFormat:
    """A format's readers; each takes memlimit, what the payload's decoder may hold (MaxDecoderMemory;
    librpm keeps its own)."""

    name: str
    suffixes: tuple[str, ...]
    # The whole package into a new directory, returning the manifest's entries.
    unpack: _Unpack
    # One regular file ("usr/lib/...") to a target file: whether the package held it.
    extract_file: _ExtractFile
    # The files under a directory with the given names, flat into a target directory.
    extract_files: _ExtractFiles
    # One pass: each regular file where place(name) says, written(name) told as each is whole.
    extract_each: _ExtractEach


RPM = PackageFormat("rpm", (".rpm",), rpmpackage.unpack_rpm, rpmpackage.extract_rpm_file,
                    rpmpackage.extract_rpm_files, rpmpackage.extract_rpm_each)
DEB = PackageFormat("deb", (".deb", ".ddeb", ".udeb"), debpackage.unpack_deb, debpackage.extract_deb_file,
                    debpackage.extract_deb_files, debpackage.extract_deb_each)
FORMATS = (RPM, DEB)


def of_file(path: Path) -> PackageFormat:
    """The format of a package file, by its name; UnpackError for anything else."""
    suffix = Path(path).suffix
    for package_format in FORMATS:
        if suffix in package_format.suffixes:
            return package_format
    raise UnpackError(f"{Path(path).name} is not a package this server can read (.rpm, .deb or .ddeb)")


def unpack(path: Path, target: Path, memlimit: int = DEFAULT_DECODER_MEMORY) -> list[ManifestEntry]:
    return of_file(path).unpack(path, target, memlimit)


def extract_file(path: Path, member: str, target: Path, memlimit: int = DEFAULT_DECODER_MEMORY) -> bool:
    return of_file(path).extract_file(path, member, target, memlimit)


def extract_files(path: Path, directory: str, names: Collection[str], target: Path,
                  memlimit: int = DEFAULT_DECODER_MEMORY) -> None:
    of_file(path).extract_files(path, directory, names, target, memlimit)


def extract_each(path: Path, place: Callable[[str], Path | None], written: Callable[[str], None],
                 memlimit: int = DEFAULT_DECODER_MEMORY) -> None:
    of_file(path).extract_each(path, place, written, memlimit)
