"""Untrusted names joined to a root never leave it."""

import pytest

from retrace_server.environments.sysroot import place_files
from retrace_server.paths import UnsafePath, clamped_link_target, inside


@pytest.mark.parametrize("name", ["/../x", "a/../../x", "/a//b", "./a", "", "/", "a/\0b"])
def test_names_with_dot_dot_empty_or_dot_parts_are_refused(name):
    with pytest.raises(UnsafePath):
        inside("/root", name)


def test_plain_names_absolute_or_relative_land_below_the_root():
    assert inside("/root", "/usr/lib/x") == inside("/root", "usr/lib/x") == "/root/usr/lib/x"


@pytest.mark.parametrize("link, target, expected", [
    ("usr/lib/libc.so", "libc.so.6", "libc.so.6"),
    ("usr/lib/libc.so", "/usr/lib64/libc.so.6", "../lib64/libc.so.6"),
    ("usr/lib/x", "../../../../../../etc/passwd", "../../etc/passwd"),
    ("lib", "../../../tmp", "tmp"),
])
def test_link_targets_resolve_as_in_a_chroot_never_above_the_tree(link, target, expected):
    assert clamped_link_target(link, target) == expected


def test_placing_a_file_under_a_name_that_climbs_out_places_nothing(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    placed = place_files(root, [("/../escaped", "/etc/hostname"), ("/usr/lib/ok", "/etc/hostname")])
    assert placed == 1
    assert not (tmp_path / "escaped").exists() and (root / "usr/lib/ok").is_symlink()
