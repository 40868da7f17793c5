"""Kernel dumps: which format, and which kernel wrote them.

Users send three formats: ELF (``/proc/vmcore`` as is, or QEMU's
``dump-guest-memory``), kdump-compressed (``makedumpfile -c``, signature
``KDUMP``) and makedumpfile's flattened stream (``-F``, and QEMU 7.2's
``-z``), which is a list of ``(offset, size, data)`` records to be laid out
again.  The kernel is named by the dump's VMCOREINFO text
(``OSRELEASE=``, and since Linux 5.9 ``BUILD-ID=``): an ELF note, or a
block the kdump sub-header points to.  Reading it ourselves costs
milliseconds and works without a vmlinux; ``crash --osrelease`` only
cross-checks.  A dump without VMCOREINFO is searched as text, as upstream
did ("60% crash, 40% regexes").
"""
from __future__ import annotations

import dataclasses
import enum
import re
import struct
from typing import TYPE_CHECKING

from retrace_server.elf import PT_NOTE, file_reader, image_header, program_headers
from retrace_server.errors import InvalidCrashData

if TYPE_CHECKING:
    from io import BufferedReader
    from pathlib import Path

    from retrace_server.elf import Reader

ET_CORE = 4
_FLAT_SIGNATURE = b"makedumpfile\0"
_FLAT_HEADER_SIZE = 4096
_FLAT_RECORD = struct.Struct(">qq")
_FLAT_IMAGE_BYTES = 64 << 20
_MAX_FLAT_RECORDS = 4_000_000
_KDUMP_SIGNATURES = (b"KDUMP   ", b"DISKDUMP")
_KDUMP_HEADER = struct.Struct("<8si")
_UTS_FIELD = 65
_KDUMP_BLOCK_SIZE_OFFSET = 428
_KDUMP_VMCOREINFO = struct.Struct("<qQ")  # offset_vmcoreinfo, size_vmcoreinfo in the sub-header
_KDUMP_VMCOREINFO_AT = 32
_MAX_VMCOREINFO = 1 << 20
_TEXT_CHUNK = 8 << 20
_TEXT_OVERLAP = 4096
_KERNEL_RELEASE = r"[0-9]+\.[0-9]+[A-Za-z0-9._+~-]*"
_TEXT_KEYS = {
    "OSRELEASE": re.compile(rb"OSRELEASE=(" + _KERNEL_RELEASE.encode() + rb")\n"),
    "BUILD-ID": re.compile(rb"BUILD-ID=([0-9a-f]{40})\n"),
}
_LINUX_VERSION = re.compile(rb"Linux version (" + _KERNEL_RELEASE.encode() + rb") \(")
KERNEL_RELEASE = re.compile(_KERNEL_RELEASE, re.ASCII)


class DumpFormat(enum.Enum):
    ELF = "ELF"
    KDUMP = "kdump-compressed"
    FLATTENED = "flattened (makedumpfile -F)"


@dataclasses.dataclass(frozen=True)
class KernelIdentity:
    """What names the crashed kernel, and where it was read."""

    release: str | None
    build_id: str | None
    source: str  # "VMCOREINFO", "text search", ...


def dump_format(path: Path, name: str = "vmcore") -> DumpFormat:
    """The DumpFormat of an uploaded dump; InvalidCrashData for anything else."""
    with open(path, "rb") as dump:
        return dump_format_of(dump.read(64), name)


def dump_format_of(head: bytes, name: str = "vmcore") -> DumpFormat:
    """The DumpFormat its first 64 bytes show; InvalidCrashData for anything else."""
    if head.startswith(_FLAT_SIGNATURE):
        return DumpFormat.FLATTENED
    if head[:8] in _KDUMP_SIGNATURES:
        return DumpFormat.KDUMP
    found = image_header(lambda offset, length: head[offset:offset + length])
    if found is not None:
        if found[1][1] == ET_CORE:
            return DumpFormat.ELF
        raise InvalidCrashData(f"The '{name}' file is an ELF file but not a core dump (a vmlinux or a program?)")
    raise InvalidCrashData(
        f"The '{name}' file is not a kernel dump: expected ELF, kdump-compressed (makedumpfile -c) "
        "or flattened (makedumpfile -F) format"
    )


class _FlattenedImage:
    """Random access to the start of the image a flattened stream describes, without writing it out.

    Everything that names the kernel (ELF or kdump headers, VMCOREINFO)
    lies in the image's first megabytes, so only the first
    ``_FLAT_IMAGE_BYTES`` are laid out, in memory, while the stream is
    read once; at most ``_MAX_FLAT_RECORDS`` records are read.  Memory and
    time stay bounded however the records are forged (millions of tiny or
    overlapping ones); makedumpfile -R reassembles the whole image later,
    in the sandbox.
    """

    def __init__(self, handle: BufferedReader) -> None:
        self.image = bytearray()
        position = _FLAT_HEADER_SIZE
        for _ in range(_MAX_FLAT_RECORDS):
            handle.seek(position)
            raw = handle.read(_FLAT_RECORD.size)
            if len(raw) < _FLAT_RECORD.size:
                break
            offset, size = _FLAT_RECORD.unpack(raw)
            if offset < 0 or size < 0:
                break
            if offset < _FLAT_IMAGE_BYTES:
                data = handle.read(min(size, _FLAT_IMAGE_BYTES - offset))
                if len(self.image) < offset + len(data):
                    self.image.extend(bytes(offset + len(data) - len(self.image)))
                self.image[offset:offset + len(data)] = data
            position += _FLAT_RECORD.size + size

    def read(self, offset: int, length: int) -> bytes:
        """Bytes of the image (a later record wins where records overlap); holes and the rest read as zeros."""
        return bytes(self.image[offset:offset + length]).ljust(length, b"\0")


def _elf_vmcoreinfo(read: Reader) -> bytes | None:
    found = image_header(read)
    if found is None:
        return None
    elf, header = found
    for p_type, offset, _vaddr, filesz, _memsz in program_headers(read, elf, header):
        if p_type != PT_NOTE or filesz > _MAX_VMCOREINFO * 64:
            continue
        for _type, name, desc in elf.notes(read(offset, filesz)):
            if name == b"VMCOREINFO":
                return desc
    return None


def _kdump_header(read: Reader) -> tuple[bytes | None, str | None]:
    """``(vmcoreinfo bytes or None, utsname release or None)`` of a kdump-compressed image."""
    head = read(0, 512)
    signature, version = _KDUMP_HEADER.unpack_from(head)
    release = head[12 + 2 * _UTS_FIELD:12 + 3 * _UTS_FIELD].split(b"\0", 1)[0]
    (block_size,) = struct.unpack_from("<i", head, _KDUMP_BLOCK_SIZE_OFFSET)
    vmcoreinfo = None
    if version >= 3 and 0 < block_size <= 1 << 20:
        offset, size = _KDUMP_VMCOREINFO.unpack(read(block_size + _KDUMP_VMCOREINFO_AT, _KDUMP_VMCOREINFO.size))
        if 0 < size <= _MAX_VMCOREINFO and offset > 0:
            vmcoreinfo = read(offset, size)
    return vmcoreinfo, release.decode("ascii", "replace") or None


def parse_vmcoreinfo(raw: bytes) -> dict[str, str]:
    """``{key: value}`` of VMCOREINFO's ``KEY=value`` lines."""
    text = raw.decode("ascii", errors="replace")
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _identity(fields: dict[str, str], source: str, fallback_release: str | None = None) -> KernelIdentity:
    release = fields.get("OSRELEASE") or fallback_release
    if release is not None and not KERNEL_RELEASE.fullmatch(release):
        release = None
    build_id = fields.get("BUILD-ID", "").lower()
    return KernelIdentity(release, build_id if re.fullmatch(r"[0-9a-f]{40}", build_id) else None, source)


def read_vmcoreinfo(path: Path) -> KernelIdentity | None:
    """The KernelIdentity from the dump's VMCOREINFO (or kdump header); None when it has neither."""
    with open(path, "rb") as handle:
        fmt = dump_format(path)
        read = _FlattenedImage(handle).read if fmt is DumpFormat.FLATTENED else file_reader(handle)
        image = read(0, 8)
        if image in _KDUMP_SIGNATURES:
            raw, uts_release = _kdump_header(read)
        else:
            raw, uts_release = _elf_vmcoreinfo(read), None
    if raw is None and uts_release is None:
        return None
    identity = _identity(parse_vmcoreinfo(raw or b""), "VMCOREINFO" if raw else "kdump header", uts_release)
    return identity if identity.release or identity.build_id else None


def search_text(path: Path, limit: int | None = None) -> KernelIdentity | None:
    """The kernel named anywhere in the dump's bytes (the vmcoreinfo page, a boot banner); None if nowhere.

    Only uncompressed dumps hold the text; ``limit`` bounds how many bytes are read.
    """
    found: dict[str, str] = {}
    banner = None
    with open(path, "rb") as handle:
        position = 0
        tail = b""
        while limit is None or position < limit:
            chunk = handle.read(_TEXT_CHUNK)
            if not chunk:
                break
            window = tail + chunk
            for key, pattern in _TEXT_KEYS.items():
                if key not in found and (match := pattern.search(window)):
                    found[key] = match[1].decode("ascii")
            if banner is None and (match := _LINUX_VERSION.search(window)):
                banner = match[1].decode("ascii")
            if len(found) == len(_TEXT_KEYS):
                break
            tail = window[-_TEXT_OVERLAP:]
            position += len(chunk)
    if not found and banner is None:
        return None
    identity = _identity(found, "text search", banner)
    return identity if identity.release else None

