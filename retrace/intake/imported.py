"""A fetched file becomes the task's crash data, whatever form it came in.

Support engineers are handed what customers send: a bare vmcore, a
``vmcore.xz``, a tar of a problem directory, a gzip-compressed coredump.
The file is recognized by its bytes, never its name: a tar (compressed or
not) is unpacked by the upload path's own reader with the upload's
limits; a single compressed file is decompressed into place with the same
caps; a bare dump is moved into place without a copy.  Anything else is
refused with what it looks like.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, BinaryIO

from retrace_server.errors import InvalidCrashData, UploadTooLarge, disk_full_explained
from retrace_server.intake import archive, crashdata
from retrace_server.intake.storage import NO_STORAGE

if TYPE_CHECKING:
    from pathlib import Path


_HEAD = 8192


def _decompressor(path: Path) -> archive.ArchiveFormat | None:
    """The archive format whose decompressor reads ``path`` (None when it is not compressed)."""
    with open(path, "rb") as handle:
        kind = archive.mime_type(handle.read(_HEAD))
    for fmt in archive.FORMATS:
        if kind in fmt.magic_types and fmt.content_type != "application/x-tar":
            return fmt
    return None


def _is_tar(head: bytes) -> bool:
    return len(head) >= 262 and head[257:262] == b"ustar"


def check_head(head: bytes, is_vmcore: bool) -> None:
    """InvalidCrashData unless ``head`` (a file's first bytes) starts a dump, a tar or a compressed file."""
    kind = archive.mime_type(head) if head else ""
    if _is_tar(head) or any(kind in fmt.magic_types for fmt in archive.FORMATS):
        return
    _refuse_unless_dump(head, is_vmcore)


def _refuse_unless_dump(head: bytes, is_vmcore: bool) -> str:
    """``vmcore`` or ``coredump`` when ``head`` starts one, else InvalidCrashData saying what it looks like."""
    name = "vmcore" if is_vmcore else "coredump"
    try:
        crashdata.HEAD_CHECKS[name](head[:crashdata.HEAD_SIZE], name)
        return name
    except InvalidCrashData:
        # What libmagic says the bytes are is not repeated: a URL can reach files that are nobody's business.
        raise InvalidCrashData(f"The file is empty, or not a {name}, nor a tar archive or a compressed {name} this "
                               "server reads") from None


def materialize(downloaded: Path, crash_dir: Path, limits: archive.Limits, is_vmcore: bool) -> dict[str, int]:
    """Turn the file ``downloaded`` into files in ``crash_dir``; returns ``{name: size}``.

    ``limits`` are the upload's (``archive.Limits``); InvalidCrashData names
    what the file looks like when it is neither a dump nor an archive.
    """
    size = os.path.getsize(downloaded)
    fmt = _decompressor(downloaded)
    with open(downloaded, "rb") as handle:
        stream = fmt.decompress(handle, limits.decoder_memory) if fmt else handle
        try:
            head = stream.peek(_HEAD)[:_HEAD]
        except archive.DECOMPRESSION_ERRORS as err:
            raise InvalidCrashData(f"The file is corrupt ({archive.describe_error(err)})") from None
        if _is_tar(head):
            handle.seek(0)
            return archive.receive_archive(handle, size, fmt or archive.FORMATS[-1], crash_dir, limits)
        name = _refuse_unless_dump(head, is_vmcore)
        if fmt is None:
            if size > limits.max_unpacked_bytes:
                raise UploadTooLarge(f"The {name} is {size} bytes; this server accepts at most "
                                     f"{limits.max_unpacked_bytes}")
            os.rename(downloaded, crash_dir / name)
            return {name: size}
        return {name: _decompress_into(stream, crash_dir / name, limits)}


def _decompress_into(stream: BinaryIO, target: Path, limits: archive.Limits) -> int:
    written = 0
    try:
        with disk_full_explained(NO_STORAGE), open(target, "xb") as out:
            while chunk := stream.read(archive.CHUNK_SIZE):
                written += len(chunk)
                if written > limits.max_unpacked_bytes:
                    raise UploadTooLarge(f"The file decompresses to more than {limits.max_unpacked_bytes} bytes, "
                                         "the server's limit")
                limits.reserve(len(chunk))
                out.write(chunk)
    except archive.DECOMPRESSION_ERRORS as err:
        raise InvalidCrashData(f"The compressed file is corrupt or truncated ({archive.describe_error(err)})") from None
    os.chmod(target, 0o640)
    return written
