"""Distribution plugins as an admin writes them: RPM repositories and apt archives."""

import pytest

from retrace_server.reposync.apt import AptSource, AptSyncError
from retrace_server.reposync.plugins import Repository, load_plugins
from retrace_server.packaging.release import ReleaseId

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
