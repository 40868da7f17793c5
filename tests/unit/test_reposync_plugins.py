"""Distribution plugins as an admin writes them: RPM repositories and apt archives."""

import pytest

from retrace_server.packaging.release import ReleaseId
from retrace_server.reposync.apt import AptSource, AptSyncError
from retrace_server.reposync.mirrors import TlsFiles, mirror_for
from retrace_server.reposync.plugins import Repository, load_plugins
from retrace_server.reposync.repository import SyncError, discover_versions

PLUGINS = """[reposync fedora]
everything = https://mirror.example.org/fedora/$VER/$ARCH/os/
    rsync://mirror.example.org/fedora/$VER/$ARCH/os/Packages/*/*.rpm

[reposync debian]
type = apt
mirrors = https://deb.debian.org/debian rsync://mirror.example.org/debian/
suites = $CODENAME $CODENAME-updates $CODENAME-security
components = main contrib
codenames = 12:bookworm 13:trixie

[reposync ubuntu]
type = apt
mirrors = http://archive.ubuntu.com/ubuntu
suites = $CODENAME
codenames = 24.04:noble
metadata-only = yes
"""


def test_rpm_and_apt_sections_give_repositories_and_apt_sources(tmp_path):
    (tmp_path / "site.conf").write_text(PLUGINS)
    plugins = load_plugins(tmp_path)
    assert plugins["fedora"] == (Repository("everything", (
        "https://mirror.example.org/fedora/$VER/$ARCH/os/",
        "rsync://mirror.example.org/fedora/$VER/$ARCH/os/Packages/*/*.rpm")),)
    debian = plugins["debian"]
    assert isinstance(debian, AptSource) and debian.components == ("main", "contrib") and not debian.metadata_only
    assert debian.suite_names(ReleaseId("debian", "12", "x86_64")) == [
        "bookworm", "bookworm-updates", "bookworm-security"]
    ubuntu = plugins["ubuntu"]
    assert ubuntu.metadata_only and ubuntu.suite_names(ReleaseId("ubuntu", "24.04", "x86_64")) == ["noble"]
    assert ubuntu.components == ("main",), "main unless the section says otherwise"


@pytest.mark.parametrize("codename", ["../../etc", "..", "a b"])
def test_a_suite_that_is_not_a_name_is_refused(codename):
    source = AptSource(("https://m/",), ("$CODENAME",), ("main",), {"12": codename})
    with pytest.raises(AptSyncError, match="is not a suite name"):
        source.suite_names(ReleaseId("debian", "12", "x86_64"))


def test_tls_files_apply_to_every_repository_of_the_section_and_are_no_repository(tmp_path):
    (tmp_path / "rhel.conf").write_text("[reposync rhel]\n"
                                        "baseos = https://cdn.redhat.com/content/dist/rhel9/$VER/$ARCH/baseos/os/\n"
                                        "baseos-debug = https://cdn.redhat.com/content/dist/rhel9/$VER/$ARCH/baseos/debug/\n"
                                        "sslclientcert = /etc/pki/entitlement/4242.pem\n"
                                        "sslclientkey = /etc/pki/entitlement/4242-key.pem\n"
                                        "sslcacert = /etc/rhsm/ca/redhat-uep.pem\n")
    repositories = load_plugins(tmp_path)["rhel"]
    assert [repository.name for repository in repositories] == ["baseos", "baseos-debug"]
    assert {repository.tls for repository in repositories} == {TlsFiles(
        "/etc/pki/entitlement/4242.pem", "/etc/pki/entitlement/4242-key.pem", "/etc/rhsm/ca/redhat-uep.pem")}


def test_the_built_in_fedora_plugin_asks_the_metalink_first_then_the_master_mirror():
    everything = load_plugins()["fedora"][0]
    assert everything.mirror_urls("41", "x86_64")[0] == \
        "metalink:https://mirrors.fedoraproject.org/metalink?repo=fedora-41&arch=x86_64"
    assert mirror_for(everything.mirror_urls("41", "x86_64")[0]).kind == "metalink"
    assert [mirror for mirror in everything.mirrors if not mirror.startswith("metalink:")][0].startswith(
        "https://dl.fedoraproject.org/pub/fedora/linux/releases/$VER/"), "what --discover lists"


def test_discovering_versions_needs_a_directory_not_a_metalink():
    with pytest.raises(SyncError, match="has a \\$VER directory"):
        discover_versions({"fedora": (Repository("everything", ("metalink:https://x/?repo=f$VER",)),)}, "fedora",
                          "x86_64")


def test_discovering_versions_of_an_apt_source_says_to_name_the_version():
    apt = AptSource.from_items({"type": "apt", "mirrors": "https://deb.debian.org/debian"})
    with pytest.raises(SyncError, match="'debian' is an apt source"):
        discover_versions({"debian": apt}, "debian", "x86_64")
