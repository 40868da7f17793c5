"""What we can tell about an uploaded coredump from its bytes alone.

``read_core`` reads the ELF notes the kernel writes into every core: the
mapped files (``NT_FILE``), the signal (``NT_SIGINFO``) and, from the ELF
headers of each mapped file that the core keeps in memory, its build-id.
It needs nothing from the host, so it is not fooled by a host file of the
same name, and every offset it follows is checked against the file, since
the core is an untrusted upload.
"""

from __future__ import annotations  # the client runs on Python 3.9 (RHEL 9): X | None in annotations

import bisect
import dataclasses
import struct
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Protocol

from retrace_server.errors import InvalidCrashData
from retrace_server.paths import is_normal_absolute, shown

if TYPE_CHECKING:
    import os
    from collections.abc import Iterator

ELF_MAGIC = b"\x7fELF"
ET_CORE = 4
PT_LOAD = 1
PT_NOTE = 4
NT_PRSTATUS = 1
NT_FILE = 0x46494C45
NT_SIGINFO = 0x53494749
NT_GNU_BUILD_ID = 3
# Caps on what one core may make the reader do.  A real core has one
# PT_NOTE segment (a few hundred KiB for a thousand threads) and an NT_FILE
# entry per mapping; a forged one repeats headers to multiply the work.
_MAX_NOTES_BYTES = 64 * 1024 * 1024
_MAX_NOTE_SEGMENTS = 16
_MAX_NOTES = 1_000_000
_MAX_HEADERS = 65535
MAX_MAPPED_FILES = 65536
# A program or library has one or two PT_NOTE headers; the build-id is in the first few.
_MAX_IMAGE_NOTE_SEGMENTS = 8
_ELF_TYPES = {0: "NONE", 1: "REL (an object file)", 2: "EXEC (a program)", 3: "DYN (a program or library)", 4: "CORE"}

# e_machine -> architecture name as releases spell it (upstream's list, and riscv64).
_MACHINES = {3: "i386", 62: "x86_64", 40: "armhfp", 183: "aarch64", 22: "s390x", 21: "ppc64", 243: "riscv64"}
# The size of a thread's NT_PRSTATUS (struct elf_prstatus) as the Linux kernel writes it (seen in its cores): an
# ELF header that names another architecture than the registers were written by is refused, not given to
# gdb, which would print noise for it.
_PRSTATUS_BYTES = {"x86_64": 336, "aarch64": 392, "s390x": 336, "ppc64le": 504, "i386": 144, "riscv64": 376}


# ``read(offset, length)``: bytes of an ELF image, from a file or from a core's memory.
Reader = Callable[[int, int], bytes]
class CoreSource(Protocol):
    """What the core reader reads through: an open file, or one an upload is still writing."""

    def seek(self, offset: int, whence: int = ..., /) -> int: ...

    def read(self, length: int = ..., /) -> bytes: ...


# A program header: ``(p_type, p_offset, p_vaddr, p_filesz, p_memsz)``.
ProgramHeader = tuple[int, int, int, int, int]


@dataclasses.dataclass(frozen=True)
class Module:
    """A file mapped into the crashed process."""

    path: str
    start: int
    build_id: str | None


@dataclasses.dataclass(frozen=True)
class CoreInfo:
    arch: str
    modules: tuple[Module, ...]
    signal: int | None
    fault_address: int | None

    def module_at(self, path: str) -> Module | None:
        return next((module for module in self.modules if module.path == path), None)


def core_arch(path: str | os.PathLike[str]) -> str:
    """The architecture a core's ELF header names (20 bytes read); InvalidCrashData when it names none we know.

    What routing needs, without reading the core's notes: that belongs in a
    worker, never in the web process.
    """
    with open(path, "rb") as handle:
        header = handle.read(20)
    check_elf_core_header(header)
    return _architecture(struct.unpack(("<" if header[5] == 1 else ">") + "H", header[18:20])[0], _Elf(header))


def check_elf_core_header(header: bytes, name: str = "coredump") -> None:
    """InvalidCrashData unless ``header`` (the first 20 bytes or more) is the ELF header of a core file."""
    if len(header) < 20 or not header.startswith(ELF_MAGIC):
        raise InvalidCrashData(f"The '{name}' file is not an ELF core file (it has no ELF header)")
    byte_order = {1: "<", 2: ">"}.get(header[5])
    if header[4] not in (1, 2) or byte_order is None:
        raise InvalidCrashData(f"The '{name}' file has a damaged ELF header")
    (elf_type,) = struct.unpack(byte_order + "H", header[16:18])
    if elf_type != ET_CORE:
        described = _ELF_TYPES.get(elf_type, str(elf_type))
        raise InvalidCrashData(f"The '{name}' file is an ELF file of type {described}, not a core file")


class _Elf:
    """Field layout of one ELF class and byte order, shared by the core and the
    ELF images found inside it."""

    def __init__(self, ident: bytes) -> None:
        self.is_64 = ident[4] == 2
        self.order = "<" if ident[5] == 1 else ">"
        self.word = "Q" if self.is_64 else "I"
        self.word_size = 8 if self.is_64 else 4
        if self.is_64:
            self.header = struct.Struct(self.order + "16sHHIQQQIHHHHHH")
            self.phdr = struct.Struct(self.order + "IIQQQQQQ")
        else:
            self.header = struct.Struct(self.order + "16sHHIIIIIHHHHHH")
            self.phdr = struct.Struct(self.order + "IIIIIIII")

    def program_header(self, data: bytes) -> ProgramHeader:
        """``(p_type, p_offset, p_vaddr, p_filesz, p_memsz)`` from raw bytes."""
        fields = self.phdr.unpack(data)
        if self.is_64:
            p_type, _flags, offset, vaddr, _paddr, filesz, memsz, _align = fields
        else:
            p_type, offset, vaddr, _paddr, filesz, memsz, _flags, _align = fields
        return p_type, offset, vaddr, filesz, memsz

    def notes(self, data: bytes) -> Iterator[tuple[int, bytes, bytes]]:
        """``(type, name, desc)`` for every note in ``data``, stopping at damage."""
        position = 0
        while position + 12 <= len(data):
            namesz, descsz, note_type = struct.unpack_from(self.order + "III", data, position)
            position += 12
            name_end = position + namesz
            desc_start = name_end + (-namesz % 4)
            desc_end = desc_start + descsz
            if desc_end > len(data):
                return
            yield note_type, data[position:name_end].rstrip(b"\0"), data[desc_start:desc_end]
            position = desc_end + (-descsz % 4)


SHT_NOTE = 7
PT_INTERP = 3


def image_header(read: Reader) -> tuple[_Elf, tuple[Any, ...]] | None:
    """``(_Elf, header fields)`` of the ELF image ``read`` sees; None when it is not one."""
    ident = read(0, 64)
    if len(ident) < 52 or not ident.startswith(ELF_MAGIC) or ident[4] not in (1, 2) or ident[5] not in (1, 2):
        return None
    elf = _Elf(ident)
    if len(ident) < elf.header.size:
        return None
    return elf, elf.header.unpack_from(ident)


def program_headers(read: Reader, elf: _Elf, header: tuple[Any, ...]) -> list[ProgramHeader]:
    """The image's ``(p_type, p_offset, p_vaddr, p_filesz, p_memsz)`` list; empty when damaged."""
    phoff, phentsize, phnum = header[5], header[9], header[10]
    if phentsize != elf.phdr.size or phnum > 512:
        return []
    table = read(phoff, phentsize * phnum)
    return [elf.program_header(table[i:i + phentsize]) for i in range(0, len(table) - phentsize + 1, phentsize)]


def _build_id_note(elf: _Elf, data: bytes) -> str | None:
    for note_type, name, desc in elf.notes(data):
        if note_type == NT_GNU_BUILD_ID and name == b"GNU" and desc:
            return desc.hex()
    return None


def image_build_id(read: Reader, mapped: bool) -> str | None:
    """The GNU build-id of one ELF image, read through ``read(offset, length)``.

    ``mapped``: the image as loaded in memory (notes found by address
    relative to the first PT_LOAD), not as a file (notes at file offsets).
    """
    image = image_header(read)
    if image is None:
        return None
    headers = program_headers(read, *image)
    first_load = next((h for h in headers if h[0] == PT_LOAD), None)
    if mapped and first_load is None:
        return None
    notes = [h for h in headers if h[0] == PT_NOTE][:_MAX_IMAGE_NOTE_SEGMENTS]
    load_shift = first_load[2] - first_load[1] if first_load is not None else 0
    for _p_type, offset, vaddr, filesz, _memsz in notes:
        where = vaddr - load_shift if mapped else offset
        found = _build_id_note(image[0], read(where, min(filesz, 4096)))
        if found:
            return found
    return None


def _sections(read: Reader) -> Iterator[tuple[str, int, int, int]]:
    """``(name, sh_type, sh_offset, sh_size)`` of each section of an ELF file; none when it is damaged."""
    image = image_header(read)
    if image is None:
        return
    elf, header = image
    shoff, shentsize, shnum, shstrndx = header[6], header[11], header[12], header[13]
    section = struct.Struct(elf.order + ("IIQQQQIIQQ" if elf.is_64 else "IIIIIIIIII"))
    if shentsize != section.size or shnum > 4096:
        return
    table = read(shoff, shentsize * shnum)
    entries = [section.unpack_from(table, start) for start in range(0, len(table) - shentsize + 1, shentsize)]
    names = read(entries[shstrndx][4], min(entries[shstrndx][5], 1 << 20)) if shstrndx < len(entries) else b""
    for fields in entries:
        name_end = names.find(b"\0", fields[0])
        name = names[fields[0]:name_end].decode("ascii", "replace") if 0 <= fields[0] < len(names) else ""
        yield name, fields[1], fields[4], fields[5]


def _section_build_id(read: Reader) -> str | None:
    """The build-id from the note sections: in a separate debuginfo file
    (``objcopy --only-keep-debug``) the program headers still describe the
    original file's offsets, so only the section headers can be trusted."""
    image = image_header(read)
    if image is None:
        return None
    for _name, sh_type, sh_offset, sh_size in _sections(read):
        if sh_type == SHT_NOTE:
            found = _build_id_note(image[0], read(sh_offset, min(sh_size, 4096)))
            if found:
                return found
    return None


def debug_alt_link(path: str | os.PathLike[str]) -> tuple[str, str] | None:
    """``(file name, build-id)`` a debuginfo file's ``.gnu_debugaltlink`` names, or None.

    dwz moves what several debuginfo files share into one common file
    (Fedora's and Debian's ``/usr/lib/debug/.dwz/...``); gdb needs it for
    their types and lines, and finds it by that build-id.
    """
    try:
        with open(path, "rb") as handle:
            read = file_reader(handle)
            for name, _type, offset, size in _sections(read):
                if name == ".gnu_debugaltlink" and 21 < size <= 4096:
                    data = read(offset, size)
                    file_name, _, build_id = data.partition(b"\0")
                    if len(build_id) >= 8:
                        return file_name.decode("utf-8", "replace"), build_id.hex()
    except OSError:
        return None
    return None


def file_reader(handle: BinaryIO) -> Reader:
    """``read(offset, length)`` on an open file, the form the ELF readers take."""
    def read(offset: int, length: int) -> bytes:
        handle.seek(offset)
        return handle.read(length)

    return read


def file_build_id(path: str | os.PathLike[str]) -> str | None:
    """The GNU build-id of the ELF file at ``path`` (a program, library or debuginfo); None otherwise."""
    with open(path, "rb") as handle:
        read = file_reader(handle)
        return _section_build_id(read) or image_build_id(read, mapped=False)


def needs_gdb_index(path: str | os.PathLike[str]) -> bool:
    """Whether the ELF file at ``path`` has DWARF (``.debug_info``) but no index gdb reads (``.gdb_index``,
    ``.debug_names``): gdb then reads all its DWARF before the first frame."""
    with open(path, "rb") as handle:
        names = {name for name, *_ in _sections(file_reader(handle))}
    return ".debug_info" in names and not names & {".gdb_index", ".debug_names"}


def program_interpreter(path: str | os.PathLike[str]) -> str | None:
    """The dynamic loader a program names (PT_INTERP, e.g. /lib64/ld-linux-x86-64.so.2), or None."""
    try:
        with open(path, "rb") as handle:
            read = file_reader(handle)
            image = image_header(read)
            if image is None:
                return None
            for p_type, offset, _vaddr, filesz, _memsz in program_headers(read, *image):
                if p_type == PT_INTERP and 0 < filesz < 4096:
                    return read(offset, filesz).rstrip(b"\0").decode("utf-8", errors="replace") or None
    except OSError:
        return None
    return None


class _CoreReader:
    def __init__(self, handle: CoreSource, size: int) -> None:
        self.handle = handle
        self.size = size
        self._build_ids: dict[int, str | None] = {}
        ident = self.read(0, 64)
        self.elf = _Elf(ident)
        header = self.elf.header.unpack_from(ident)
        self.machine = header[2]
        phoff, phentsize, phnum = header[5], header[9], header[10]
        if phentsize != self.elf.phdr.size or phnum > _MAX_HEADERS:
            raise InvalidCrashData("The coredump has damaged program headers")
        table = self.read(phoff, phentsize * phnum)
        if len(table) < phentsize * phnum:
            raise InvalidCrashData("The coredump is truncated: its program headers are missing")
        self.segments = [self.elf.program_header(table[i:i + phentsize]) for i in range(0, len(table), phentsize)]
        # Memory lookups bisect the loads by address instead of scanning them
        # (a scan per module made large forged cores quadratic).
        self.loads = sorted((vaddr, offset, filesz) for p_type, offset, vaddr, filesz, _m in self.segments
                            if p_type == PT_LOAD and filesz)
        self.load_starts = [vaddr for vaddr, _offset, _filesz in self.loads]
        described = max((offset + filesz for _t, offset, _v, filesz, _m in self.segments), default=0)
        if described > size:
            raise InvalidCrashData(
                f"The coredump is truncated: it has {size} bytes, its headers describe {described}"
            )

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset >= self.size:
            return b""
        self.handle.seek(offset)
        return self.handle.read(max(0, min(length, self.size - offset)))

    def read_memory(self, address: int, length: int) -> bytes:
        """Bytes of the crashed process's memory, or b"" where the core has none."""
        where = bisect.bisect_right(self.load_starts, address) - 1
        if where < 0:
            return b""
        vaddr, offset, filesz = self.loads[where]
        if address >= vaddr + filesz:
            return b""
        return self.read(offset + address - vaddr, min(length, vaddr + filesz - address))

    def core_notes(self) -> Iterator[tuple[int, bytes, bytes]]:
        """Every note of the core, within the caps; InvalidCrashData past them."""
        note_segments = [(offset, filesz) for p_type, offset, _v, filesz, _m in self.segments if p_type == PT_NOTE]
        if len(note_segments) > _MAX_NOTE_SEGMENTS:
            raise InvalidCrashData(f"The coredump has {len(note_segments)} note segments; "
                                   f"a core written by Linux has one (at most {_MAX_NOTE_SEGMENTS} are read)")
        budget, count = _MAX_NOTES_BYTES, 0
        for offset, filesz in note_segments:
            if filesz > budget:
                raise InvalidCrashData(f"The coredump's notes are larger than {_MAX_NOTES_BYTES >> 20} MiB in all")
            budget -= filesz
            data = self.read(offset, filesz)
            if len(data) < filesz:
                raise InvalidCrashData("The coredump is truncated: its notes are cut off")
            for note in self.elf.notes(data):
                count += 1
                if count > _MAX_NOTES:
                    raise InvalidCrashData(f"The coredump has more than {_MAX_NOTES} notes")
                yield note

    def build_id_at(self, base: int) -> str | None:
        """The GNU build-id of the ELF image mapped at ``base``, if the core kept its headers.

        Remembered per address: a forged core may name one image under
        thousands of file names.
        """
        if base not in self._build_ids:
            self._build_ids[base] = image_build_id(
                lambda offset, length: self.read_memory(base + offset, length), mapped=True)
        return self._build_ids[base]

    def mapped_files(self, desc: bytes) -> dict[str, int]:
        """``{path: lowest start address mapped at file offset 0}`` from NT_FILE."""
        word, size = self.elf.word, self.elf.word_size
        if len(desc) < 2 * size:
            return {}
        count, _page_size = struct.unpack_from(self.elf.order + word * 2, desc, 0)
        if count > MAX_MAPPED_FILES:
            raise InvalidCrashData(f"The coredump lists {count} mapped files; at most {MAX_MAPPED_FILES} are read")
        table_end = 2 * size + 3 * size * count
        if table_end > len(desc):
            return {}
        ranges = [struct.unpack_from(self.elf.order + word * 3, desc, 2 * size + 3 * size * i) for i in range(count)]
        names = desc[table_end:].split(b"\0")
        bases: dict[str, int] = {}
        for (start, _end, page_offset), name in zip(ranges, names):
            path = name.decode("utf-8", errors="replace")
            if not is_normal_absolute(path):
                raise InvalidCrashData(
                    f"The coredump maps a file named '{shown(path)}', which is not a plain absolute path; "
                    "the Linux kernel never writes such a name"
                )
            if page_offset == 0 and (path not in bases or start < bases[path]):
                bases[path] = start
        return bases

    def siginfo(self, desc: bytes) -> tuple[int | None, int | None]:
        """``(signal, fault address)`` from an NT_SIGINFO note."""
        if len(desc) < 12:
            return None, None
        signo, _errno, _code = struct.unpack_from(self.elf.order + "iii", desc, 0)
        address_offset = 16 if self.elf.is_64 else 12
        if len(desc) < address_offset + self.elf.word_size:
            return signo, None
        (address,) = struct.unpack_from(self.elf.order + self.elf.word, desc, address_offset)
        return signo, address


def _architecture(machine: int, elf: _Elf) -> str:
    arch = _MACHINES.get(machine)
    if arch == "ppc64" and elf.order == "<":
        return "ppc64le"
    if arch is None:
        raise InvalidCrashData(f"The coredump is from an unsupported architecture (ELF machine {machine})")
    return arch


@dataclasses.dataclass(frozen=True)
class CoreMap:
    """What a core's headers and notes say, before any mapped file's build-id is read.

    They come first in a core, so a reader following an upload knows the
    mapped files from its first bytes; ``build_id_at(start)`` then reads a
    file's headers from the core's memory (further on, in address order).
    """

    arch: str
    bases: tuple[tuple[str, int], ...]  # (path, lowest start mapped at file offset 0), by address
    signal: int | None
    fault_address: int | None
    build_id_at: Callable[[int], str | None]


def core_map(handle: CoreSource, size: int) -> CoreMap:
    """The CoreMap of the ``size``-byte core ``handle`` reads; InvalidCrashData when it is not a usable core."""
    handle.seek(0)
    check_elf_core_header(handle.read(20))
    core = _CoreReader(handle, size)
    arch = _architecture(core.machine, core.elf)
    bases: dict[str, int] = {}
    signal: int | None = None
    fault_address: int | None = None
    threads = 0
    for note_type, name, desc in core.core_notes():
        if note_type == NT_FILE and name == b"CORE":
            bases = core.mapped_files(desc)
        elif note_type == NT_SIGINFO and name == b"CORE":
            signal, fault_address = core.siginfo(desc)
        elif note_type == NT_PRSTATUS and name == b"CORE":
            threads += 1
            if len(desc) != _PRSTATUS_BYTES.get(arch, len(desc)):
                raise InvalidCrashData(
                    f"The coredump's ELF header says it is an {arch} core, but its thread registers are not "
                    f"{arch}'s ({len(desc)} bytes, not {_PRSTATUS_BYTES[arch]}): it is damaged or altered")
    if not threads:
        raise InvalidCrashData("The coredump holds no thread registers (it is truncated, or was not written by "
                               "the Linux kernel)")
    if not bases:
        raise InvalidCrashData(
            "The coredump lists no mapped files (it is truncated, or was not written by the Linux kernel)"
        )
    return CoreMap(arch, tuple(sorted(bases.items(), key=lambda item: item[1])), signal, fault_address,
                   core.build_id_at)


def read_core(path: str | os.PathLike[str]) -> CoreInfo:
    """A CoreInfo for the core at ``path``; InvalidCrashData when it is not a usable core."""
    with open(path, "rb") as handle:
        mapped = core_map(handle, handle.seek(0, 2))
        modules = tuple(Module(path, start, mapped.build_id_at(start)) for path, start in mapped.bases)
        return CoreInfo(mapped.arch, modules, mapped.signal, mapped.fault_address)
