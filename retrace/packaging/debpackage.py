"""Debian packages (``.deb``, Ubuntu's ``.ddeb``): read without dpkg, unpacked under the RPM rules.

A package is an ar archive of ``debian-binary``, ``control.tar.*`` and
``data.tar.*``; the data tarball is streamed straight from its byte range
of the ar file through the decompressor, never written out.  Names are
checked as for RPM payloads (``retrace_server.packaging.payload``: no
``..``, nothing below the package's own symlinks), an absolute member name
is refused (dpkg-deb writes ``./usr/...``), and only directories, regular
files, hard links to files already unpacked and symlinks are created;
device files and FIFOs are skipped.  Symlinks are kept as the package has
them and clamped to the task's root when a sysroot is assembled
(``retrace_server.paths.clamped_link_target``).
"""
from __future__ import annotations

import contextlib
import io
import os
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from retrace_server import compression, tarstream
from retrace_server.elf import file_build_id
from retrace_server.packaging.payload import ManifestEntry, UnpackError, refuse_below_symlink, safe_relative

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterator

_AR_MAGIC = b"!<arch>\n"
_AR_HEADER = 60
# The data tarball's names and their decoders (None: not compressed), each bounded by MaxDecoderMemory.
_DATA_MEMBERS = {"data.tar": None, "data.tar.xz": compression.xz_reader, "data.tar.gz": compression.gzip_reader,
                 "data.tar.bz2": compression.bzip2_reader, "data.tar.zst": compression.zstd_reader}
_COPY_CHUNK = 1024 * 1024
# A data.tar.xz this large is decoded two blocks at a time when xz -T wrote it in blocks (a kernel's -dbg).
_PARALLEL_XZ = 32 * 1024 * 1024
# A real package has three members; anything long past that is not a package.
_MAX_AR_MEMBERS = 16
PAYLOAD_RATIO = 200
MIN_PAYLOAD_CAP = 256 * 1024 * 1024
MAX_LINK_CHAIN = 8


class _Range(io.RawIOBase):
    """``size`` bytes of ``handle`` from its current offset, as a stream."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self.handle, self.left = handle, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.handle.read(min(len(buffer), self.left))
        self.left -= len(data)
        buffer[:len(data)] = data
        return len(data)


def _data_member(handle: BinaryIO, name: str) -> tuple[str, int]:
    """Position ``handle`` at the data tarball; ``(member name, size)``."""
    if handle.read(len(_AR_MAGIC)) != _AR_MAGIC:
        raise UnpackError(f"{name} is not a Debian package (no ar archive header)")
    for _ in range(_MAX_AR_MEMBERS):
        header = handle.read(_AR_HEADER)
        if len(header) < _AR_HEADER or header[58:60] != b"`\n":
            break
        member = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            break
        if member in _DATA_MEMBERS:
            return member, size
        handle.seek(size + size % 2, os.SEEK_CUR)
    raise UnpackError(f"{name} holds no data.tar member; it is not a Debian package")


def _open_data(handle: BinaryIO, name: str, memlimit: int) -> tuple[tarfile.TarFile, int, BinaryIO]:
    """The data tarball as a tar stream, its packed size and the decoded stream (to close: a parallel
    decoder has threads)."""
    member, size = _data_member(handle, name)
    decoder = _DATA_MEMBERS[member]
    with _read_errors(name, "cannot be read"):
        parallel = (compression.parallel_xz_reader(handle, handle.tell(), size, memlimit)
                    if member == "data.tar.xz" and size >= _PARALLEL_XZ else None)
        stream = io.BufferedReader(_Range(handle, size), _COPY_CHUNK)
        guarded = tarstream.guarded_tarinfo(lambda what: UnpackError(f"the data of {name} has {what}"))
        data = parallel or (compression.read_ahead(decoder(stream, memlimit)) if decoder else stream)
        return tarfile.open(fileobj=data, mode="r|", tarinfo=guarded), size, data


@contextlib.contextmanager
def _read_errors(name: str, what: str) -> Iterator[None]:
    try:
        yield
    except compression.DecoderMemoryExceeded as err:
        raise UnpackError(f"the data of {name} {what}: {err.sentence}") from None
    except (tarfile.TarError, OSError, *compression.CORRUPT_DATA) as err:
        raise UnpackError(f"the data of {name} {what} ({err})") from None


def _members(deb_path: Path, memlimit: int) -> Iterator[tuple[str, tarfile.TarInfo, tarfile.TarFile]]:
    """Each ``(relative name, TarInfo, tar)`` of the package's data, names checked.

    The files may unpack to PAYLOAD_RATIO times the packed data at most
    (Debian's own packages stay near 10; 1 GiB of zeros packs 7,000-fold);
    the index's SHA256 already vouches for the package, so this is defence
    in depth against a mirror and an index that both lie.
    """
    name = Path(deb_path).name
    with open(deb_path, "rb") as handle, contextlib.ExitStack() as stack:
        tar, packed, data = _open_data(handle, name, memlimit)
        stack.callback(data.close)
        cap, unpacked = max(MIN_PAYLOAD_CAP, PAYLOAD_RATIO * packed), 0
        with _read_errors(name, "is damaged"):
            for info in tar:
                if info.name.startswith("/"):
                    raise UnpackError(f"{name} contains an absolute file name {info.name!r}")
                if info.issparse():
                    raise UnpackError(f"{name} holds a sparse file {info.name!r}, which packages never do")
                if info.name in (".", "./"):
                    continue
                unpacked += info.size if info.isreg() else 0
                if unpacked > cap:
                    raise UnpackError(f"the data of {name} unpacks to more than {cap} bytes ({PAYLOAD_RATIO} times "
                                      "its packed size); it is refused as a decompression bomb")
                yield safe_relative(info.name), info, tar


def _write(tar: tarfile.TarFile, info: tarfile.TarInfo, destination: Path, package: Path) -> None:
    source = tar.extractfile(info)
    assert source is not None  # a regular file's
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, (info.mode & 0o755) | 0o400)
    with os.fdopen(fd, "wb") as out:
        while True:
            with _read_errors(Path(package).name, "is damaged"):
                chunk = source.read(_COPY_CHUNK)
            if not chunk:
                break
            out.write(chunk)


def unpack_deb(deb_path: Path, target: Path, memlimit: int = compression.DEFAULT_DECODER_MEMORY) -> list[ManifestEntry]:
    """Extract the package's files into ``target``; returns the manifest entries (as ``unpack_rpm``)."""
    entries: list[ManifestEntry] = []
    files: dict[str, str] = {}
    symlinks: set[str] = set()
    made: set[Path] = {target}
    target.mkdir()
    name = Path(deb_path).name
    for relative, info, tar in _members(deb_path, memlimit):
        refuse_below_symlink(relative, symlinks, deb_path)
        destination = target / relative
        if destination.parent not in made:  # one mkdir per directory: each costs a system call even when there
            destination.parent.mkdir(parents=True, exist_ok=True)
            made.add(destination.parent)
        if info.isdir():
            if destination not in made:
                destination.mkdir(exist_ok=True)
                made.add(destination)
            entries.append((relative, "d", "", ""))
        elif info.issym():
            os.symlink(info.linkname, destination)
            symlinks.add(relative)
            entries.append((relative, "l", info.linkname, ""))
        elif info.isreg():
            _write(tar, info, destination, deb_path)
            files[relative] = build_id = file_build_id(destination) or ""
            entries.append((relative, "f", "", build_id))
        elif info.islnk():
            source = safe_relative(info.linkname)
            if source not in files:
                raise UnpackError(f"{name} hard-links {relative!r} to {info.linkname!r}, which it does not hold")
            os.link(target / source, destination)
            entries.append((relative, "f", "", files[source]))
    return entries


def extract_deb_file(deb_path: Path, member: str, target: Path,
                     memlimit: int = compression.DEFAULT_DECODER_MEMORY) -> bool:
    """Write the regular file ``member`` (``usr/lib/...``) of the package to ``target``; whether it was there.

    The data is read up to that file only (a kernel -dbg package holds
    thousands of module files besides the vmlinux wanted).  A hard link
    comes after the file it names, whose content has passed by then: the
    package is read once more, up to that file; a link that leads back to
    itself, or a chain of links longer than MAX_LINK_CHAIN, is refused.
    """
    followed: list[str] = []
    while len(followed) <= MAX_LINK_CHAIN:
        for relative, info, tar in _members(deb_path, memlimit):
            if relative == member and info.isreg():
                _write(tar, info, target, deb_path)
                return True
            if relative == member and info.islnk():
                followed.append(member)
                member = safe_relative(info.linkname)
                if member in followed:
                    raise UnpackError(f"{Path(deb_path).name} hard-links {followed[0]!r} back to itself")
                break
        else:
            return False
    raise UnpackError(f"{Path(deb_path).name} hard-links {followed[0]!r} through more than {MAX_LINK_CHAIN} links")


def extract_deb_each(deb_path: Path, place: Callable[[str], Path | None], written: Callable[[str], None],
                     memlimit: int = compression.DEFAULT_DECODER_MEMORY) -> None:
    """One pass over the data: each regular file for which ``place(relative name)`` names a new file is written
    there, and ``written(relative name)`` told once it is whole (hard links are not followed)."""
    for relative, info, tar in _members(deb_path, memlimit):
        if info.isreg() and (destination := place(relative)) is not None:
            _write(tar, info, destination, deb_path)
            written(relative)


def extract_deb_files(deb_path: Path, directory: str, names: Collection[str], target: Path,
                      memlimit: int = compression.DEFAULT_DECODER_MEMORY) -> None:
    """Write every regular file under ``directory/`` whose name is in ``names`` flat into ``target``
    (the first of a name wins), in one pass over the data (two when some are hard links)."""
    linked: dict[str, str] = {}
    for relative, info, tar in _members(deb_path, memlimit):
        name = relative.rsplit("/", 1)[-1]
        if not relative.startswith(directory + "/") or name not in names or (target / name).exists():
            continue
        if info.isreg():
            _write(tar, info, target / name, deb_path)
        elif info.islnk():
            linked.setdefault(safe_relative(info.linkname), name)
    for relative, info, tar in _members(deb_path, memlimit) if linked else ():
        if relative in linked and info.isreg() and not (target / linked[relative]).exists():
            _write(tar, info, target / linked[relative], deb_path)
