"""The build-id index over hand-written repodata (the XML createrepo_c writes)."""

import gzip

import pytest
import zstandard

from retrace_server.elf import Module
from retrace_server.packaging.packages import resolve_modules
from retrace_server.packaging.repoindex import RepoIndex, RepositoryError

EXE_ID = "3a" + "1" * 38
LIB_ID = "e1" + "2" * 38
OTHER_ID = "77" + "3" * 38

PRIMARY = """<?xml version="1.0" encoding="UTF-8"?>
<metadata xmlns="http://linux.duke.edu/metadata/common" xmlns:rpm="http://linux.duke.edu/metadata/rpm" packages="4">
{packages}
</metadata>"""
PACKAGE = """<package type="rpm"><name>{name}</name><arch>x86_64</arch>
<version epoch="0" ver="1.0" rel="{rel}"/><checksum type="sha256" pkgid="YES">{pkgid}</checksum>
<location href="Packages/{name}-1.0-{rel}.x86_64.rpm"/><size package="100" installed="200" archive="300"/>
<format><rpm:sourcerpm>{source}-1.0-{rel}.src.rpm</rpm:sourcerpm><rpm:provides>{provides}</rpm:provides></format>
</package>"""
FILELISTS = """<?xml version="1.0" encoding="UTF-8"?>
<filelists xmlns="http://linux.duke.edu/metadata/filelists" packages="4">
{packages}
</filelists>"""
REPOMD = """<?xml version="1.0" encoding="UTF-8"?>
<repomd xmlns="http://linux.duke.edu/metadata/repo"><revision>{revision}</revision>
<data type="primary"><location href="repodata/primary.xml{suffix}"/></data>
<data type="filelists"><location href="repodata/filelists.xml{suffix}"/></data>
</repomd>"""

PACKAGES = [
    # name, rel, pkgid, source, debuginfo provide, files
    ("crasher", "1.fc41", "a1", "crasher", None, ["/usr/bin/crasher", f"/usr/lib/.build-id/3a/{EXE_ID[2:]}"]),
    ("crasher-debuginfo", "1.fc41", "a2", "crasher", EXE_ID, ["/usr/lib/debug/usr/bin/crasher.debug"]),
    ("libcrash", "1.fc41", "b1", "libcrash", None, ["/usr/lib64/libcrash.so.1", "/usr/share/doc/libcrash/README"]),
    ("libcrash-debuginfo", "1.fc41", "b2", "libcrash", None, [f"/usr/lib/debug/.build-id/e1/{LIB_ID[2:]}.debug"]),
    ("libcrash", "2.fc41", "c1", "libcrash", None, ["/usr/lib64/libcrash.so.1"]),
]


def write_repo(release_dir, revision="1", compress=gzip.compress, suffix=".gz", packages=PACKAGES):
    repodata = release_dir / "repodata"
    repodata.mkdir(parents=True, exist_ok=True)
    primary = "".join(
        PACKAGE.format(
            name=name, rel=rel, pkgid=pkgid, source=source,
            provides=f'<rpm:entry name="debuginfo(build-id)" flags="EQ" epoch="0" ver="{provide}"/>' if provide else "",
        )
        for name, rel, pkgid, source, provide, _ in packages
    )
    filelists = "".join(
        f'<package pkgid="{pkgid}" name="{name}" arch="x86_64"><version epoch="0" ver="1.0" rel="{rel}"/>'
        + "".join(f"<file>{path}</file>" for path in files) + "</package>"
        for name, rel, pkgid, _, _, files in packages
    )
    (repodata / f"primary.xml{suffix}").write_bytes(compress(PRIMARY.format(packages=primary).encode()))
    (repodata / f"filelists.xml{suffix}").write_bytes(compress(FILELISTS.format(packages=filelists).encode()))
    (repodata / "repomd.xml").write_text(REPOMD.format(revision=revision, suffix=suffix))
    return release_dir


@pytest.fixture
def index(tmp_path):
    opened = RepoIndex.open(write_repo(tmp_path / "fedora-41-x86_64"), tmp_path / "cache")
    yield opened
    opened.close()


def names(packages):
    return sorted(package.nevra for package in packages)


def test_debuginfo_is_found_by_its_build_id_provide(index):
    assert names(index.by_build_id(EXE_ID, "debuginfo")) == ["crasher-debuginfo-1.0-1.fc41.x86_64"]


def test_debuginfo_is_found_by_its_build_id_file(index):
    assert names(index.by_build_id(LIB_ID, "debuginfo")) == ["libcrash-debuginfo-1.0-1.fc41.x86_64"]


def test_binary_is_found_by_its_build_id_link(index):
    assert names(index.by_build_id(EXE_ID, "binary")) == ["crasher-1.0-1.fc41.x86_64"]


def test_owners_are_found_across_the_usr_merge(index):
    assert names(index.owners("/lib64/libcrash.so.1")) == ["libcrash-1.0-1.fc41.x86_64", "libcrash-1.0-2.fc41.x86_64"]


def test_unmappable_files_are_not_indexed(index):
    assert index.owners("/usr/share/doc/libcrash/README") == []


def test_index_is_rebuilt_only_when_repomd_changes(tmp_path):
    release_dir = write_repo(tmp_path / "fedora-41-x86_64")
    assert RepoIndex.open(release_dir, tmp_path / "cache").rebuilt
    assert not RepoIndex.open(release_dir, tmp_path / "cache").rebuilt
    write_repo(release_dir, revision="2", packages=PACKAGES[:2])
    rebuilt = RepoIndex.open(release_dir, tmp_path / "cache")
    assert rebuilt.rebuilt and rebuilt.owners("/usr/lib64/libcrash.so.1") == []


def test_zstd_compressed_metadata_is_read(tmp_path):
    release_dir = write_repo(tmp_path / "r", compress=zstandard.ZstdCompressor().compress, suffix=".zst")
    assert names(RepoIndex.open(release_dir, tmp_path / "cache").by_build_id(EXE_ID, "binary"))


def test_repository_without_repomd_fails_with_a_sentence(tmp_path):
    (tmp_path / "fedora-41-x86_64").mkdir()
    with pytest.raises(RepositoryError, match="fedora-41-x86_64 has no repodata/repomd.xml"):
        RepoIndex.open(tmp_path / "fedora-41-x86_64", tmp_path / "cache")


def test_resolution_pairs_a_library_with_the_binary_of_its_debuginfo_build(index):
    resolution = resolve_modules(index, [Module("/usr/lib64/libcrash.so.1", 0, LIB_ID)])
    assert names(resolution.packages) == ["libcrash-1.0-1.fc41.x86_64", "libcrash-debuginfo-1.0-1.fc41.x86_64"]
    assert resolution.unresolved == [] and resolution.unverified == []


def test_resolution_leaves_a_file_owned_by_several_builds_to_verification(index):
    resolution = resolve_modules(index, [Module("/usr/lib64/libcrash.so.1", 0, OTHER_ID)])
    assert resolution.packages == []
    [(module, candidates)] = resolution.unverified
    assert module.build_id == OTHER_ID and len(candidates) == 2


def test_resolution_names_files_no_package_provides(index):
    resolution = resolve_modules(index, [Module("/usr/lib/libc.so.6", 0, OTHER_ID), Module("/usr/bin/x", 0, None)])
    assert [(u.path, u.problem) for u in resolution.unresolved] == [
        ("/usr/lib/libc.so.6", "no package in the repository"),
        ("/usr/bin/x", "the core does not hold its build-id"),
    ]


def test_a_package_the_metadata_places_outside_the_repository_is_refused_by_name(tmp_path):
    release_dir = write_repo(tmp_path / "fedora-41-x86_64")
    primary = release_dir / "repodata" / "primary.xml.gz"
    text = gzip.decompress(primary.read_bytes()).decode()
    primary.write_bytes(gzip.compress(text.replace('href="Packages/crasher-1.0', 'href="../../etc/crasher-1.0').encode()))
    (release_dir / "repodata" / "repomd.xml").write_text(REPOMD.format(revision="2", suffix=".gz"))
    opened = RepoIndex.open(release_dir, tmp_path / "cache")
    exe = opened.by_build_id(EXE_ID, "binary")[0]
    with pytest.raises(RepositoryError, match="places crasher-1.0-1.fc41.x86_64 at '../../etc/crasher-1.0-1.fc41"
                                              ".x86_64.rpm', outside the repository"):
        opened.package_path(exe)
    opened.close()


def test_a_metadata_only_release_indexes_each_of_its_repositories_below_its_own_directory(tmp_path):
    """reposync --metadata-only keeps each repository's repodata in repositories/<name>/: one index over them
    all, each package placed below the repository it came from (whose mirror serves it)."""
    release_dir = tmp_path / "fedora-41-x86_64"
    write_repo(release_dir / "repositories" / "fedora", packages=PACKAGES[::2])
    write_repo(release_dir / "repositories" / "fedora-debuginfo", packages=PACKAGES[1::2])
    opened = RepoIndex.open(release_dir, tmp_path / "cache")
    [debuginfo] = opened.by_build_id(EXE_ID, "debuginfo")
    assert opened.package_path(debuginfo) == \
        release_dir / "repositories/fedora-debuginfo/Packages/crasher-debuginfo-1.0-1.fc41.x86_64.rpm"
    assert names(opened.owners("/usr/lib64/libcrash.so.1")) == ["libcrash-1.0-1.fc41.x86_64",
                                                                 "libcrash-1.0-2.fc41.x86_64"]
    opened.close()
    write_repo(release_dir / "repositories" / "fedora-debuginfo", revision="2", packages=PACKAGES[1:2])
    assert RepoIndex.open(release_dir, tmp_path / "cache").rebuilt, "any repository's new metadata rebuilds it"
