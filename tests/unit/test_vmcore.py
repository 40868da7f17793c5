"""Reading the kernel's identity out of dumps in each format, built byte by byte as the tools write them."""

import struct

import pytest

from retrace_server.analysis.vmcore import DumpFormat, dump_format, read_vmcoreinfo, search_text
from retrace_server.errors import InvalidCrashData

BUILD_ID = "3b43fad5034874490492495d552c0af6a5fab235"
VMCOREINFO = f"OSRELEASE=6.1.0-56-cloud-amd64\nBUILD-ID={BUILD_ID}\nPAGESIZE=4096\n".encode()


def kdump_image(vmcoreinfo=VMCOREINFO, uts_release=b""):
    """disk_dump_header (block 0), kdump_sub_header (block 1), VMCOREINFO (block 2)."""
    block = 4096
    header = bytearray(block)
    struct.pack_into("<8si", header, 0, b"KDUMP   ", 6)
    header[12 + 130:12 + 130 + len(uts_release)] = uts_release
    struct.pack_into("<i", header, 428, block)
    sub = bytearray(block)
    struct.pack_into("<qQ", sub, 32, 2 * block, len(vmcoreinfo))
    return bytes(header + sub) + vmcoreinfo


def flattened(image, pieces):
    """makedumpfile -F: a 4 KiB header, then big-endian (offset, size) records in the given order."""
    out = bytearray(b"makedumpfile\0".ljust(4096, b"\0"))
    for start, end in pieces:
        out += struct.pack(">qq", start, end - start) + image[start:end]
    return bytes(out + struct.pack(">qq", -1, -1))


def elf_core(notes, phoff=64):
    """A 64-bit ELF core with one PT_NOTE segment; ``phoff`` 192 is where QEMU puts the headers."""
    note = struct.pack("<III", 11, len(notes), 0) + b"VMCOREINFO\0\0" + notes + b"\0" * (-len(notes) % 4)
    header = bytearray(64)
    header[:16] = b"\x7fELF\x02\x01\x01".ljust(16, b"\0")
    struct.pack_into("<HHIQQQIHHHHHH", header, 16, 4, 62, 1, 0, phoff, 0, 0, 64, 56, 1, 0, 0, 0)
    data_at = phoff + 56
    phdr = struct.pack("<IIQQQQQQ", 4, 0, data_at, 0, 0, len(note), 0, 4)
    return bytes(header).ljust(phoff, b"\0") + phdr + note


def write(tmp_path, data):
    path = tmp_path / "vmcore"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make, fmt", [
    (lambda: kdump_image(), DumpFormat.KDUMP),
    (lambda: flattened(kdump_image(), [(4096, len(kdump_image())), (0, 4096)]), DumpFormat.FLATTENED),
    (lambda: elf_core(VMCOREINFO), DumpFormat.ELF),
    (lambda: elf_core(VMCOREINFO, phoff=192), DumpFormat.ELF),
], ids=["kdump", "flattened-out-of-order", "elf", "elf-qemu-layout"])
def test_vmcoreinfo_names_release_and_build_id_in_every_format(tmp_path, make, fmt):
    path = write(tmp_path, make())
    assert dump_format(path) is fmt
    kernel = read_vmcoreinfo(path)
    assert (kernel.release, kernel.build_id, kernel.source) == ("6.1.0-56-cloud-amd64", BUILD_ID, "VMCOREINFO")


def test_kdump_header_without_vmcoreinfo_still_names_the_release(tmp_path):
    path = write(tmp_path, kdump_image(b"", uts_release=b"5.14.0-70.el9.x86_64"))
    kernel = read_vmcoreinfo(path)
    assert (kernel.release, kernel.build_id, kernel.source) == ("5.14.0-70.el9.x86_64", None, "kdump header")


def test_dump_without_vmcoreinfo_reads_as_unknown(tmp_path):
    assert read_vmcoreinfo(write(tmp_path, elf_core(b"NOTHING=here\n"))) is None


def test_text_search_finds_the_vmcoreinfo_page_in_guest_memory(tmp_path):
    memory = b"\0" * (9 << 20) + b"junk OSRELEASE=6.1.0-56-cloud-amd64\nPAGESIZE=4096\nBUILD-ID=" + BUILD_ID.encode() + b"\n"
    kernel = search_text(write(tmp_path, elf_core(b"") + memory))
    assert (kernel.release, kernel.build_id, kernel.source) == ("6.1.0-56-cloud-amd64", BUILD_ID, "text search")


def test_text_search_falls_back_to_the_boot_banner(tmp_path):
    memory = b"Linux version 6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org) (gcc-12)"
    kernel = search_text(write(tmp_path, elf_core(b"") + memory))
    assert (kernel.release, kernel.build_id) == ("6.1.0-56-cloud-amd64", None)


def test_release_with_shell_or_path_characters_is_not_believed(tmp_path):
    path = write(tmp_path, kdump_image(b"OSRELEASE=6.1/../../etc;rm\nBUILD-ID=zz\n"))
    assert read_vmcoreinfo(path) is None


@pytest.mark.parametrize("data, message", [
    (b"hello, not a dump at all", "not a kernel dump"),
    (b"\x7fELF\x02\x01\x01".ljust(16, b"\0") + struct.pack("<HH", 2, 62) + bytes(44), "not a core dump"),
], ids=["text", "elf-executable"])
def test_anything_else_is_refused_with_the_formats_accepted(tmp_path, data, message):
    with pytest.raises(InvalidCrashData, match=message):
        dump_format(write(tmp_path, data))
