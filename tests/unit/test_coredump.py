import pytest

from retrace.coredump import Module, check_elf_core, file_build_id, read_core
from retrace.errors import InvalidCrashData
from tests.fixtures.synthetic_core import BUILD_ID, IMAGE_BASE, elf_image, synthetic_core


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


# --- read_core on synthetic cores ----------------------------------------------

@pytest.fixture
def core_file(tmp_path):
    def write(**options):
        path = tmp_path / "coredump"
        path.write_bytes(synthetic_core(**options))
        return path

    return write


def test_read_core_lists_mapped_files_with_their_build_ids(core_file):
    info = read_core(core_file())
    assert info.arch == "x86_64"
    assert info.modules == (Module("/usr/bin/crasher", IMAGE_BASE, BUILD_ID.hex()),)


def test_read_core_gives_signal_and_fault_address(core_file):
    info = read_core(core_file(signal=11, fault_address=0x10))
    assert (info.signal, info.fault_address) == (11, 0x10)


def test_module_whose_headers_are_not_in_the_core_has_no_build_id(core_file):
    info = read_core(core_file(paths=("/usr/bin/crasher", "/usr/lib64/libcrash.so.1")))
    assert info.module_at("/usr/lib64/libcrash.so.1").build_id is None


def test_truncated_core_is_refused_with_its_sizes(core_file):
    with pytest.raises(InvalidCrashData, match="The coredump is truncated: it has \\d+ bytes, its headers describe"):
        read_core(core_file(truncate=100))


def test_core_of_unknown_machine_is_refused(core_file):
    with pytest.raises(InvalidCrashData, match="unsupported architecture"):
        read_core(core_file(machine=9999))


def test_core_without_file_notes_is_refused(core_file):
    with pytest.raises(InvalidCrashData, match="lists no mapped files"):
        read_core(core_file(paths=()))


def test_file_build_id_reads_an_elf_file_and_ignores_other_files(tmp_path):
    program = tmp_path / "program"
    program.write_bytes(elf_image())
    text = tmp_path / "text"
    text.write_text("not elf")
    assert file_build_id(program) == BUILD_ID.hex()
    assert file_build_id(text) is None
