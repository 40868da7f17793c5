"""RPM packages: the payload read with the rpm bindings, never installed and never handed to cpio."""
from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrace_server.elf import file_build_id
from retrace_server.errors import system_module
from retrace_server.packaging.payload import ManifestEntry, UnpackError, refuse_below_symlink, safe_relative

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterator

_COPY_CHUNK = 1024 * 1024


def _rpm() -> Any:
    return system_module("rpm")


def write_content(archive: Any, target: Path, mode: int) -> None:
    """Copy the current payload file in chunks.

    Not ``archive.readto(fd)``: the rpm bindings keep a duplicate of that
    descriptor open, and a library left open for writing in the worker makes
    every later exec of it (gdb's loader, in the chroot environment) fail
    with "Text file busy".
    """
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, (mode & 0o755) | 0o400)
    with os.fdopen(fd, "wb") as out:
        while chunk := archive.read(_COPY_CHUNK):
            out.write(chunk)


@contextlib.contextmanager
def rpm_payload(rpm_path: Path) -> Iterator[Any]:
    """The rpm bindings' archive of ``rpm_path``'s payload; UnpackError when it cannot be read."""
    rpm = _rpm()
    transaction = rpm.TransactionSet()
    transaction.setVSFlags(rpm._RPMVSF_NOSIGNATURES | rpm._RPMVSF_NODIGESTS)
    fd = os.open(rpm_path, os.O_RDONLY)
    payload = None
    try:
        try:
            header = transaction.hdrFromFdno(fd)
        except rpm.error as err:
            raise UnpackError(f"{Path(rpm_path).name} is not a readable RPM ({err})") from None
        payload = rpm.fd.open(fd, "r", header[rpm.RPMTAG_PAYLOADCOMPRESSOR] or "gzip")
        yield rpm.files(header).archive(payload)
    except rpm.error as err:
        raise UnpackError(f"the payload of {Path(rpm_path).name} is damaged ({err})") from None
    finally:
        if payload is not None:
            payload.close()
        os.close(fd)


def unpack_rpm(rpm_path: Path, target: Path, memlimit: int | None = None) -> list[ManifestEntry]:
    """Extract ``rpm_path``'s payload into ``target``; returns the manifest entries.

    ``memlimit`` is not ours to give: librpm decodes the payload with its own limits (xz 100 MiB, zstd
    libzstd's 128 MiB window), below MaxDecoderMemory's default.
    """
    entries: list[ManifestEntry] = []
    pending_links: dict[int, list[tuple[Path, str]]] = {}
    symlinks: set[str] = set()
    target.mkdir()
    with rpm_payload(rpm_path) as archive:
        for entry in archive:
            relative = safe_relative(entry.name)
            refuse_below_symlink(relative, symlinks, rpm_path)
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            if stat.S_ISDIR(entry.mode):
                destination.mkdir(exist_ok=True)
                entries.append((relative, "d", "", ""))
            elif stat.S_ISLNK(entry.mode):
                os.symlink(entry.linkto, destination)
                symlinks.add(relative)
                entries.append((relative, "l", entry.linkto, ""))
            elif stat.S_ISREG(entry.mode):
                if archive.hascontent():
                    write_content(archive, destination, entry.mode)
                    entries.append((relative, "f", "", file_build_id(destination) or ""))
                    for waiting in pending_links.pop(entry.inode, ()):
                        os.link(destination, waiting[0])
                        entries.append((waiting[1], "f", "", entries[-1][3]))
                else:
                    # Hard links: rpm sends the content with the last name.
                    pending_links.setdefault(entry.inode, []).append((destination, relative))
        for empty, empty_relative in (pair for group in pending_links.values() for pair in group):
            empty.touch(mode=0o644)
            entries.append((empty_relative, "f", "", ""))
    return entries


def extract_rpm_file(rpm_path: Path, member: str, target: Path, memlimit: int | None = None) -> bool:
    """Write the regular file ``member`` (``usr/lib/...``) of ``rpm_path`` to ``target``; whether it was there.

    The payload is read up to that file only: a kernel-debuginfo package
    holds hundreds of module files besides the one vmlinux wanted.
    """
    with rpm_payload(rpm_path) as archive:
        for entry in archive:
            if safe_relative(entry.name) == member and stat.S_ISREG(entry.mode) and archive.hascontent():
                write_content(archive, target, entry.mode)
                return True
    return False


def extract_rpm_each(rpm_path: Path, place: Callable[[str], Path | None], written: Callable[[str], None],
                     memlimit: int | None = None) -> None:
    """One pass over the payload: each regular file for which ``place(relative name)`` names a new file is
    written there, and ``written(relative name)`` told once it is whole."""
    with rpm_payload(rpm_path) as archive:
        for entry in archive:
            relative = safe_relative(entry.name)
            if stat.S_ISREG(entry.mode) and archive.hascontent() and (destination := place(relative)) is not None:
                write_content(archive, destination, entry.mode)
                written(relative)


def extract_rpm_files(rpm_path: Path, directory: str, names: Collection[str], target: Path,
                      memlimit: int | None = None) -> None:
    """Write every regular file under ``directory/`` whose name is in ``names`` flat into ``target``
    (the first of a name wins), in one pass over the payload."""
    with rpm_payload(rpm_path) as archive:
        for entry in archive:
            relative = safe_relative(entry.name)
            name = relative.rsplit("/", 1)[-1]
            if (relative.startswith(directory + "/") and name in names and stat.S_ISREG(entry.mode)
                    and archive.hascontent() and not (target / name).exists()):
                write_content(archive, target / name, entry.mode)
