import pytest

from retrace.coredump import check_elf_core
from retrace.errors import InvalidCrashData


def elf(tmp_path, elf_type, byte_order=1):
    order = "little" if byte_order == 1 else "big"
    header = b"\x7fELF\x02" + bytes([byte_order]) + b"\x01" + bytes(9) + elf_type.to_bytes(2, order) + bytes(46)
    path = tmp_path / "coredump"
    path.write_bytes(header)
    return path


def test_core_file_of_either_byte_order_passes(tmp_path):
    check_elf_core(elf(tmp_path, 4))
    check_elf_core(elf(tmp_path, 4, byte_order=2))


def test_executable_is_not_a_core(tmp_path):
    with pytest.raises(InvalidCrashData, match="type DYN"):
        check_elf_core(elf(tmp_path, 3))


def test_text_is_not_a_core(tmp_path):
    path = tmp_path / "coredump"
    path.write_text("hello world, this is not ELF")
    with pytest.raises(InvalidCrashData, match="no ELF header"):
        check_elf_core(path)


def test_empty_file_is_not_a_core(tmp_path):
    path = tmp_path / "coredump"
    path.write_bytes(b"")
    with pytest.raises(InvalidCrashData):
        check_elf_core(path)


def test_real_process_core_passes(tmp_path):
    from tests.fixtures.cores import compile_crasher, crash

    check_elf_core(crash(compile_crasher(tmp_path), tmp_path))
