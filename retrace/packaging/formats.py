"""Package formats: which one a package file is, and what can be taken out of it.

The one place that dispatches on a package's format: the cache unpacks
whole packages through ``unpack``, the kernel path takes vmlinux and module
files through ``extract_file`` and ``extract_files``.  A format is known by
the file's name, which the repository index gave it (``location`` of
rpm-md, ``Filename:`` of apt), never by what a client sent.
"""

import dataclasses
from pathlib import Path
from typing import Callable

from retrace_server.compression import DEFAULT_DECODER_MEMORY
from retrace_server.packaging import debpackage, rpmpackage
from retrace_server.packaging.payload import UnpackError


@dataclasses.dataclass(frozen=True)
class PackageFormat:
    name: str
    suffixes: tuple
    # Each takes memlimit, what the payload's decoder may hold (MaxDecoderMemory; librpm keeps its own).
    # (package, target, memlimit) -> manifest entries
    unpack: Callable
    # (package, "usr/lib/...", target file, memlimit) -> whether the package held it
    extract_file: Callable
    # (package, directory, {file names}, target directory, memlimit) -> None
    extract_files: Callable


RPM = PackageFormat("rpm", (".rpm",), rpmpackage.unpack_rpm, rpmpackage.extract_rpm_file,
                    rpmpackage.extract_rpm_files)
DEB = PackageFormat("deb", (".deb", ".ddeb", ".udeb"), debpackage.unpack_deb, debpackage.extract_deb_file,
                    debpackage.extract_deb_files)
FORMATS = (RPM, DEB)


def of_file(path):
    """The format of a package file, by its name; UnpackError for anything else."""
    suffix = Path(path).suffix
    for package_format in FORMATS:
        if suffix in package_format.suffixes:
            return package_format
    raise UnpackError(f"{Path(path).name} is not a package this server can read (.rpm, .deb or .ddeb)")


def unpack(path, target, memlimit=DEFAULT_DECODER_MEMORY):
    return of_file(path).unpack(path, target, memlimit)


def extract_file(path, member, target, memlimit=DEFAULT_DECODER_MEMORY):
    return of_file(path).extract_file(path, member, target, memlimit)


def extract_files(path, directory, names, target, memlimit=DEFAULT_DECODER_MEMORY):
    return of_file(path).extract_files(path, directory, names, target, memlimit)
