"""Which packages a release's repository holds."""

import re

from retrace.release import ARCH_FAMILIES, canonical_arch

_EPOCH = re.compile(r"-[0-9]+:")


def strip_epoch(nvr):
    """``bash-1:5.2-3`` -> ``bash-5.2-3``: RPM file names carry no epoch."""
    return _EPOCH.sub("-", nvr, count=1)


def _candidate_names(nvr, arch):
    family = ARCH_FAMILIES.get(canonical_arch(arch), (arch,))
    base = strip_epoch(nvr)
    return [f"{base}.{rpm_arch}.rpm" for rpm_arch in (*family, "noarch")]


def is_package_known(repo_dir, releases, nvr, arch):
    """Whether any of ``releases`` holds the RPM of ``nvr`` built for ``arch``.

    Looks where reposync and Fedora put packages: flat in ``Packages/``,
    in ``Packages/<first letter>/``, or at the top of the release directory.
    Unlike upstream, noarch packages count too (upstream issue #189).
    """
    for release in releases:
        root = repo_dir / str(release)
        for file_name in _candidate_names(nvr, arch):
            places = (root / "Packages" / file_name, root / "Packages" / file_name[0].lower() / file_name, root / file_name)
            if any(place.is_file() for place in places):
                return True
    return False
