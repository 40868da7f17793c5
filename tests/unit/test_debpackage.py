"""Debian packages read without dpkg: real ones built by dpkg-deb, hostile ones built by hand."""

import io
import os
import subprocess
import tarfile

import pytest

from retrace_server.environments.sysroot import assemble_sysroot
from retrace_server.packaging import formats
from retrace_server.packaging.cache import CachedPackage, cached_entry
from retrace_server.packaging.debpackage import extract_deb_file, extract_deb_files, unpack_deb
from retrace_server.packaging.payload import UnpackError
from testkit.debian import ar_archive

ELF_LIBRARY = "/lib/x86_64-linux-gnu/libz.so.1"


def dpkg_deb(tmp_path, compression="xz"):
    """A real package: a library (an ELF file with a build-id), a symlink, a hard link, a directory."""
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text("Package: demo\nVersion: 1.0-1\nArchitecture: amd64\n"
                                             "Maintainer: t <t@example.org>\nDescription: demo\n")
    lib = root / "usr" / "lib" / "x86_64-linux-gnu"
    lib.mkdir(parents=True)
    (lib / "libz.so.1.2.13").write_bytes(open(os.path.realpath(ELF_LIBRARY), "rb").read())
    os.symlink("libz.so.1.2.13", lib / "libz.so.1")
    (root / "usr" / "share" / "doc").mkdir(parents=True)
    (root / "usr" / "share" / "doc" / "a").write_text("same")
    os.link(root / "usr" / "share" / "doc" / "a", root / "usr" / "share" / "doc" / "b")
    deb = tmp_path / f"demo_1.0-1_amd64.{compression}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", str(root), str(deb)],
                   check=True, capture_output=True)
    return deb


def hand_made_deb(tmp_path, members):
    """An ar archive with a data.tar.gz of ``members`` (TarInfo, bytes or None), as a mirror could serve."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        for info, content in members:
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    deb = tmp_path / "hostile_1_amd64.deb"
    deb.write_bytes(ar_archive([("debian-binary", b"2.0\n"), ("data.tar.gz", data.getvalue())]))
    return deb


def entry(name, kind=tarfile.REGTYPE, content=b"x", linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644
    info.size = len(content) if kind == tarfile.REGTYPE else 0
    return info, content if kind == tarfile.REGTYPE else None


@pytest.mark.parametrize("compression", ["xz", "gzip", "zstd", "none"])
def test_a_real_package_unpacks_with_build_ids_links_and_hard_links(tmp_path, compression):
    entries = unpack_deb(dpkg_deb(tmp_path, compression), tmp_path / "root")
    by_path = {path: (kind, target, build_id) for path, kind, target, build_id in entries}
    kind, _, build_id = by_path["usr/lib/x86_64-linux-gnu/libz.so.1.2.13"]
    assert kind == "f" and len(build_id) == 40
    assert by_path["usr/lib/x86_64-linux-gnu/libz.so.1"] == ("l", "libz.so.1.2.13", "")
    assert (tmp_path / "root" / "usr/share/doc/b").read_text() == "same"
    assert os.stat(tmp_path / "root" / "usr/share/doc/b").st_ino == os.stat(tmp_path / "root" / "usr/share/doc/a").st_ino


def test_one_file_is_taken_out_without_unpacking_the_rest(tmp_path):
    deb = dpkg_deb(tmp_path)
    assert extract_deb_file(deb, "usr/share/doc/a", tmp_path / "a") and (tmp_path / "a").read_text() == "same"
    assert not extract_deb_file(deb, "usr/share/doc/missing", tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    extract_deb_files(deb, "usr/share", {"b"}, tmp_path / "flat")
    assert [path.name for path in (tmp_path / "flat").iterdir()] == ["b"]


def test_the_format_is_told_by_the_file_name(tmp_path):
    assert formats.of_file("x_1_amd64.deb") is formats.DEB and formats.of_file("x-1-1.fc41.x86_64.rpm") is formats.RPM
    assert formats.of_file("x-dbgsym_1_amd64.ddeb") is formats.DEB
    with pytest.raises(UnpackError, match="is not a package this server can read"):
        formats.of_file("x.tar.gz")


@pytest.mark.parametrize("members, refusal", [
    ([entry("/etc/cron.d/evil")], "absolute file name '/etc/cron.d/evil'"),
    ([entry("./usr/../../etc/evil")], "unsafe file name"),
    ([entry("./usr/lib/dir", tarfile.SYMTYPE, linkname="/etc"), entry("./usr/lib/dir/evil")], "below its own symlink"),
    ([entry("./usr/lib/link", tarfile.LNKTYPE, linkname="/etc/shadow")], "hard-links"),
])
def test_hostile_names_are_refused_and_nothing_lands_outside(tmp_path, members, refusal):
    with pytest.raises(UnpackError, match=refusal):
        unpack_deb(hand_made_deb(tmp_path, members), tmp_path / "root")
    assert not (tmp_path / "etc").exists()


def test_device_files_and_fifos_are_not_created(tmp_path):
    members = [entry("./dev/sda", tarfile.BLKTYPE), entry("./run/fifo", tarfile.FIFOTYPE), entry("./usr/x")]
    entries = unpack_deb(hand_made_deb(tmp_path, members), tmp_path / "root")
    assert [path for path, *_ in entries] == ["usr/x"]
    assert not (tmp_path / "root" / "dev" / "sda").exists()


def test_an_escaping_symlink_is_kept_but_resolves_inside_the_task_root(tmp_path):
    members = [entry("./usr/lib/libevil.so.1", tarfile.SYMTYPE, linkname="../../../../../../etc/passwd")]
    entry_dir = tmp_path / "cache" / "pkg"
    entry_dir.parent.mkdir()
    cached = cached_entry(entry_dir, tmp_path / "cache" / "pkg.lock",
                          lambda tmp: unpack_deb(hand_made_deb(tmp_path, members), tmp / "root"))
    assemble_sysroot(tmp_path / "sysroot", [CachedPackage(cached.path, True, 0, False)])
    link = tmp_path / "sysroot" / "usr" / "lib" / "libevil.so.1"
    assert str(link.resolve()).startswith(str(tmp_path / "sysroot"))


@pytest.mark.parametrize("data", [b"", b"!<arch>\n", b"not an ar archive at all", b"!<arch>\n" + b"x" * 60])
def test_what_is_not_a_package_is_refused_with_a_sentence(tmp_path, data):
    deb = tmp_path / "broken_1_amd64.deb"
    deb.write_bytes(data)
    with pytest.raises(UnpackError, match="is not a Debian package|holds no data.tar member"):
        unpack_deb(deb, tmp_path / "root")


def test_a_hard_link_that_leads_back_to_itself_ends_with_a_sentence_not_a_recursion(tmp_path):
    members = [entry("./boot/vmlinux", tarfile.LNKTYPE, linkname="./boot/other"),
               entry("./boot/other", tarfile.LNKTYPE, linkname="./boot/vmlinux")]
    with pytest.raises(UnpackError, match="hard-links 'boot/vmlinux' back to itself"):
        extract_deb_file(hand_made_deb(tmp_path, members), "boot/vmlinux", tmp_path / "vmlinux")
    chain = [entry(f"./l{number}", tarfile.LNKTYPE, linkname=f"./l{number + 1}") for number in range(12)]
    with pytest.raises(UnpackError, match="through more than 8 links"):
        extract_deb_file(hand_made_deb(tmp_path, chain), "l0", tmp_path / "l0")


def test_a_data_tarball_declaring_a_4_gib_xz_dictionary_is_refused_before_it_is_decoded(tmp_path):
    from tests.integration.test_decoder_memory import xz_declaring

    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info, content = entry("./usr/x")
        tar.addfile(info, io.BytesIO(content))
    deb = tmp_path / "windy_1_amd64.deb"
    deb.write_bytes(ar_archive([("debian-binary", b"2.0\n"), ("data.tar.xz", xz_declaring(data.getvalue()))]))
    with pytest.raises(UnpackError, match="declares a 4 GiB window; this server decodes with at most 256 MiB"):
        unpack_deb(deb, tmp_path / "root")
    assert unpack_deb(deb, tmp_path / "roomy", memlimit=8 << 30)[0][0] == "usr/x"


def test_links_two_packages_lay_on_each_other_s_paths_resolve_inside_the_root(tmp_path):
    """``usr/share/a -> .`` from one package makes the other's ``usr/share/a/a/a/L`` land in ``usr/share``:
    its target is clamped from there, not from five levels down."""
    cache = tmp_path / "cache"
    cache.mkdir()
    packages = []
    for name, members in (("one", [entry("./usr/share/a", tarfile.SYMTYPE, linkname=".")]),
                          ("two", [entry("./usr/share/a/a/a/L", tarfile.SYMTYPE, linkname="/etc/hostname"),
                                   entry("./usr/share/a/a/a/M", tarfile.SYMTYPE, linkname="../../../../../../etc")])):
        (tmp_path / name).mkdir()
        deb = hand_made_deb(tmp_path / name, members)
        cached = cached_entry(cache / name, cache / f"{name}.lock", lambda tmp, deb=deb: unpack_deb(deb, tmp / "root"))
        packages.append(CachedPackage(cached.path, True, 0, False))
    assemble_sysroot(tmp_path / "sysroot", packages)
    root = str((tmp_path / "sysroot").resolve())
    for name in ("L", "M"):
        link = tmp_path / "sysroot" / "usr" / "share" / name
        assert link.is_symlink() and os.path.realpath(link).startswith(root + "/"), os.path.realpath(link)
