import pytest

from retrace_server.arch import canonical_arch
from retrace_server.packaging.release import ReleaseId, detect_release, release_from_line, supported_releases


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
    ("Debian GNU/Linux 12 (bookworm)", "debian-12-x86_64"),
    ("Debian GNU/Linux 11", "debian-11-x86_64"),
    ("Ubuntu 24.04.1 LTS", "ubuntu-24.04-x86_64"),
    ("Ubuntu 24.10", "ubuntu-24.10-x86_64"),
])
def test_release_lines_of_each_distribution_give_the_release_id(line, expected):
    assert str(release_from_line(line, X86)) == expected


def test_text_without_a_release_gives_none():
    assert release_from_line("Debian GNU/Linux bookworm", X86) is None


BOOKWORM = """PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
"""
NOBLE = """PRETTY_NAME="Ubuntu 24.04.1 LTS"
NAME="Ubuntu"
VERSION_ID="24.04"
VERSION="24.04.1 LTS (Noble Numbat)"
VERSION_CODENAME=noble
ID=ubuntu
ID_LIKE=debian
"""


@pytest.mark.parametrize("os_release, expected", [
    (BOOKWORM, "debian-12-x86_64"),
    (NOBLE, "ubuntu-24.04-x86_64"),
    ('PRETTY_NAME="Debian GNU/Linux trixie/sid"\nNAME="Debian GNU/Linux"\nVERSION_CODENAME=trixie\nID=debian\n',
     "debian-trixie-x86_64"),
    ('NAME="Arch Linux"\nID=arch\nBUILD_ID=rolling\n', "arch-rolling-x86_64"),
    ('NAME="openSUSE Leap"\nVERSION_ID="15.6"\nID="opensuse-leap"\n', "opensuseleap-15.6-x86_64"),
    ('NAME="Red Hat Enterprise Linux"\nVERSION_ID="9.4"\nID="rhel"\n', "rhel-9-x86_64"),
])
def test_os_info_of_any_distribution_gives_the_release_id(os_release, expected):
    release, how = detect_release([("os_info", os_release)], "", X86, [])
    assert str(release) == expected and how.startswith("from os_info (ID=")


@pytest.mark.parametrize("os_release", ["", "NAME=Plan9\n", 'ID=debian\nVERSION_ID="12; rm -rf /"\n',
                                        "ID=$(reboot)\nVERSION_ID=1\n"])
def test_an_os_info_that_names_no_distribution_gives_no_release(os_release):
    release, how = detect_release([("os_info", os_release)], "", X86, [])
    assert release is None, how


@pytest.mark.parametrize("version, expected", [
    ("libc6-2.36-9+deb12u14", "debian-12-x86_64"),
    ("openssl-3.0.13-0ubuntu3.4", None),
    ("libssl3t64-3.0.13-0ubuntu3.4~24.04", None),
    ("curl-8.5.0-2ubuntu10.6", None),
    ("sudo-1.9.15p5-3ubuntu5.24.04.1", "ubuntu-24.04-x86_64"),
])
def test_debian_and_ubuntu_package_versions_name_their_release(version, expected):
    release, _ = detect_release([], version, X86, [])
    assert (str(release) if release else None) == expected


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
