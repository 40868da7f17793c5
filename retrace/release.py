"""Release ids ``<distribution>-<version>-<arch>`` and the releases we serve.

A release is supported when ``<RepoDir>/<release id>/repodata/`` exists,
as upstream; the id is also what ABRT clients compute from os-release, so
its grammar is the wire format (e.g. ``fedora-41-x86_64``,
``fedora-rawhide-aarch64``, ``rhel-9-x86_64``).
"""

import dataclasses
import os
import re

_RELEASE_ID = re.compile(r"(?P<distribution>[a-z0-9]+)-(?P<version>[a-z0-9.]+)-(?P<arch>[a-z0-9_]+)", re.ASCII)

# Canonical architecture -> the RPM arch names of its family, so a package
# check for i386 also finds i686 builds (upstream's ARCH_MAP).
ARCH_FAMILIES = {
    "i386": ("i386", "i486", "i586", "i686"),
    "x86_64": ("x86_64",),
    "armhfp": ("armhfp", "armv7hl"),
    "aarch64": ("aarch64",),
    "ppc64": ("ppc64",),
    "ppc64le": ("ppc64le",),
    "s390x": ("s390x",),
}


def canonical_arch(arch):
    """i686 -> i386, armv7hl -> armhfp; unknown arches pass through."""
    for canonical, family in ARCH_FAMILIES.items():
        if arch in family:
            return canonical
    return arch


@dataclasses.dataclass(frozen=True, order=True)
class ReleaseId:
    distribution: str
    version: str
    arch: str

    def __str__(self):
        return f"{self.distribution}-{self.version}-{self.arch}"

    @classmethod
    def parse(cls, text):
        """A ReleaseId from ``fedora-41-x86_64``; None when it does not fit the grammar."""
        match = _RELEASE_ID.fullmatch(text or "")
        if match is None:
            return None
        return cls(match["distribution"], match["version"], match["arch"])


def supported_releases(repo_dir):
    """Releases with a repository (a ``repodata/`` directory), sorted."""
    try:
        names = os.listdir(repo_dir)
    except FileNotFoundError:
        return []
    releases = []
    for name in names:
        release = ReleaseId.parse(name)
        if release is not None and os.path.isdir(os.path.join(repo_dir, name, "repodata")):
            releases.append(release)
    return sorted(releases)
