"""What we can tell about an uploaded coredump from its bytes alone."""

import struct

from retrace.errors import InvalidCrashData

ELF_MAGIC = b"\x7fELF"
ET_CORE = 4
_ELF_TYPES = {0: "NONE", 1: "REL (an object file)", 2: "EXEC (a program)", 3: "DYN (a program or library)", 4: "CORE"}


def check_elf_core(path, name="coredump"):
    """InvalidCrashData unless ``path`` starts with the ELF header of a core file."""
    with open(path, "rb") as handle:
        header = handle.read(20)
    if len(header) < 20 or not header.startswith(ELF_MAGIC):
        raise InvalidCrashData(f"The '{name}' file is not an ELF core file (it has no ELF header)")
    byte_order = {1: "<", 2: ">"}.get(header[5])
    if header[4] not in (1, 2) or byte_order is None:
        raise InvalidCrashData(f"The '{name}' file has a damaged ELF header")
    (elf_type,) = struct.unpack(byte_order + "H", header[16:18])
    if elf_type != ET_CORE:
        described = _ELF_TYPES.get(elf_type, str(elf_type))
        raise InvalidCrashData(f"The '{name}' file is an ELF file of type {described}, not a core file")
