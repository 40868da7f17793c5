import dataclasses

from retrace_server.packaging.packages import is_package_known, strip_epoch
from retrace_server.packaging.release import ReleaseId

F41 = ReleaseId("fedora", "41", "x86_64")


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_epoch_is_stripped_for_file_names():
    assert strip_epoch("bash-1:5.2.26-3.fc41") == "bash-5.2.26-3.fc41"
    assert strip_epoch("bash-5.2.26-3.fc41") == "bash-5.2.26-3.fc41"


def test_package_in_flat_packages_dir_is_known(tmp_path):
    _touch(tmp_path / "fedora-41-x86_64" / "Packages" / "bash-5.2-3.fc41.x86_64.rpm")
    assert is_package_known(tmp_path, [F41], "bash-5.2-3.fc41", "x86_64")


def test_package_in_letter_subdir_is_known(tmp_path):
    _touch(tmp_path / "fedora-41-x86_64" / "Packages" / "b" / "bash-5.2-3.fc41.x86_64.rpm")
    assert is_package_known(tmp_path, [F41], "bash-0:5.2-3.fc41", "x86_64")


def test_noarch_package_is_known(tmp_path):
    _touch(tmp_path / "fedora-41-x86_64" / "Packages" / "tzdata-2024a-1.fc41.noarch.rpm")
    assert is_package_known(tmp_path, [F41], "tzdata-2024a-1.fc41", "x86_64")


def test_i686_build_matches_i386_family(tmp_path):
    release = ReleaseId("fedora", "41", "i386")
    _touch(tmp_path / "fedora-41-i386" / "Packages" / "bash-5.2-3.fc41.i686.rpm")
    assert is_package_known(tmp_path, [release], "bash-5.2-3.fc41", "i686")


def test_package_of_other_version_is_unknown(tmp_path):
    _touch(tmp_path / "fedora-41-x86_64" / "Packages" / "bash-5.2-3.fc41.x86_64.rpm")
    assert not is_package_known(tmp_path, [F41], "bash-5.2-4.fc41", "x86_64")


def test_no_release_means_unknown(tmp_path):
    _touch(tmp_path / "fedora-41-x86_64" / "Packages" / "bash-5.2-3.fc41.x86_64.rpm")
    assert not is_package_known(tmp_path, [], "bash-5.2-3.fc41", "x86_64")


def test_a_package_is_named_as_a_dso_list_or_the_crash_data_name_it():
    from retrace_server.packaging.packages import names_package
    from retrace_server.packaging.repoindex import Package

    older = Package("x", "libfoo1", "0", "1.0", "1", "amd64", "foo", "pool/a.deb", 1, "deb")
    assert names_package("libfoo1-1.0-1.amd64", older) and names_package("libfoo1-1.0-1", older)
    assert not names_package("libfoo1-1.0-2", older) and not names_package("libfoo-1.0-1", older)
    epoch = dataclasses.replace(older, epoch="1")
    assert names_package("libfoo1-1:1.0-1.amd64", epoch) and names_package("libfoo1-1.0-1", epoch)
