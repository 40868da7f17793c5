"""A fetched file becomes the task's crash data, whatever form it came in.

Support engineers are handed what customers send: a bare vmcore, a
``vmcore.xz``, a tar of a problem directory, a gzip-compressed coredump, a
zip or 7z of any of those.  The file is recognized by its bytes, never its
name: a tar (compressed or not) is unpacked by the upload path's own reader
with the upload's limits; a single compressed file is decompressed into
place with the same caps; wrappings (``layers``: zip, 7z, rar, bzip2,
lzop, a compressed file holding one) are taken off first; a bare dump is
moved into place without a copy.  Anything else is refused with what it
looks like.
"""
from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING, BinaryIO

from retrace_server.errors import InvalidCrashData, UploadTooLarge
from retrace_server.intake import archive, crashdata, layers

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
    """InvalidCrashData unless ``head`` (a file's first bytes) starts a dump, a tar, a compressed file or an
    archive ``layers`` reads."""
    kind = archive.mime_type(head) if head else ""
    if _is_tar(head) or any(kind in fmt.magic_types for fmt in archive.FORMATS) or layers.kind_of(head):
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
    what the file looks like when it is neither a dump nor an archive.  The
    wrappings ``layers`` reads (zip, 7z, rar, bzip2, lzop, and compressed
    files holding them) are taken off first, at most ``layers.MAX_DEPTH``.
    """
    staging = crash_dir.with_name(f".{crash_dir.name}-layers")
    staging.mkdir(mode=0o700)
    try:
        return _materialize(downloaded, crash_dir, limits, is_vmcore, staging, 0)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _materialize(downloaded: Path, crash_dir: Path, limits: archive.Limits, is_vmcore: bool, staging: Path,
                 depth: int) -> dict[str, int]:
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
        wrapped = layers.kind_of(head) if fmt is None else (layers.kind_of(head) or _wrapped_by(head))
        if wrapped is not None:
            if depth >= layers.MAX_DEPTH:
                raise InvalidCrashData(f"The file nests archives and compressed files more than {layers.MAX_DEPTH} "
                                       "deep; this server takes off at most that many layers")
            if fmt is not None:  # first the compression this module reads, into a layer of its own
                inner = staging / f"layer-{depth}-decompressed"
                _decompress_into(stream, inner, limits)
            else:
                inner = layers.unwrap(wrapped, downloaded, staging, limits, set(limits.files))
            return _materialize(inner, crash_dir, limits, is_vmcore, staging, depth + 1)
        name = _refuse_unless_dump(head, is_vmcore)
        if fmt is None:
            if size > limits.max_unpacked_bytes:
                raise UploadTooLarge(f"The {name} is {size} bytes; this server accepts at most "
                                     f"{limits.max_unpacked_bytes}")
            os.rename(downloaded, crash_dir / name)
            return {name: size}
        return {name: _decompress_into(stream, crash_dir / name, limits)}


def _wrapped_by(head: bytes) -> str | None:
    """A compressed file that holds another compressed one (a tar.xz in a .gz): a layer too."""
    kind = archive.mime_type(head) if head else ""
    return "compressed" if any(kind in fmt.magic_types for fmt in archive.FORMATS[:-1]) else None


def _decompress_into(stream: BinaryIO, target: Path, limits: archive.Limits) -> int:
    return layers.write_capped(stream, target, limits, "The file decompresses", "The compressed file",
                               archive.DECOMPRESSION_ERRORS)
