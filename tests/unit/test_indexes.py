"""gdb indexes of debug files that ship without one: built once by a gdb of their own, read by every later gdb."""

import logging
import subprocess

import pytest

from retrace_server.analysis.indexes import GdbIndexes, debug_files
from retrace_server.elf import Module, file_build_id, needs_gdb_index
from retrace_server.packaging.cache import CachedPackage, cached_entry
from retrace_server.packaging.packages import build_id_debug_path

LOG = logging.getLogger("test")


@pytest.fixture(scope="module")
def debug_file(tmp_path_factory):
    """A program's separate debug file as dh_strip leaves it: DWARF, no index."""
    directory = tmp_path_factory.mktemp("build")
    (directory / "p.c").write_text("struct point { int x, y; };\nint area(struct point *p) { return p->x * p->y; }\n"
                                   "int main(void) { struct point p = {2, 3}; return area(&p); }\n")
    program = directory / "p"
    subprocess.run(["gcc", "-g", "-O0", "-Wl,--build-id", "-o", str(program), str(directory / "p.c")], check=True)
    debug = directory / "p.debug"
    subprocess.run(["objcopy", "--only-keep-debug", str(program), str(debug)], check=True)
    return debug


def package_with(tmp_path, debug_file):
    """A cached package holding ``debug_file`` at its build-id path."""
    build_id = file_build_id(debug_file)
    relative = f"usr/lib/debug/.build-id/{build_id[:2]}/{build_id[2:]}.debug"

    def unpack(tmp):
        (tmp / "root" / relative).parent.mkdir(parents=True)
        (tmp / "root" / relative).write_bytes(debug_file.read_bytes())
        return [(relative, "f", "", build_id), ("usr/share/doc/p/copyright", "f", "", "")]

    entry = cached_entry(tmp_path / "rpms" / "pkg", tmp_path / "rpms" / "pkg.lock", unpack)
    return CachedPackage(entry.path, True, 0, False), build_id


def test_a_debug_file_from_dh_strip_needs_an_index_and_one_with_it_does_not(debug_file, tmp_path):
    assert needs_gdb_index(debug_file)
    indexed = tmp_path / "indexed.debug"
    indexed.write_bytes(debug_file.read_bytes())
    subprocess.run(["gdb-add-index", str(indexed)], check=True, capture_output=True)
    assert not needs_gdb_index(indexed)


def test_the_debug_files_of_the_mapped_files_are_found_in_the_task_s_packages(debug_file, tmp_path):
    (tmp_path / "rpms").mkdir()
    package, build_id = package_with(tmp_path, debug_file)
    modules = [Module("/usr/bin/p", 0x1000, build_id), Module("/usr/lib/libother.so", 0x2000, "cd" * 20)]
    placed = tmp_path / "from-debuginfod"
    placements = [(build_id_debug_path("cd" * 20), placed)]  # as debuginfod.fill_gaps places a debug file
    assert debug_files(modules, [package], placements) == {
        build_id: package.root / f"usr/lib/debug/.build-id/{build_id[:2]}/{build_id[2:]}.debug", "cd" * 20: placed}


def test_an_index_is_built_once_in_the_sandbox_and_then_read_by_gdb(debug_file, tmp_path):
    indexes = GdbIndexes(tmp_path / "cache")
    files = {file_build_id(debug_file): debug_file}
    assert indexes.read_commands(files) == [], "nothing to read before the first build"
    assert indexes.build(files, LOG) == 1
    assert indexes.missing(files) == {} and indexes.build(files, LOG) == 0, "built once"
    commands = indexes.read_commands(files)
    assert commands == [f"set index-cache directory {indexes.root}", "set index-cache enabled on"]
    [(build_id, _last_use, size)] = indexes.entries()
    assert build_id == file_build_id(debug_file) and size > 0
    argv = ["gdb", "-batch", "-nx", "-iex", "set debug index-cache on", *(a for c in commands for a in ("-iex", c)),
            "-ex", "ptype struct point", str(debug_file)]
    said = subprocess.run(argv, capture_output=True, text=True, check=True)
    assert "int x;" in said.stdout and f"trying to read {indexes.root}/{build_id}.gdb-index" in said.stderr
    assert "couldn't read" not in said.stderr and "writing index cache" not in said.stderr, said.stderr


def test_a_file_that_needs_no_index_is_marked_and_not_offered_to_gdb(tmp_path):
    plain = tmp_path / "data.debug"
    plain.write_bytes(b"not an ELF file at all")
    indexes = GdbIndexes(tmp_path / "cache")
    assert indexes.build({"ab" * 20: plain}, LOG) == 0
    assert indexes.missing({"ab" * 20: plain}) == {}
    assert indexes.read_commands({"ab" * 20: plain}) == [], "no index exists to read"


def test_one_debug_file_without_its_index_keeps_gdb_from_the_index_cache(debug_file, tmp_path):
    indexes = GdbIndexes(tmp_path / "cache")
    indexes.build({file_build_id(debug_file): debug_file}, LOG)
    both = {file_build_id(debug_file): debug_file, "ef" * 20: debug_file}
    assert indexes.read_commands(both) == [], "gdb would spend time building the other one's index"


def test_an_evicted_index_is_built_again(debug_file, tmp_path):
    indexes = GdbIndexes(tmp_path / "cache")
    files = {file_build_id(debug_file): debug_file}
    indexes.build(files, LOG)
    assert indexes.evict(file_build_id(debug_file)) and indexes.missing(files) == files


def test_building_stops_when_told_to_and_leaves_the_rest_to_the_task(debug_file, tmp_path):
    """The prefetch builds indexes only while the core still uploads."""
    indexes = GdbIndexes(tmp_path / "cache")
    files = {file_build_id(debug_file): debug_file}
    assert indexes.build(files, LOG, go_on=lambda: False) == 0 and indexes.missing(files) == files
