"""Receive an uploaded crash archive: stream, check, and unpack it safely.

The request body flows through a decompressor straight into the tar reader
and out to the task's ``crash/`` directory in bounded chunks: the packed
archive is never stored and nothing is unpacked twice.  Every byte is
counted on the way, so ``MaxPackedSize``, ``MaxUnpackedSize`` and
``MinStorageLeft`` hold even when headers lie, and across concurrent
uploads (``retrace_server.intake.storage``).  Extraction never shells out
to tar and accepts only regular files with known names at the top level.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import tarfile
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from retrace_server import compression, tarstream
from retrace_server.errors import (
    BadRequest,
    InvalidCrashData,
    LengthRequired,
    MaliciousArchive,
    MissingCrashFile,
    UnsupportedArchive,
    UploadTooLarge,
    disk_full_explained,
    system_module,
)
from retrace_server.intake.body import RequestBody, SlowUpload
from retrace_server.intake.storage import NO_STORAGE

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from pathlib import Path

CHUNK_SIZE = 1024 * 1024
_SNIFF_SIZE = 8192
_PLAIN_FILE_TYPES = {tarfile.REGTYPE, tarfile.AREGTYPE}


# check(first bytes of a crash file, its name): raises what is wrong with them.
HeadCheck = Callable[[bytes, str], object]


@dataclasses.dataclass(frozen=True)
class ArchiveFormat:
    """One accepted Content-Type and how to read bodies of that type."""

    content_type: str
    aliases: tuple[str, ...]
    magic_types: frozenset[str]
    description: str
    decompress: Callable[[io.BufferedReader[Any], int], io.BufferedReader[Any]]

    def accepts(self, content_type: str) -> bool:
        return content_type == self.content_type or content_type in self.aliases


def _plain_reader(raw: io.BufferedReader[Any], _memlimit: int) -> io.BufferedReader[Any]:
    return raw


# Order matters: /settings lists them like this, xz first as upstream did.
FORMATS = (
    ArchiveFormat(
        "application/x-xz-compressed-tar", ("application/x-xz",), frozenset({"application/x-xz"}), "xz-compressed data",
        compression.xz_reader
    ),
    ArchiveFormat(
        "application/x-gzip",
        ("application/gzip", "application/x-compressed-tar"),
        frozenset({"application/gzip", "application/x-gzip"}),
        "gzip-compressed data",
        compression.gzip_reader,
    ),
    ArchiveFormat(
        "application/x-zstd-compressed-tar",
        ("application/zstd",),
        frozenset({"application/zstd", "application/x-zstd"}),
        "zstd-compressed data",
        compression.zstd_reader,
    ),
    ArchiveFormat("application/x-tar", (), frozenset({"application/x-tar"}), "a plain tar archive", _plain_reader),
)

DECOMPRESSION_ERRORS = (*compression.CORRUPT_DATA, tarfile.TarError)


def supported_formats() -> list[str]:
    """Content-Types for ``/settings``, in upstream's order."""
    return [fmt.content_type for fmt in FORMATS]


def format_for(content_type: str | None) -> ArchiveFormat:
    """The ArchiveFormat for a Content-Type header value, or UnsupportedArchive."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    for fmt in FORMATS:
        if fmt.accepts(media_type):
            return fmt
    raise UnsupportedArchive(
        "Specified archive format is not supported; send one of: " + ", ".join(supported_formats())
    )


def declared_length(content_length: int | None, max_bytes: int) -> int:
    """Check Content-Length before a single body byte is read."""
    if content_length is None:
        raise LengthRequired("You need to set Content-Length header properly")
    if content_length > max_bytes:
        raise UploadTooLarge(
            f"Specified archive is too large: {content_length} bytes, the server accepts at most {max_bytes} bytes"
        )
    return content_length


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one upload may bring; ``files`` maps allowed names to a size cap (None: any).

    ``reserve(nbytes)`` claims disk space for the next file (``retrace_server.intake.storage``)
    and raises NotEnoughStorage when it does not fit; ``head_checks`` maps a
    name to ``check(first bytes, name)``, run before the rest is written.
    """

    max_unpacked_bytes: int
    files: dict[str, int | None]
    reserve: Callable[[int], None]
    head_checks: dict[str, HeadCheck] = dataclasses.field(default_factory=dict)
    # What a decompressor may hold (MaxDecoderMemory): xz and zstd headers that declare more are refused.
    decoder_memory: int = compression.DEFAULT_DECODER_MEMORY
    # started(name, declared size): a crash file's first bytes are on disk, the rest is still to come.
    started: Callable[[str, int], None] | None = None


def _display_name(name: str) -> str:
    """A member name safe to quote back: printable, short, never a path of ours."""
    shown = "".join(ch if ch.isprintable() else "?" for ch in name)[:64]
    return shown or "?"


_GuardedTarInfo = tarstream.guarded_tarinfo(
    lambda what: MaliciousArchive(f"The archive has {what}; crash archives never need them"))


def _member_name(member: tarfile.TarInfo) -> str:
    """The plain file name of ``member``, or MaliciousArchive saying why not."""
    name = member.name
    if name.startswith("./"):
        name = name[2:]
    shown = _display_name(member.name)
    if member.issym():
        raise MaliciousArchive(f"Symlinks are not allowed to be in the archive ('{shown}')")
    if member.islnk():
        raise MaliciousArchive(f"Hard links are not allowed to be in the archive ('{shown}')")
    if member.ischr() or member.isblk():
        raise MaliciousArchive(f"Device files are not allowed to be in the archive ('{shown}')")
    if member.isfifo():
        raise MaliciousArchive(f"FIFOs are not allowed to be in the archive ('{shown}')")
    if member.isdir():
        raise MaliciousArchive(
            f"Directories are not allowed to be in the archive ('{shown}'); pack the files with bare names"
        )
    if member.type not in _PLAIN_FILE_TYPES or member.sparse is not None:
        if member.issparse():
            raise MaliciousArchive(
                f"Sparse files are not allowed in the archive ('{shown}'); pack the files without --sparse")
        raise MaliciousArchive(f"Only regular files are allowed in the archive ('{shown}' is not one)")
    if name.startswith("/"):
        raise MaliciousArchive(f"Absolute paths are not allowed in the archive ('{shown}')")
    if ".." in name.split("/"):
        raise MaliciousArchive(f"Paths with '..' are not allowed in the archive ('{shown}')")
    if "/" in name or "\0" in name:
        raise MaliciousArchive(f"Files must be at the top level of the archive ('{shown}' is not)")
    return name


def _copy_member(source: IO[bytes], target_path: Path, size: int, check_head: HeadCheck | None = None,
                 digest: hashlib._Hash | None = None, started: Callable[[str, int], None] | None = None) -> int:
    """Write exactly ``size`` bytes; ``x`` mode never overwrites or follows links.

    ``check_head(first bytes, name)`` runs on the first chunk, before the file is created; ``digest``
    (a hashlib object) sees every chunk as it is written, so no second pass reads the file again;
    ``started(name, size)`` runs once the first chunk is on disk.
    """
    chunk = source.read(min(CHUNK_SIZE, size))
    if check_head is not None:
        check_head(chunk, target_path.name)
    written = 0
    with disk_full_explained(NO_STORAGE), open(target_path, "xb") as target:
        while written < size:
            if not chunk:
                raise BadRequest("The archive is truncated: a file ends before its declared size")
            target.write(chunk)
            if digest is not None:
                digest.update(chunk)
            if started is not None and not written:
                target.flush()
                started(target_path.name, size)
            written += len(chunk)
            chunk = source.read(min(CHUNK_SIZE, size - written)) if written < size else b""
    os.chmod(target_path, 0o640)
    return written


def _sniffed_type(buffered: io.BufferedReader[compression.RawReader]) -> str:
    head = buffered.peek(_SNIFF_SIZE)[:_SNIFF_SIZE]
    if not head:
        raise BadRequest("The upload is empty")
    return mime_type(head)


def mime_type(head: bytes) -> str:
    """libmagic's MIME type of data starting with ``head``."""
    return str(system_module("magic").from_buffer(head, mime=True))


def _actual_format(declared: ArchiveFormat, buffered: io.BufferedReader[compression.RawReader]) -> ArchiveFormat:
    """The format the bytes are in, whichever archive type was declared: upstream unpacked with GNU tar,
    which finds the compression itself, and its own client sends a gzip-compressed tar as
    application/x-tar."""
    actual = _sniffed_type(buffered)
    if actual in declared.magic_types:
        return declared
    for other in FORMATS:
        if actual in other.magic_types:
            return other
    raise UnsupportedArchive(
        f"The upload is declared as {declared.content_type} but it is not an archive this server reads (it looks "
        f"like {actual}); send a tar, or a tar compressed with xz, gzip or zstd"
    )


def _unpack_members(stream: IO[bytes], crash_dir: Path, limits: Limits, digests: dict[str, str]) -> dict[str, int]:
    unpacked = 0
    sizes: dict[str, int] = {}
    # bufsize: tarfile's stream mode otherwise reads in 10 KiB steps.
    with tarfile.open(fileobj=stream, mode="r|", tarinfo=_GuardedTarInfo, bufsize=CHUNK_SIZE) as tar:
        for member in tar:
            name = _member_name(member)
            if name not in limits.files:
                raise MaliciousArchive(f"File '{_display_name(name)}' is not allowed to be in the archive")
            if name in sizes:
                raise MaliciousArchive(f"The archive holds '{name}' more than once")
            cap = limits.files[name]
            if cap is not None and member.size > cap:
                raise InvalidCrashData(f"The '{name}' file is larger than expected ({member.size} bytes, at most {cap})")
            if unpacked + member.size > limits.max_unpacked_bytes:
                raise UploadTooLarge(
                    f"Specified archive's content is too large: it unpacks to more than "
                    f"{limits.max_unpacked_bytes} bytes, the server's limit"
                )
            limits.reserve(member.size)
            digest = hashlib.md5(usedforsecurity=False) if name in digests else None
            source = tar.extractfile(member)
            assert source is not None  # a regular file's (_member_name)
            sizes[name] = _copy_member(source, crash_dir / name, member.size, limits.head_checks.get(name), digest,
                                       limits.started)
            if digest is not None:
                digests[name] = digest.hexdigest()
            limits.reserve(0)
            unpacked += sizes[name]
    return sizes


def receive_archive(stream: BinaryIO, content_length: int, fmt: ArchiveFormat, crash_dir: Path, limits: Limits,
                    digests: dict[str, str] | None = None, min_rate: int = 0) -> dict[str, int]:
    """Stream an upload of ``content_length`` bytes into ``crash_dir``.

    ``content_length`` has passed ``declared_length``; the body must come
    at ``min_rate`` bytes a second at least (``retrace_server.intake.body``).
    Returns a dict of the file names written and their sizes; the names in
    ``digests`` get their md5 (hex) there, computed while they stream in.
    On any rejection but a slow body the rest of the body is still read (it
    is at most MaxPackedSize), so the client gets our answer instead of a
    reset connection; the caller removes what was written.
    """
    body = RequestBody(stream, content_length, min_rate)
    buffered = io.BufferedReader(compression.RawReader(body), CHUNK_SIZE)
    try:
        actual = _actual_format(fmt, buffered)
        try:
            sizes = _unpack_members(actual.decompress(buffered, limits.decoder_memory), crash_dir, limits,
                                    {} if digests is None else digests)
        except DECOMPRESSION_ERRORS as err:
            raise BadRequest(f"The archive is corrupt or truncated ({describe_error(err)})") from None
    except SlowUpload:
        raise
    except BaseException:
        with contextlib.suppress(BadRequest, SlowUpload):
            body.drain()
        raise
    body.drain()
    return sizes


def describe_error(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:200]


def require_files(sizes: Mapping[str, int], required: Iterable[str]) -> None:
    """MissingCrashFile naming the first required file that was not uploaded."""
    for name in required:
        if name not in sizes:
            raise MissingCrashFile(f"Required file '{name}' is missing")
