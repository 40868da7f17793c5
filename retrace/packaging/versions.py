"""Ordering package versions of either family, without the package managers' bindings.

Debian's ``[epoch:]upstream[-revision]`` and RPM's ``[epoch:]version-release``
have the same shape, and both compare each part the way dpkg's
``verrevcmp`` does: runs of non-digits character by character (``~``
before everything, even the end; letters before other characters), runs
of digits as numbers.  RPM's ``rpmvercmp`` differs only on versions no
distribution ships (``1.0a`` against ``1.0.a``), so one comparison serves
the crash buckets' views and probable fixes of both.
"""
from __future__ import annotations


def _order(char: str) -> int:
    if char == "~":
        return -1
    if char.isalpha():
        return ord(char)
    return ord(char) + 256


def _compare_part(left: str, right: str) -> int:
    """dpkg's verrevcmp: -1, 0 or 1."""
    i = j = 0
    while i < len(left) or j < len(right):
        while (i < len(left) and not left[i].isdigit()) or (j < len(right) and not right[j].isdigit()):
            a = _order(left[i]) if i < len(left) and not left[i].isdigit() else 0
            b = _order(right[j]) if j < len(right) and not right[j].isdigit() else 0
            if a != b:
                return -1 if a < b else 1
            i += 1
            j += 1
        start_i, start_j = i, j
        while i < len(left) and left[i].isdigit():
            i += 1
        while j < len(right) and right[j].isdigit():
            j += 1
        a_number = int(left[start_i:i] or 0)
        b_number = int(right[start_j:j] or 0)
        if a_number != b_number:
            return -1 if a_number < b_number else 1
    return 0


def _split(version: str) -> tuple[int, str, str]:
    epoch, _, rest = version.rpartition(":") if ":" in version else ("0", "", version)
    upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
    return int(epoch) if epoch.isdigit() else 0, upstream, revision


def compare_versions(left: str, right: str) -> int:
    """-1, 0 or 1 as ``left`` is older than, the same as or newer than ``right``."""
    (left_epoch, left_upstream, left_revision), (right_epoch, right_upstream, right_revision) = (
        _split(left), _split(right))
    if left_epoch != right_epoch:
        return -1 if left_epoch < right_epoch else 1
    return _compare_part(left_upstream, right_upstream) or _compare_part(left_revision, right_revision)
