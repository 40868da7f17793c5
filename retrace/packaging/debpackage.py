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

import io
import os
import tarfile
from pathlib import Path

from retrace_server.analysis.coredump import file_build_id
from retrace_server.packaging.payload import UnpackError, refuse_below_symlink, safe_relative

_AR_MAGIC = b"!<arch>\n"
_AR_HEADER = 60
_DATA_MEMBERS = {"data.tar": "r|", "data.tar.xz": "r|xz", "data.tar.gz": "r|gz", "data.tar.bz2": "r|bz2",
                 "data.tar.zst": "zstd"}
_COPY_CHUNK = 1024 * 1024
# A real package has three members; anything long past that is not a package.
_MAX_AR_MEMBERS = 16


class _Range(io.RawIOBase):
    """``size`` bytes of ``handle`` from its current offset, as a stream."""

    def __init__(self, handle, size):
        self.handle, self.left = handle, size

    def readable(self):
        return True

    def readinto(self, buffer):
        data = self.handle.read(min(len(buffer), self.left))
        self.left -= len(data)
        buffer[:len(data)] = data
        return len(data)


def _data_member(handle, name):
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


def _open_data(handle, name):
    member, size = _data_member(handle, name)
    stream = io.BufferedReader(_Range(handle, size), _COPY_CHUNK)
    mode = _DATA_MEMBERS[member]
    if mode == "zstd":
        import zstandard

        stream, mode = zstandard.ZstdDecompressor().stream_reader(stream), "r|"
    try:
        return tarfile.open(fileobj=stream, mode=mode)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise UnpackError(f"the data of {name} cannot be read ({err})") from None


def _members(deb_path):
    """Each ``(relative name, TarInfo, tar)`` of the package's data, names checked."""
    name = Path(deb_path).name
    with open(deb_path, "rb") as handle:
        tar = _open_data(handle, name)
        try:
            for info in tar:
                if info.name.startswith("/"):
                    raise UnpackError(f"{name} contains an absolute file name {info.name!r}")
                if info.name in (".", "./"):
                    continue
                yield safe_relative(info.name), info, tar
        except (tarfile.TarError, OSError, EOFError) as err:
            raise UnpackError(f"the data of {name} is damaged ({err})") from None


def _write(tar, info, destination):
    source = tar.extractfile(info)
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, (info.mode & 0o755) | 0o400)
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(_COPY_CHUNK):
            out.write(chunk)


def unpack_deb(deb_path, target):
    """Extract the package's files into ``target``; returns the manifest entries (as ``unpack_rpm``)."""
    entries, files, symlinks = [], {}, set()
    target.mkdir()
    name = Path(deb_path).name
    for relative, info, tar in _members(deb_path):
        refuse_below_symlink(relative, symlinks, deb_path)
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        if info.isdir():
            destination.mkdir(exist_ok=True)
            entries.append((relative, "d", "", ""))
        elif info.issym():
            os.symlink(info.linkname, destination)
            symlinks.add(relative)
            entries.append((relative, "l", info.linkname, ""))
        elif info.isreg():
            _write(tar, info, destination)
            files[relative] = build_id = file_build_id(destination) or ""
            entries.append((relative, "f", "", build_id))
        elif info.islnk():
            source = safe_relative(info.linkname)
            if source not in files:
                raise UnpackError(f"{name} hard-links {relative!r} to {info.linkname!r}, which it does not hold")
            os.link(target / source, destination)
            entries.append((relative, "f", "", files[source]))
    return entries


def extract_deb_file(deb_path, member, target):
    """Write the regular file ``member`` (``usr/lib/...``) of the package to ``target``; whether it was there.

    The data is read up to that file only (a kernel -dbg package holds
    thousands of module files besides the vmlinux wanted).  A hard link
    comes after the file it names, whose content has passed by then: the
    package is read once more, up to that file.
    """
    for relative, info, tar in _members(deb_path):
        if relative == member and info.isreg():
            _write(tar, info, target)
            return True
        if relative == member and info.islnk():
            return extract_deb_file(deb_path, safe_relative(info.linkname), target)
    return False


def extract_deb_files(deb_path, directory, names, target):
    """Write every regular file under ``directory/`` whose name is in ``names`` flat into ``target``
    (the first of a name wins), in one pass over the data (two when some are hard links)."""
    linked = {}
    for relative, info, tar in _members(deb_path):
        name = relative.rsplit("/", 1)[-1]
        if not relative.startswith(directory + "/") or name not in names or (target / name).exists():
            continue
        if info.isreg():
            _write(tar, info, target / name)
        elif info.islnk():
            linked.setdefault(safe_relative(info.linkname), name)
    for relative, info, tar in _members(deb_path) if linked else ():
        if relative in linked and info.isreg() and not (target / linked[relative]).exists():
            _write(tar, info, target / linked[relative])
