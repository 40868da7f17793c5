import json
import os

import pytest

from retrace_server.environments.sysroot import assemble_sysroot, merged_usr_path
from retrace_server.packaging.cache import CachedPackage, PackageCache
from retrace_server.packaging.payload import UnpackError, refuse_below_symlink, safe_relative


@pytest.mark.parametrize("name", ["../etc/passwd", "/usr/../../etc/shadow", "./", "/usr//lib", "/usr/lib/."])
def test_payload_names_that_could_escape_are_refused(name):
    with pytest.raises(UnpackError, match="unsafe file name"):
        safe_relative(name)


def test_payload_names_become_relative_paths():
    assert safe_relative("/usr/lib64/libcrash.so.1") == "usr/lib64/libcrash.so.1"
    assert safe_relative("./usr/bin/crasher") == "usr/bin/crasher"


def test_entry_below_the_packages_own_symlink_is_refused():
    with pytest.raises(UnpackError, match="below its own symlink"):
        refuse_below_symlink("usr/lib/evil/file", {"usr/lib/evil"}, "evil.rpm")


def test_cache_refuses_a_checksum_that_is_not_a_plain_name(tmp_path):
    with pytest.raises(UnpackError, match="invalid package checksum"):
        PackageCache(tmp_path).entry_path("../../x")


def cached(tmp_path, name, entries, contents=()):
    """A CachedPackage as the cache leaves it: root/ files and manifest.json."""
    path = tmp_path / name
    (path / "root").mkdir(parents=True)
    for relative, kind, target, _ in entries:
        destination = path / "root" / relative
        if kind == "d":
            destination.mkdir(parents=True, exist_ok=True)
        elif kind == "f":
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_text(dict(contents).get(relative, name))
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, destination)
    (path / "manifest.json").write_text(json.dumps(entries))
    return CachedPackage(path, True, 0.0, False)


def test_manifest_gives_the_build_id_of_a_packaged_file(tmp_path):
    package = cached(tmp_path, "lib", [["usr/lib64/libx.so.1", "f", "", "abc123"]])
    assert package.build_id_of(["/lib64/libx.so.1", "/usr/lib64/libx.so.1"]) == "abc123"
    assert package.build_id_of(["/usr/lib64/other.so"]) is None


def test_sysroot_links_files_to_the_cache_and_merges_directories(tmp_path):
    program = cached(tmp_path, "program", [["usr/bin", "d", "", ""], ["usr/bin/crasher", "f", "", "aa"]])
    library = cached(tmp_path, "library", [["usr/lib64/libcrash.so.1", "f", "", "bb"], ["usr/bin/helper", "f", "", ""]])
    root = tmp_path / "sysroot"
    linked, _ = assemble_sysroot(root, [program, library])
    assert linked == 3
    assert os.readlink(root / "usr/bin/crasher") == str(program.root / "usr/bin/crasher")
    assert (root / "usr/bin/helper").read_text() == "library"
    assert (root / "usr/lib64/libcrash.so.1").read_text() == "library"


def test_first_package_wins_a_file_both_hold(tmp_path):
    first = cached(tmp_path, "first", [["usr/lib64/libz.so.1", "f", "", ""]])
    second = cached(tmp_path, "second", [["usr/lib64/libz.so.1", "f", "", ""]])
    assemble_sysroot(tmp_path / "sysroot", [first, second])
    assert (tmp_path / "sysroot/usr/lib64/libz.so.1").read_text() == "first"


def test_absolute_package_symlinks_resolve_inside_the_sysroot(tmp_path):
    package = cached(tmp_path, "p", [
        ["usr/lib64/libz.so.1.3", "f", "", ""],
        ["usr/lib64/libz.so.1", "l", "/usr/lib64/libz.so.1.3", ""],
    ])
    root = tmp_path / "sysroot"
    assemble_sysroot(root, [package])
    assert os.readlink(root / "usr/lib64/libz.so.1") == "libz.so.1.3"
    assert (root / "usr/lib64/libz.so.1").read_text() == "p"


def test_loader_is_linked_at_the_name_the_program_asks_for(tmp_path):
    from retrace_server.elf import Module, program_interpreter
    from retrace_server.environments.sysroot import link_program_interpreter

    root = tmp_path / "root"
    mapped = root / "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    mapped.parent.mkdir(parents=True)
    mapped.write_text("loader")
    module = Module("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", 0, "ab")
    assert program_interpreter("/usr/bin/gdb").endswith("/ld-linux-x86-64.so.2")
    assert link_program_interpreter(root, "/lib64/ld-linux-x86-64.so.2", [module])
    assert (root / "lib64/ld-linux-x86-64.so.2").read_text() == "loader"
    assert not link_program_interpreter(root, "/lib64/ld-linux-x86-64.so.2", [module]), "already there"


@pytest.mark.parametrize("packaged, kind, placed", [
    ("lib/x86_64-linux-gnu/libc.so.6", "f", "usr/lib/x86_64-linux-gnu/libc.so.6"),
    ("lib64/ld-linux-x86-64.so.2", "l", "usr/lib64/ld-linux-x86-64.so.2"),
    ("lib", "d", "usr/lib"),
    ("lib64", "l", "lib64"),
    ("usr/lib/x86_64-linux-gnu/libbfd.so", "f", "usr/lib/x86_64-linux-gnu/libbfd.so"),
    ("library/file", "f", "library/file"),
])
def test_a_sysroot_is_merged_usr_whatever_the_package_ships(packaged, kind, placed):
    """Debian's libc6 still ships /lib/x86_64-linux-gnu; a core may name either path."""
    assert merged_usr_path(packaged, kind) == placed


def test_a_release_that_did_not_merge_usr_keeps_bin_and_usr_bin_apart(tmp_path):
    """RHEL 6 ships /bin/sh and may ship another file at /usr/bin/sh: two files there, one on a merged release."""
    from retrace_server.packaging.packages import usr_merge_variants
    from retrace_server.packaging.release import merges_usr

    old = cached(tmp_path, "old", [["bin/tool", "f", "", ""], ["lib64/libold.so.1", "f", "", ""]])
    other = cached(tmp_path, "other", [["usr/bin/tool", "f", "", ""]])
    assemble_sysroot(tmp_path / "unmerged", [old, other], merged=False)
    assert (tmp_path / "unmerged/bin/tool").read_text() == "old"
    assert not (tmp_path / "unmerged/bin").samefile(tmp_path / "unmerged/usr/bin")
    assert (tmp_path / "unmerged/usr/bin/tool").read_text() == "other"
    assemble_sysroot(tmp_path / "merged", [old, other])
    assert (tmp_path / "merged/usr/bin/tool").read_text() == "old", "one file: the first package's"
    assert [merges_usr(release) for release in ("rhel-6-x86_64", "debian-11-x86_64", "debian-12-x86_64",
                                                "fedora-41-x86_64", "centos-7-x86_64", "ubuntu-22.04-x86_64",
                                                "fedora-rawhide-x86_64", "arch-rolling-x86_64")] == [
        False, False, True, True, True, True, True, True]
    assert usr_merge_variants("/bin/tool", merged=False) == ["/bin/tool"]
    assert usr_merge_variants("/bin/tool") == ["/bin/tool", "/usr/bin/tool"]


def cache_listing(package):
    return sorted(str(path.relative_to(package.root)) for path in package.root.rglob("*"))


def test_a_directory_one_package_brings_whole_is_one_link_to_it(tmp_path):
    """libc6-dbg's debug files: a link per build-id directory, not one per file and a directory each."""
    program = cached(tmp_path, "program", [["usr/bin/crasher", "f", "", ""],
                                           ["usr/lib/debug/.build-id/aa/1.debug", "f", "", ""]])
    debug = cached(tmp_path, "debug", [["usr/lib/debug/.build-id/bb/2.debug", "f", "", ""],
                                       ["usr/lib/debug/.build-id/bb/3.debug", "f", "", ""],
                                       ["usr/lib/debug/.build-id/cc/4.debug", "f", "", ""],
                                       ["usr/share/doc/libc6-dbg", "d", "", ""]])
    root = tmp_path / "sysroot"
    linked, _ = assemble_sysroot(root, [program, debug])
    build_ids = root / "usr/lib/debug/.build-id"
    assert not build_ids.is_symlink(), "both packages have files there"
    assert os.readlink(build_ids / "bb") == str(debug.root / "usr/lib/debug/.build-id/bb")
    assert os.readlink(root / "usr/share") == str(debug.root / "usr/share")
    assert os.readlink(root / "usr/bin") == str(program.root / "usr/bin")
    assert linked == 5, "usr/bin, aa, bb, cc and usr/share"
    assert [(build_ids / name).read_text() for name in ("aa/1.debug", "bb/2.debug", "bb/3.debug", "cc/4.debug")] == [
        "program", "debug", "debug", "debug"]


def test_a_directory_with_a_package_link_in_it_or_above_it_is_not_folded(tmp_path):
    """A package's links are recreated clamped to the tree, never read from the cache."""
    package = cached(tmp_path, "p", [["usr/lib64/libz.so.1.3", "f", "", ""],
                                     ["usr/lib64/libz.so.1", "l", "/usr/lib64/libz.so.1.3", ""],
                                     ["usr/share/x", "l", ".", ""], ["usr/share/x/x/y/file", "f", "", ""]])
    root = tmp_path / "sysroot"
    assemble_sysroot(root, [package])
    assert not (root / "usr/lib64").is_symlink() and os.readlink(root / "usr/lib64/libz.so.1") == "libz.so.1.3"
    assert not (root / "usr").is_symlink() and not (root / "usr/share/x/y").is_symlink()


def test_lib_and_usr_lib_of_one_package_still_merge(tmp_path):
    package = cached(tmp_path, "libc6", [["lib/x86_64-linux-gnu/libc.so.6", "f", "", ""],
                                         ["usr/lib/x86_64-linux-gnu/gconv/UTF-16.so", "f", "", ""]])
    root = tmp_path / "sysroot"
    assemble_sysroot(root, [package])
    multiarch = root / "usr/lib/x86_64-linux-gnu"
    assert not multiarch.is_symlink() and sorted(os.listdir(multiarch)) == ["gconv", "libc.so.6"]
    assert os.readlink(multiarch / "gconv") == str(package.root / "usr/lib/x86_64-linux-gnu/gconv")


def test_a_file_placed_in_a_folded_directory_unfolds_it_and_never_enters_the_package_cache(tmp_path):
    from retrace_server.environments.sysroot import place_files

    package = cached(tmp_path, "p", [["usr/bin/crasher", "f", "", ""], ["usr/lib/debug/.build-id/aa/1.debug", "f", "", ""]])
    before = cache_listing(package)
    root = tmp_path / "sysroot"
    assemble_sysroot(root, [package])
    assert (root / "usr").is_symlink()
    (tmp_path / "found").write_text("debuginfod's")
    assert place_files(root, [("/usr/lib/debug/.build-id/bb/2.debug", tmp_path / "found")]) == 1
    assert cache_listing(package) == before
    assert (root / "usr/lib/debug/.build-id/bb/2.debug").read_text() == "debuginfod's"
    assert (root / "usr/lib/debug/.build-id/aa/1.debug").read_text() == "p"
    assert (root / "usr/bin").is_symlink() and (root / "usr/bin/crasher").read_text() == "p"


def test_a_file_placed_through_a_package_link_unfolds_where_the_link_leads(tmp_path):
    from retrace_server.environments.sysroot import place_files

    links = cached(tmp_path, "links", [["lib64", "l", "usr/lib64", ""], ["up", "l", "../..", ""]])
    loader = cached(tmp_path, "loader", [["usr/lib64/libother.so", "f", "", ""]])
    before = cache_listing(loader)
    root = tmp_path / "sysroot"
    assemble_sysroot(root, [links, loader])
    assert (root / "usr").is_symlink()
    (tmp_path / "ld.so").write_text("the loader")
    assert place_files(root, [("/lib64/ld-linux-x86-64.so.2", tmp_path / "ld.so")]) == 1
    assert cache_listing(loader) == before
    assert (root / "usr/lib64/ld-linux-x86-64.so.2").read_text() == "the loader"
    assert (root / "usr/lib64/libother.so").read_text() == "loader"
    assert place_files(root, [("/up/escaped", tmp_path / "ld.so")]) == 1
    assert (root / "escaped").exists() and not (tmp_path / "escaped").exists(), "../.. was clamped to the tree"
