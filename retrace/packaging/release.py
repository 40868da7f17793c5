"""Release ids ``<distribution>-<version>-<arch>`` and the releases we serve.

A release is supported when ``<RepoDir>/<release id>/`` holds a repository
(``repodata/`` as upstream, or an apt repository); the id is also what ABRT clients compute from os-release, so
its grammar is the wire format (e.g. ``fedora-41-x86_64``,
``fedora-rawhide-aarch64``, ``rhel-9-x86_64``).
"""

from __future__ import annotations  # the client runs on Python 3.9 (RHEL 9): X | None in annotations

import dataclasses
import enum
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from retrace_server.packaging.apt import is_apt_repository

if TYPE_CHECKING:
    from retrace_server.config import Config

REPOSITORIES = "repositories"  # of a metadata-only rpm-md release

_RELEASE_ID = re.compile(r"(?P<distribution>[a-z0-9]+)-(?P<version>[a-z0-9.]+)-(?P<arch>[a-z0-9_]+)", re.ASCII)

@dataclasses.dataclass(frozen=True, order=True)
class ReleaseId:
    distribution: str
    version: str
    arch: str

    def __str__(self) -> str:
        return f"{self.distribution}-{self.version}-{self.arch}"

    @classmethod
    def parse(cls, text: str | None) -> ReleaseId | None:
        """A ReleaseId from ``fedora-41-x86_64``; None when it does not fit the grammar."""
        match = _RELEASE_ID.fullmatch(text or "")
        if match is None:
            return None
        return cls(match["distribution"], match["version"], match["arch"])


# The first version of each distribution whose every installation has /bin, /sbin and /lib* as links into
# /usr (Debian 12 requires it; Ubuntu since 21.04; Fedora since 17; RHEL and its rebuilds since 7).  Older
# ones (RHEL 6, Debian 11 upgraded without usrmerge) keep /bin/x and /usr/bin/x apart.
_MERGED_USR_SINCE = {"debian": 12, "ubuntu": 21, "fedora": 17, "rhel": 7, "centos": 7, "almalinux": 8, "rocky": 8,
                     "ol": 7}


def merges_usr(release: ReleaseId | str | None) -> bool:
    """Whether ``release`` (``debian-11-x86_64``) has merged /usr; a distribution or version this table does
    not know (rawhide, Arch) is taken as merged, as every current distribution is."""
    parsed = release if isinstance(release, ReleaseId) else ReleaseId.parse(str(release or ""))
    if parsed is None or parsed.distribution not in _MERGED_USR_SINCE:
        return True
    major = re.match(r"\d+", parsed.version)
    return major is None or int(major[0]) >= _MERGED_USR_SINCE[parsed.distribution]


def served_releases(config: Config) -> list[ReleaseId]:
    """Releases this server retraces: mirrored ones, and those served by debuginfod alone."""
    releases = set(supported_releases(config.RepoDir))
    releases.update(release for release in map(ReleaseId.parse, config.debuginfod_releases) if release)
    return sorted(releases)


def rpm_repositories(release_dir: Path | str) -> list[Path]:
    """The rpm-md repositories of a release directory: the release itself when it is a full mirror (its
    ``repodata/`` covers ``Packages/``), else each ``repositories/<name>/`` of a metadata-only release
    (reposync keeps the repository's metadata there; its packages stay on the mirror it names)."""
    release_dir = Path(release_dir)
    if (release_dir / "repodata").is_dir():
        return [release_dir]
    return sorted(path for path in (release_dir / REPOSITORIES).glob("*") if (path / "repodata").is_dir())


class RepositoryFormat(enum.Enum):
    """What a release directory in RepoDir holds; the one place that tells them apart."""

    RPM_MD = "a full RPM mirror"  # repodata/ over Packages/
    RPM_MD_METADATA = "RPM metadata only"  # repositories/<name>/repodata/; the packages stay on the mirror
    APT = "an apt repository"  # dists/, or a flat Packages index

    @property
    def is_rpm_md(self) -> bool:
        return self is not RepositoryFormat.APT


def repository_format(release_dir: Path | str) -> RepositoryFormat | None:
    """The RepositoryFormat of ``release_dir``, or None when it holds no repository (rpm-md wins over apt)."""
    repositories = rpm_repositories(release_dir)
    if repositories:
        return RepositoryFormat.RPM_MD if repositories == [Path(release_dir)] else RepositoryFormat.RPM_MD_METADATA
    return RepositoryFormat.APT if is_apt_repository(release_dir) else None


def supported_releases(repo_dir: Path) -> list[ReleaseId]:
    """Releases with a repository (rpm-md: ``repodata/``, or ``repositories/*/repodata/`` metadata only;
    apt: ``dists/`` or a ``Packages`` index), sorted."""
    try:
        names = os.listdir(repo_dir)
    except FileNotFoundError:
        return []
    releases = []
    for name in names:
        release = ReleaseId.parse(name)
        if release is not None and repository_format(os.path.join(repo_dir, name)) is not None:
            releases.append(release)
    return sorted(releases)


@dataclasses.dataclass(frozen=True)
class Distribution:
    """A distribution plugin: how its release line and its dist tag look."""

    name: str
    release_line: re.Pattern[str]
    dist_tag: re.Pattern[str] | None


# Upstream's abrtparser / guessparser patterns, plus CentOS Stream, Debian
# and Ubuntu.  The first group of each is the version: the major one, except
# for Ubuntu, whose point releases (24.04, 24.10) are different
# distributions.  Debian's tag is the stable-update suffix (+deb12u1),
# Ubuntu's the SRU suffix (0ubuntu0.24.04.1).
DISTRIBUTIONS = (
    Distribution("fedora", re.compile(r"Fedora(?: Linux)? release (\d+|rawhide)\b.*", re.I), re.compile(r"\.fc(\d+)")),
    Distribution(
        "rhel",
        re.compile(r"Red Hat Enterprise Linux(?:\s\w+)? release (\d+)(?:\.\d+)*(?:\s\w+)?(?: \(.*\))?"),
        re.compile(r"\.el(\d+)"),
    ),
    Distribution(
        "centos", re.compile(r"CentOS(?: Linux| Stream)? release (\d+)(?:\.\d+)*(?: \(.*\))?"), re.compile(r"\.el(\d+)")
    ),
    Distribution("debian", re.compile(r"Debian(?: GNU/Linux)? (\d+)(?:\.\d+)*(?: \(\w+\))?"),
                 re.compile(r"\+deb(\d+)u\d+")),
    Distribution("ubuntu", re.compile(r"Ubuntu (\d\d\.\d\d)(?:\.\d+)?(?: LTS)?(?: \(.*\))?"),
                 re.compile(r"ubuntu\d+\.(\d\d\.\d\d)(?:\.\d+)*$")),
)
# Any other "<Name> [Linux] release <N>[.M] (...)" line: the distribution is
# the first word, lower-cased (AlmaLinux -> almalinux).
_GENERIC_RELEASE_LINE = re.compile(r"([A-Za-z][A-Za-z0-9]*)(?: [A-Za-z0-9]+)*? release (\d+)(?:\.\d+)*(?: .*)?")


def _version(text: str, release_line: str) -> str:
    return "rawhide" if "rawhide" in release_line.lower() else text.lower()


# The problem-directory files that may name the release, in the order tried
# (upstream: the chroot's own os-release first); ``os_info`` is the whole
# os-release file, which ABRT on Debian saves instead of an os_release line.
RELEASE_FILES = ("os_release_in_rootdir", "os_release", "release", "os_info")


def release_from_line(release_line: str, arch: str) -> ReleaseId | None:
    """The ReleaseId an ABRT ``os_release`` line names, or None."""
    line = release_line.strip()
    for distribution in DISTRIBUTIONS:
        match = distribution.release_line.fullmatch(line)
        if match:
            return ReleaseId(distribution.name, _version(match[1], line), arch)
    match = _GENERIC_RELEASE_LINE.fullmatch(line)
    if match:
        return ReleaseId(match[1].lower(), _version(match[2], line), arch)
    return None


# os-release IDs whose VERSION_ID keeps only its major part in a release id
# (rhel 9.4 -> rhel-9), as their release lines do; Ubuntu and the rest keep it whole.
_MAJOR_ONLY = {"fedora", "rhel", "centos", "debian", "almalinux", "rocky", "ol"}
_OS_RELEASE_LINE = re.compile(r"([A-Z][A-Z0-9_]*)=(.*)")
_RELEASE_WORD = re.compile(r"[a-z0-9.]+", re.ASCII)
_OS_RELEASE_ID = re.compile(r"[a-z0-9._-]+", re.ASCII)  # os-release(5)


def parse_os_release(text: str) -> dict[str, str]:
    """``{KEY: value}`` of an os-release file (the ``os_info`` ABRT saves), quotes removed."""
    fields = {}
    for line in text.splitlines():
        match = _OS_RELEASE_LINE.fullmatch(line.strip())
        if match:
            value = match[2].strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            fields[match[1]] = value
    return fields


def release_from_os_release(text: str, arch: str) -> ReleaseId | None:
    """The ReleaseId an os-release file names (``ID``, ``VERSION_ID``, else ``VERSION_CODENAME``), or None.

    Any distribution's: a release served through debuginfod needs no plugin.
    Debian testing and unstable have no VERSION_ID: their codename is the version.
    """
    fields = parse_os_release(text)
    if not _OS_RELEASE_ID.fullmatch(fields.get("ID", "")):
        return None
    distribution = re.sub(r"[^a-z0-9]", "", fields["ID"])
    version = (fields.get("VERSION_ID") or fields.get("VERSION_CODENAME") or fields.get("BUILD_ID") or "").lower()
    if fields.get("REDHAT_BUGZILLA_PRODUCT_VERSION", "").lower() == "rawhide":
        version = "rawhide"
    if distribution in _MAJOR_ONLY and version[:1].isdigit():
        version = version.split(".")[0]
    if not distribution or not _RELEASE_WORD.fullmatch(version):
        return None
    return ReleaseId(distribution, version, arch)


def releases_from_dist_tag(package_nvr: str, arch: str) -> list[ReleaseId]:
    """Candidate ReleaseIds from a package's dist tag (``.fc41``, ``.el9``), in plugin order."""
    candidates = []
    for distribution in DISTRIBUTIONS:
        if distribution.dist_tag is None:
            continue
        match = distribution.dist_tag.search(package_nvr)
        if match:
            candidates.append(ReleaseId(distribution.name, match[1], arch))
    return candidates


def detect_release(release_lines: list[tuple[str, str]], package_nvr: str, arch: str,
                   supported: list[ReleaseId]) -> tuple[ReleaseId | None, str]:
    """The release to retrace on, from the crash's release lines, else the dist tag.

    ``release_lines`` are tried in order (upstream: ``os_release_in_rootdir``,
    ``os_release``, ``release``).  A dist tag shared by several
    distributions (``.el9``) picks the first one this server supports.
    ``os_info`` (a whole os-release file) counts as a release line.
    Returns ``(release, how)``; release is None when nothing matched.
    """
    for name, text in release_lines:
        if name == "os_info":
            release = release_from_os_release(text, arch)
            if release is not None:
                return release, f"from os_info (ID={parse_os_release(text).get('ID')})"
            continue
        release = release_from_line(text, arch)
        if release is not None:
            return release, f"from {name} '{text}'"
    candidates = releases_from_dist_tag(package_nvr, arch)
    for release in candidates:
        if release in supported:
            return release, f"from the dist tag of {package_nvr}"
    if candidates:
        return candidates[0], f"from the dist tag of {package_nvr}"
    return None, "neither the release line nor the package's dist tag names a release"
