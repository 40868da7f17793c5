import subprocess

import pytest

from retrace_server.elf import Module, check_elf_core_header, debug_alt_link, file_build_id, read_core
from retrace_server.errors import InvalidCrashData
from testkit.synthetic_core import BUILD_ID, IMAGE_BASE, elf_image, synthetic_core


def elf(tmp_path, elf_type, byte_order=1):
    order = "little" if byte_order == 1 else "big"
    header = b"\x7fELF\x02" + bytes([byte_order]) + b"\x01" + bytes(9) + elf_type.to_bytes(2, order) + bytes(46)
    path = tmp_path / "coredump"
    path.write_bytes(header)
    return path


def test_core_file_of_either_byte_order_passes(tmp_path):
    check_elf_core_header(elf(tmp_path, 4).read_bytes())
    check_elf_core_header(elf(tmp_path, 4, byte_order=2).read_bytes())


def test_executable_is_not_a_core(tmp_path):
    with pytest.raises(InvalidCrashData, match="type DYN"):
        check_elf_core_header(elf(tmp_path, 3).read_bytes())


def test_text_is_not_a_core(tmp_path):
    path = tmp_path / "coredump"
    path.write_text("hello world, this is not ELF")
    with pytest.raises(InvalidCrashData, match="no ELF header"):
        check_elf_core_header(path.read_bytes())


def test_empty_file_is_not_a_core(tmp_path):
    path = tmp_path / "coredump"
    path.write_bytes(b"")
    with pytest.raises(InvalidCrashData):
        check_elf_core_header(path.read_bytes())


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


def test_every_architecture_the_distributions_ship_is_known_by_its_machine_number(core_file):
    machines = {62: "x86_64", 3: "i386", 183: "aarch64", 40: "armhfp", 22: "s390x", 243: "riscv64"}
    assert {machine: read_core(core_file(machine=machine)).arch for machine in machines} == machines


def test_a_header_naming_another_architecture_than_the_registers_is_refused(core_file):
    with pytest.raises(InvalidCrashData, match="says it is an aarch64 core, but its thread registers are not "
                                               "aarch64's \\(336 bytes, not 392\\)"):
        read_core(core_file(machine=183, prstatus_bytes=336))


def test_a_core_without_thread_registers_is_refused(core_file):
    with pytest.raises(InvalidCrashData, match="holds no thread registers"):
        read_core(core_file(prstatus_bytes=0))


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


@pytest.mark.parametrize("path", ["/../../tmp/x", "/usr/lib/../../../etc/x", "usr/lib/libc.so.6", "/usr//lib/x",
                                  "/usr/./lib/x", "/" + "a" * 4096])
def test_core_naming_a_mapped_file_that_is_not_a_plain_absolute_path_is_refused(core_file, path):
    with pytest.raises(InvalidCrashData, match="which is not a plain absolute path; the Linux kernel never writes"):
        read_core(core_file(paths=("/usr/bin/crasher", path)))


def test_mapped_file_marked_deleted_by_the_kernel_is_read(core_file):
    info = read_core(core_file(paths=("/usr/bin/crasher", "/usr/lib64/libold.so (deleted)")))
    assert info.module_at("/usr/lib64/libold.so (deleted)") is not None


def test_core_repeating_its_note_header_is_refused_before_reading_them(core_file):
    with pytest.raises(InvalidCrashData, match="has 17 note segments; a core written by Linux has one"):
        read_core(core_file(note_segments=17))


def test_a_few_repeated_note_headers_are_still_read(core_file):
    assert read_core(core_file(note_segments=2)).modules[0].path == "/usr/bin/crasher"


def test_core_claiming_more_mapped_files_than_the_cap_is_refused(core_file):
    with pytest.raises(InvalidCrashData, match="lists 10000000 mapped files; at most 65536 are read"):
        read_core(core_file(declared_files=10_000_000))


def test_a_core_naming_one_image_under_twenty_thousand_names_is_read(tmp_path):
    """Each name's build-id is looked up by address once, however many names share the image."""
    paths = [f"/usr/lib/lib{index}.so" for index in range(20000)]
    path = tmp_path / "coredump"
    path.write_bytes(synthetic_core(paths=paths))
    info = read_core(path)
    assert len(info.modules) == 20000 and info.modules[0].build_id == BUILD_ID.hex()


def test_routing_reads_only_the_architecture_from_the_elf_header(core_file):
    from retrace_server.elf import core_arch
    assert core_arch(core_file(note_segments=17, machine=183)) == "aarch64"


def test_the_dwz_file_a_debuginfo_file_shares_is_named_by_its_altlink(tmp_path):
    """dwz writes ``.gnu_debugaltlink``: the common file's name, a NUL, its build-id."""
    source = tmp_path / "demo.c"
    source.write_text('__attribute__((section(".gnu_debugaltlink"), used)) static const char link[] = '
                      '"/usr/lib/debug/.dwz/x86_64-linux-gnu/demo.debug\\0" '
                      + '"' + "\\xfd" * 20 + '";\n')
    debuginfo = tmp_path / "demo.debug"
    subprocess.run(["gcc", "-c", "-o", str(debuginfo), str(source)], check=True)
    assert debug_alt_link(debuginfo) == ("/usr/lib/debug/.dwz/x86_64-linux-gnu/demo.debug", "fd" * 20 + "00")
    assert debug_alt_link(source) is None and debug_alt_link(tmp_path / "missing") is None
