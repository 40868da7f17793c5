"""The wrappings customers put around a crash: zip, 7z and rar archives, bzip2 and lzop files, one inside another.

Support engineers import what customers upload: a vmcore in a tar in a
zip, a problem directory as a .7z, a core as .bz2 or .lzo.  Each layer is
taken off into one file of a staging directory, which the importer then
reads like the file it came from (``imported.materialize``), at most
MAX_DEPTH layers deep.  Archives are read by libarchive's ``bsdtar`` in
the sandbox (bubblewrap, seccomp, a memory limit): it turns a zip, 7z or
rar into a tar stream (pax: members over 8 GiB), which the upload's own tar reader then unpacks with
the upload's names, caps and path rules; an archive holding a single other
file gives that file, the next layer.  bzip2 is read by Python's own
decoder (its memory is bounded by design), lzop by ``lzop`` in the
sandbox.  Every layer's output counts against the unpacked-size cap and
the spool's free space as it is written.
"""
from __future__ import annotations

import bz2
import contextlib
import os
import subprocess
import tarfile
import time
from typing import IO, TYPE_CHECKING, BinaryIO

from retrace_server.environments.sandbox import SandboxUnavailable, kill_group, start_sandboxed
from retrace_server.errors import InvalidCrashData, UploadTooLarge, disk_full_explained
from retrace_server.intake import archive
from retrace_server.intake.storage import NO_STORAGE

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from retrace_server.intake.archive import Limits

MAX_DEPTH = 3
# First bytes -> the kind of wrapping.
_MAGIC = (
    (b"PK\x03\x04", "zip"), (b"PK\x05\x06", "zip"), (b"7z\xbc\xaf\x27\x1c", "7z"), (b"Rar!\x1a\x07", "rar"),
    (b"BZh", "bzip2"), (b"\x89LZO\x00\r\n\x1a\n", "lzop"),
)
ARCHIVES = ("zip", "7z", "rar")
# A layer's program may run this long (CPU seconds) and hold the decoder's memory plus this much.
_CPU_SECONDS = 1800
_PROGRAM_MEMORY = 256 * 1024 * 1024
# What a layer's reader raises on bad data (bz2: OSError without an errno, EOFError; a pipe: ValueError).
_LAYER_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, ValueError)
_MESSAGE_BYTES = 4096


def kind_of(head: bytes) -> str | None:
    """``zip``, ``7z``, ``rar``, ``bzip2`` or ``lzop`` when ``head`` starts one, else None."""
    return next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)


def unwrap(kind: str, path: Path, staging: Path, limits: Limits, allowed: set[str]) -> Path:
    """Take one layer off ``path`` (of ``kind``) into a new file in ``staging``; returns it.

    An archive becomes a tar of its files, except one that holds a single
    file whose name is not a crash file's (``allowed``): that file is the
    next layer.
    """
    target = staging / f"layer-{sum(1 for entry in staging.iterdir() if entry.name.startswith('layer-')) + 1}"
    if kind == "bzip2":
        with bz2.open(path, "rb") as stream:
            _write_layer(stream, target, limits, f"The {kind} file")
        return target
    if kind == "lzop":
        with _sandboxed(["lzop", "-dc", "--", str(path)], path, staging, limits, kind) as stream:
            _write_layer(stream, target, limits, "The lzop file")
        return target
    # An encrypted archive: bsdtar asks for a passphrase, reads none (there is no terminal) and gives up.
    command = ["bsdtar", "-cf", "-", "--format", "pax", f"@{path}"]
    with _sandboxed(command, path, staging, limits, kind) as stream:
        _write_layer(stream, target, limits, f"The {kind} archive")
    return _single_inner_file(target, staging, limits, allowed) or target


def _single_inner_file(tar_path: Path, staging: Path, limits: Limits, allowed: set[str]) -> Path | None:
    """The one file of the tar ``tar_path`` when it holds one that is not a crash file, written beside it."""
    try:
        with tarfile.open(tar_path, "r:") as tar:
            members = [member for member in tar.getmembers() if not member.isdir()]
            if len(members) != 1 or not members[0].isfile() or members[0].name.rsplit("/", 1)[-1] in allowed:
                return None
            source = tar.extractfile(members[0])
            assert source is not None  # a regular file
            inner = staging / f"{tar_path.name}-inner"
            _write_layer(source, inner, limits, "The archive's file")
    except tarfile.TarError as err:
        raise InvalidCrashData(f"The archive could not be read ({str(err)[:200]})") from None
    tar_path.unlink()
    return inner


@contextlib.contextmanager
def _sandboxed(command: list[str], path: Path, staging: Path, limits: Limits, kind: str) -> Iterator[IO[bytes]]:
    """``command``'s output, the program run in the sandbox on ``path`` alone; InvalidCrashData with the
    program's first complaint (the file's path left out) when it fails."""
    with open(staging / "errors", "w+b") as errors:
        try:
            process = start_sandboxed(command, [path], cpu_seconds=_CPU_SECONDS,
                                      memory_bytes=limits.decoder_memory + _PROGRAM_MEMORY, stderr=errors)
        except (OSError, SandboxUnavailable) as err:
            raise InvalidCrashData(f"This server cannot read {kind} files right now ({err})") from None
        assert process.stdout is not None  # started with stdout=PIPE
        try:
            yield process.stdout
        except BaseException:
            kill_group(process)
            raise
        finally:
            process.stdout.close()
            _wait(process)
        if process.returncode != 0:
            errors.seek(0)
            said = errors.read(_MESSAGE_BYTES).decode("utf-8", "replace").replace(str(path), "the file")
            first = next((line.strip() for line in said.splitlines() if line.strip()), "")
            reason = first.removeprefix(f"{command[0]}: ").strip()
            if not reason or "(null)" in reason:  # libarchive says nothing of a file cut short
                reason = "it is damaged or cut short"
            elif "passphrase" in reason.lower() or "encrypt" in reason.lower():
                reason = "it is encrypted; ask for it without a password"
            raise InvalidCrashData(f"The {kind} file could not be read: {reason[:300]}")


def _wait(process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while process.poll() is None:
        if time.monotonic() > deadline:
            kill_group(process)
            process.wait()
            return
        time.sleep(0.01)


def write_capped(stream: BinaryIO | IO[bytes], target: Path, limits: Limits, grows: str, broken: str,
                 errors: tuple[type[BaseException], ...]) -> int:
    """Copy ``stream`` into ``target`` within the unpacked-size cap, claiming disk as it goes; returns the bytes.

    Over the cap: UploadTooLarge saying "``grows`` to more than N bytes";
    one of ``errors`` while reading: InvalidCrashData saying "``broken`` is
    corrupt or truncated" (an OSError with an errno is the disk's, not the
    data's, and goes on as it is).
    """
    written = 0
    try:
        with disk_full_explained(NO_STORAGE), open(target, "xb") as out:
            while chunk := stream.read(archive.CHUNK_SIZE):
                written += len(chunk)
                if written > limits.max_unpacked_bytes:
                    raise UploadTooLarge(f"{grows} to more than {limits.max_unpacked_bytes} bytes, the server's limit")
                limits.reserve(len(chunk))
                out.write(chunk)
    except errors as err:
        if isinstance(err, OSError) and err.errno is not None:
            raise
        raise InvalidCrashData(f"{broken} is corrupt or truncated ({archive.describe_error(err)})") from None
    os.chmod(target, 0o640)
    return written


def _write_layer(stream: BinaryIO | IO[bytes], target: Path, limits: Limits, what: str) -> int:
    return write_capped(stream, target, limits, f"{what} unpacks", what, _LAYER_ERRORS)
