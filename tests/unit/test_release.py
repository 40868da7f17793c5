import pytest

from retrace.packaging.release import ReleaseId, canonical_arch, detect_release, release_from_line, supported_releases


def test_release_id_parses_distribution_version_arch():
    assert ReleaseId.parse("fedora-41-x86_64") == ReleaseId("fedora", "41", "x86_64")


def test_rawhide_and_dotted_versions_parse():
    assert ReleaseId.parse("fedora-rawhide-aarch64").version == "rawhide"
    assert ReleaseId.parse("rhel-9.4-s390x").version == "9.4"


def test_release_id_prints_back_to_its_wire_form():
    assert str(ReleaseId.parse("centos-9-ppc64le")) == "centos-9-ppc64le"


def test_malformed_release_ids_are_rejected():
    for text in ("fedora-41", "fedora_41_x86_64", "fedora-41-x86_64-extra", "../etc-41-x86_64", "", None, "Fedora-41-x86_64"):
        assert ReleaseId.parse(text) is None, text


def test_canonical_arch_folds_the_x86_and_arm_families():
    assert [canonical_arch(a) for a in ("i686", "i386", "armv7hl", "x86_64", "mips")] == [
        "i386", "i386", "armhfp", "x86_64", "mips",
    ]


def test_supported_releases_are_dirs_with_repodata(tmp_path):
    (tmp_path / "fedora-41-x86_64" / "repodata").mkdir(parents=True)
    (tmp_path / "fedora-40-x86_64" / "repodata").mkdir(parents=True)
    (tmp_path / "fedora-39-x86_64").mkdir()
    (tmp_path / "kernel" / "repodata").mkdir(parents=True)
    assert [str(r) for r in supported_releases(tmp_path)] == ["fedora-40-x86_64", "fedora-41-x86_64"]


def test_supported_releases_of_missing_repo_dir_is_empty(tmp_path):
    assert supported_releases(tmp_path / "nothing") == []


X86 = "x86_64"


@pytest.mark.parametrize("line, expected", [
    ("Fedora release 41 (Forty One)", "fedora-41-x86_64"),
    ("Fedora release 42 (Rawhide)", "fedora-rawhide-x86_64"),
    ("Red Hat Enterprise Linux release 9.4 (Plow)", "rhel-9-x86_64"),
    ("Red Hat Enterprise Linux Server release 7.9 (Maipo)", "rhel-7-x86_64"),
    ("CentOS Linux release 7.9.2009 (Core)", "centos-7-x86_64"),
    ("CentOS Stream release 9", "centos-9-x86_64"),
    ("AlmaLinux release 9.3 (Shamrock Pampas Cat)", "almalinux-9-x86_64"),
])
def test_release_lines_of_each_distribution_give_the_release_id(line, expected):
    assert str(release_from_line(line, X86)) == expected


def test_text_without_a_release_gives_none():
    assert release_from_line("Debian GNU/Linux bookworm", X86) is None


def test_release_line_wins_over_the_dist_tag():
    release, how = detect_release([("os_release", "Fedora release 41 (Forty One)")], "bash-5.2-1.fc40", X86, [])
    assert (str(release), how) == ("fedora-41-x86_64", "from os_release 'Fedora release 41 (Forty One)'")


def test_dist_tag_is_the_fallback():
    release, how = detect_release([], "bash-5.2-1.fc40", X86, [])
    assert str(release) == "fedora-40-x86_64" and "dist tag" in how


def test_shared_el_dist_tag_picks_the_supported_distribution():
    supported = [ReleaseId("centos", "9", X86)]
    release, _ = detect_release([], "bash-5.1-6.el9", X86, supported)
    assert release == ReleaseId("centos", "9", X86)


def test_nothing_recognisable_gives_no_release_and_says_why():
    release, how = detect_release([("os_release", "Plan 9")], "bash-5.2-1", X86, [])
    assert release is None and "dist tag" in how
