"""Package versions of both families order as their package managers order them."""

import pytest

from retrace_server.packaging.versions import compare_versions


@pytest.mark.parametrize("older, newer", [
    ("1.0-1", "1.0-2"),
    ("1.9", "1.10"),
    ("1.0~rc1-1", "1.0-1"),
    ("2.0", "1:0.9"),
    ("3.11.2-6+deb12u6", "3.11.2-6+deb12u8"),
    ("2.36-9+deb12u4", "2.36-9+deb12u10"),
    ("1.0", "1.0a"),
    ("1.2-3.fc41", "1.2-10.fc41"),
])
def test_versions_order_like_dpkg_and_rpm(older, newer):
    assert compare_versions(older, newer) == -1 and compare_versions(newer, older) == 1


def test_the_same_version_is_equal_with_or_without_a_zero_epoch():
    assert compare_versions("1.0-1.fc41", "1.0-1.fc41") == 0
    assert compare_versions("0:1.0-1", "1.0-1") == 0
