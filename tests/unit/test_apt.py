"""apt indexes read into the release index: Packages stanzas, Build-Ids, Contents, hostile input."""

import io
import lzma

import pytest

from retrace_server.elf import Module
from retrace_server.packaging import apt
from retrace_server.packaging.packages import resolve_modules
from retrace_server.packaging.release import supported_releases
from retrace_server.packaging.repoindex import RepoIndex, RepositoryError
from testkit.debian import flat_apt_index

LIBC_ID = "0032733b6513f9afeb0e3f78e638ea24dc374a4d"
PACKAGES = f"""Package: libc6
Source: glibc
Version: 2.36-9+deb12u14
Architecture: amd64
Filename: pool/main/g/glibc/libc6_2.36-9+deb12u14_amd64.deb
Size: 2757936
SHA256: {"a" * 64}
Description: GNU C Library: Shared libraries
 Contains the standard libraries that are used by nearly all programs on
 the system.

Package: libc6-dbg
Source: glibc
Version: 2.36-9+deb12u14
Architecture: amd64
Build-Ids: {LIBC_ID} 00338ac605150077b2e6646f4a9adcb4881405b1
Filename: pool/main/g/glibc/libc6-dbg_2.36-9+deb12u14_amd64.deb
Size: 7389180
SHA256: {"b" * 64}

Package: zlib1g
Source: zlib (1:1.2.13.dfsg-1)
Version: 1:1.2.13.dfsg-1
Architecture: amd64
Filename: pool/main/z/zlib/zlib1g_1.2.13.dfsg-1_amd64.deb
Size: 1
SHA256: {"c" * 64}

Package: libc6
Version: 2.36-9+deb12u14
Architecture: arm64
Filename: pool/main/g/glibc/libc6_2.36-9+deb12u14_arm64.deb
SHA256: {"d" * 64}

Package: no-checksum
Version: 1
Architecture: amd64
Filename: pool/x.deb
"""
CONTENTS = """usr/lib/x86_64-linux-gnu/libc.so.6                      libs/libc6
usr/lib/x86_64-linux-gnu/libz.so.1.2.13                 libs/zlib1g
usr/share/doc/libc6/copyright                           doc/libc6
usr/lib/debug/.build-id/ab/cdef0123456789.debug         debug/libc6-dbg
usr/share/doc/with space/file                           doc/zlib1g,libs/libc6
"""


@pytest.fixture
def release(tmp_path):
    return flat_apt_index(tmp_path / "repos" / "debian-12-x86_64", PACKAGES, CONTENTS)


@pytest.fixture
def index(release, tmp_path):
    index = RepoIndex.open(release, tmp_path / "cache")
    yield index
    index.close()


def test_an_apt_repository_is_a_supported_release(release):
    assert [str(found) for found in supported_releases(release.parent)] == ["debian-12-x86_64"]


def test_packages_of_the_release_arch_and_all_are_indexed_with_debian_names(index):
    names = sorted(package.nevra for package in index.all_packages())
    assert names == ["libc6-dbg_2.36-9+deb12u14_amd64", "libc6_2.36-9+deb12u14_amd64", "zlib1g_1:1.2.13.dfsg-1_amd64"]
    zlib = next(package for package in index.all_packages() if package.name == "zlib1g")
    assert (zlib.epoch, zlib.version, zlib.release, zlib.format) == ("1", "1.2.13.dfsg", "1", "deb")
    assert zlib.pkgid == "c" * 64 and zlib.sourcerpm == "zlib 1:1.2.13.dfsg-1"


def test_build_ids_come_from_the_control_field_and_the_contents_debug_links(index):
    assert [p.name for p in index.by_build_id(LIBC_ID, "debuginfo")] == ["libc6-dbg"]
    assert [p.name for p in index.by_build_id("abcdef0123456789", "debuginfo")] == ["libc6-dbg"]


def test_owners_come_from_contents_across_the_usr_merge(index):
    assert [p.name for p in index.owners("/lib/x86_64-linux-gnu/libc.so.6")] == ["libc6"]
    assert index.owners("/usr/share/doc/libc6/copyright") == [], "files never mapped are not indexed"


def test_a_library_is_paired_with_the_binary_package_of_its_dbg_packages_source_build(index):
    resolution = resolve_modules(index, [Module("/lib/x86_64-linux-gnu/libc.so.6", 0, LIBC_ID)])
    assert [p.nevra for p in resolution.packages] == ["libc6_2.36-9+deb12u14_amd64", "libc6-dbg_2.36-9+deb12u14_amd64"]


def test_a_filename_outside_the_repository_is_refused_when_the_package_is_needed(release, tmp_path):
    hostile = PACKAGES.replace("Filename: pool/main/z/zlib/", "Filename: ../../../../etc/")
    (release / "Packages.xz").write_bytes(lzma.compress(hostile.encode()))
    index = RepoIndex.open(release, tmp_path / "cache")
    zlib = next(package for package in index.all_packages() if package.name == "zlib1g")
    with pytest.raises(RepositoryError, match="places zlib1g_1:1.2.13.dfsg-1_amd64 at '../../../../etc/zlib1g_1.2.13"
                                              ".dfsg-1_amd64.deb', outside the repository"):
        index.package_path(zlib)


def test_a_changed_index_rebuilds_the_release_index(release, tmp_path):
    RepoIndex.open(release, tmp_path / "cache").close()
    (release / "Packages.xz").write_bytes(lzma.compress(PACKAGES.split("\n\n")[0].encode()))
    index = RepoIndex.open(release, tmp_path / "cache")
    assert index.rebuilt and [p.name for p in index.all_packages()] == ["libc6"]


@pytest.mark.parametrize("index_text, problem", [
    ("Package: x\n" + "Description: " + "a" * 2000, "a line longer than 1024 bytes"),
    ("Package: x\n" + "".join(f" line {n}\n" for n in range(1000)), "a stanza longer than 4096 bytes"),
])
def test_an_index_without_bounds_is_refused_with_a_sentence(release, tmp_path, monkeypatch, index_text, problem):
    monkeypatch.setattr(apt, "_MAX_LINE_BYTES", 1024)
    monkeypatch.setattr(apt, "_MAX_STANZA_BYTES", 4096)
    (release / "Packages.xz").write_bytes(lzma.compress(index_text.encode()))
    with pytest.raises(RepositoryError, match=f"The metadata of debian-12-x86_64 cannot be indexed: {problem}"):
        RepoIndex.open(release, tmp_path / "cache")


def test_the_caps_hold_the_long_lines_of_real_indexes():
    """bookworm main amd64's librust-winapi-dev has a Provides line of 75 KiB."""
    assert apt._MAX_LINE_BYTES >= 75 * 1024 * 4 and apt._MAX_STANZA_BYTES >= apt._MAX_LINE_BYTES


def test_stanzas_join_continuation_lines_and_split_on_blank_lines():
    parsed = list(apt.stanzas(io.BytesIO(b"A: 1\nB: x\n y\n\n\nA: 2\n")))
    assert parsed == [{"A": "1", "B": "x y"}, {"A": "2"}]


@pytest.mark.parametrize("version, parts", [
    ("2.36-9+deb12u14", ("0", "2.36", "9+deb12u14")), ("1:1.2.13.dfsg-1", ("1", "1.2.13.dfsg", "1")),
    ("1.21.22", ("0", "1.21.22", "")), ("2:1.0-beta-3", ("2", "1.0-beta", "3")),
])
def test_debian_versions_split_into_epoch_upstream_and_revision(version, parts):
    assert apt.split_version(version) == parts


def test_a_dbgsym_package_without_build_ids_is_found_by_name_and_version(tmp_path):
    """Ubuntu's ddebs index: no Build-Ids field, no Contents for the debug files."""
    release = tmp_path / "ubuntu-24.04-x86_64"
    release.mkdir()
    (release / "Packages").write_text(
        f"Package: libfoo1\nVersion: 1.2-3ubuntu1\nArchitecture: amd64\nFilename: pool/libfoo1.deb\n"
        f"SHA256: {'1' * 64}\n\n"
        f"Package: libfoo1-dbgsym\nSource: libfoo\nVersion: 1.2-3ubuntu1\nArchitecture: amd64\n"
        f"Filename: pool/libfoo1-dbgsym.ddeb\nSHA256: {'2' * 64}\n\n"
        f"Package: libfoo1-dbgsym\nVersion: 1.2-3ubuntu2\nArchitecture: amd64\nFilename: pool/newer.ddeb\n"
        f"SHA256: {'3' * 64}\n")
    (release / "Contents-amd64").write_text("usr/lib/x86_64-linux-gnu/libfoo.so.1   libs/libfoo1\n")
    index = RepoIndex.open(release, tmp_path / "cache")
    resolution = resolve_modules(index, [Module("/usr/lib/x86_64-linux-gnu/libfoo.so.1", 0, "ab" * 20)])
    assert resolution.unverified, "the binary is still proven by its build-id once unpacked"
    binary = resolution.unverified[0][1][0]
    assert index.debug_package_of(binary).nevra == "libfoo1-dbgsym_1.2-3ubuntu1_amd64"
    index.close()


@pytest.mark.parametrize("nvr, known", [
    ("libc6-2.36-9+deb12u14", True), ("libc6-dbg-2.36-9+deb12u14", True), ("zlib1g-1:1.2.13.dfsg-1", True),
    ("zlib1g-1.2.13.dfsg-1", True), ("libc6-2.36-9+deb12u13", False), ("libc6-dbg-2.36", False),
])
def test_checkpackage_asks_a_current_index_for_name_and_version(index, release, tmp_path, nvr, known):
    current = RepoIndex.current(release, tmp_path / "cache")
    assert current.holds_name_version(nvr) is known
    current.close()


def test_a_stale_or_missing_index_is_not_built_by_a_web_request(release, tmp_path):
    assert RepoIndex.current(release, tmp_path / "other-cache") is None
    assert not (tmp_path / "other-cache").exists()
