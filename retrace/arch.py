"""Architecture names: the one spelling every layer uses, and the families packages name them by.

A core names its machine by an ELF number, an RPM its arch by the build's
name (i686, armv7hl), a Debian package by Debian's (amd64, arm64); releases
and queues use the canonical name (x86_64, aarch64).  Everything that
compares architectures goes through ``canonical_arch`` first.
"""

from __future__ import annotations  # the client runs on Python 3.9 (RHEL 9): X | None in annotations

import platform

# Canonical architecture -> the RPM arch names of its family, so a package
# check for i386 also finds i686 builds (upstream's ARCH_MAP).
ARCH_FAMILIES: dict[str, tuple[str, ...]] = {
    "i386": ("i386", "i486", "i586", "i686"),
    "x86_64": ("x86_64",),
    "armhfp": ("armhfp", "armv7hl"),
    "aarch64": ("aarch64",),
    "ppc64": ("ppc64",),
    "ppc64le": ("ppc64le",),
    "s390x": ("s390x",),
}
# Canonical architecture -> Debian's name for it.
DEBIAN_ARCHES: dict[str, str] = {
    "x86_64": "amd64", "aarch64": "arm64", "i386": "i386", "i686": "i386", "ppc64le": "ppc64el",
    "s390x": "s390x", "armhfp": "armhf", "riscv64": "riscv64",
}


def canonical_arch(arch: str) -> str:
    """i686 -> i386, armv7hl -> armhfp; unknown arches pass through."""
    for canonical, family in ARCH_FAMILIES.items():
        if arch in family:
            return canonical
    return arch


def debian_arch(arch: str) -> str:
    """x86_64 -> amd64, aarch64 -> arm64."""
    return DEBIAN_ARCHES.get(arch, arch)


# The architecture of this host, canonically named.
HOST_ARCH = canonical_arch(platform.machine())
