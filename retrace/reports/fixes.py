"""Probable fixes (FAF's): which version of a crashing package no longer crashes this way.

A bucket's crashes name the versions they came from (as the release's
index confirmed them).  When other crashes of the same package come from a
newer version and none of them lands in this bucket, that version probably
fixed it: the first such version is what the bucket page offers, beside
the newest version each release's index holds now, so that a triager sees
at once whether users on the current version are still affected.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from retrace_server.packaging.release import ReleaseId
from retrace_server.packaging.repoindex import release_index
from retrace_server.packaging.versions import compare_versions

if TYPE_CHECKING:
    from retrace_server.config import Config
    from retrace_server.reports.buckets import BucketDB

_ORDER = functools.cmp_to_key(compare_versions)


def probable_fix(config: Config, buckets: BucketDB, bucket: dict[str, Any]) -> dict[str, Any]:
    """``{"crashed": {version: reports}, "probably_fixed_in": version or None, "newest": {release: version}}``
    for ``bucket`` (a row of BucketDB.bucket)."""
    crashed = buckets.versions(bucket["bthash"])
    component = bucket["component"]
    fixed_in = None
    if component and crashed:
        last = max(crashed, key=_ORDER)
        later = [version for version in buckets.component_versions(component)
                 if version not in crashed and compare_versions(version, last) > 0]
        fixed_in = min(later, key=_ORDER) if later else None
    newest = {}
    for name in bucket["releases"] if component else []:
        release = ReleaseId.parse(name)
        index = release_index(config.RepoDir, config.CacheDir, release) if release is not None else None
        if index is None:
            continue
        try:
            versions = [_full_version(package.epoch, package.version, package.release)
                        for package in index.by_name(component)]
        finally:
            index.close()
        if versions:
            newest[name] = max(versions, key=_ORDER)
    return {"crashed": dict(sorted(crashed.items(), key=lambda item: _ORDER(item[0]))),
            "probably_fixed_in": fixed_in, "newest": newest}


def _full_version(epoch: str, version: str, release: str) -> str:
    """As buckets keep versions: ``version-release``, the epoch only when there is one."""
    return f"{epoch + ':' if epoch not in ('', '0') else ''}{version}{'-' if release else ''}{release}"
