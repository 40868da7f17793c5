"""Package signatures checked by rpm against the keys configured per release (real rpmbuild, rpmsign, rpmkeys)."""

import shutil
import subprocess

import pytest

from retrace_server.config import Config
from retrace_server.packaging import signatures
from retrace_server.packaging.signatures import Keyring, SignatureError
from testkit.signing import OTHER_KEY, TEST_KEY

SPEC = """Name: tiny
Version: 1.0
Release: 1.fc41
Summary: a package with one file
License: MIT
BuildArch: noarch
%description
tiny
%install
mkdir -p %{buildroot}/usr/share/tiny
echo tiny > %{buildroot}/usr/share/tiny/README
%files
/usr/share/tiny/README
"""


@pytest.fixture(scope="module")
def unsigned_rpm(tmp_path_factory):
    top = tmp_path_factory.mktemp("rpmbuild")
    (top / "tiny.spec").write_text(SPEC)
    subprocess.run(["rpmbuild", "-bb", str(top / "tiny.spec"), "--define", f"_topdir {top}"], check=True,
                   capture_output=True)
    return next((top / "RPMS").rglob("*.rpm"))


def signed_copy(rpm, key, directory):
    copy = directory / f"{key.name}-{rpm.name}"
    shutil.copy(rpm, copy)
    return key.sign([copy])[0]


def keyring(tmp_path, **settings):
    TEST_KEY.ensure()
    config = Config(CacheDir=tmp_path / "cache", gpg_keys_by_release=(("fedora-41", (str(TEST_KEY.public),)),),
                    **settings)
    return Keyring.for_release(config, "fedora-41-x86_64")


def test_a_package_signed_by_the_release_s_key_passes(tmp_path, unsigned_rpm):
    keyring(tmp_path).verify(signed_copy(unsigned_rpm, TEST_KEY, tmp_path), "tiny-1.0-1.fc41.noarch")


def test_an_unsigned_package_is_refused_by_name(tmp_path, unsigned_rpm):
    with pytest.raises(SignatureError, match=r"tiny-1.0-1.fc41.noarch is refused: .* fedora-41-x86_64 "
                                             r"\(rpm says: it carries no signature\)"):
        keyring(tmp_path).verify(unsigned_rpm, "tiny-1.0-1.fc41.noarch")


def test_a_package_signed_by_another_key_is_refused(tmp_path, unsigned_rpm):
    with pytest.raises(SignatureError, match=r"rpm says: Header V4 RSA/SHA\d+ Signature, key ID \w+: NOKEY"):
        keyring(tmp_path).verify(signed_copy(unsigned_rpm, OTHER_KEY, tmp_path), "tiny")


def test_a_signed_package_whose_bytes_changed_is_refused(tmp_path, unsigned_rpm):
    signed = signed_copy(unsigned_rpm, TEST_KEY, tmp_path)
    data = bytearray(signed.read_bytes())
    data[-64] ^= 0xFF
    signed.write_bytes(data)
    with pytest.raises(SignatureError, match="NOT OK|BAD"):
        keyring(tmp_path).verify(signed, "tiny")


def test_a_release_without_keys_is_refused_while_checks_are_required(tmp_path):
    with pytest.raises(SignatureError, match=r"RequireGPGCheck = 1, but no signing key is configured for "
                                             r"fedora-41-x86_64: .* \[gpgkeys\] section"):
        Keyring.for_release(Config(CacheDir=tmp_path), "fedora-41-x86_64")


def test_no_keyring_when_checks_are_off(tmp_path):
    assert Keyring.for_release(Config(CacheDir=tmp_path, RequireGPGCheck=False), "fedora-41-x86_64") is None


def test_keys_are_looked_up_by_release_then_version_then_distribution():
    config = Config(gpg_keys_by_release=(("fedora", ("/k/any",)), ("fedora-40", ("/k/40",)),
                                         ("fedora-41-aarch64", ("/k/41a",))))
    assert [str(path) for path in config.gpg_keys("fedora-41-aarch64")] == ["/k/41a"]
    assert [str(path) for path in config.gpg_keys("fedora-40-x86_64")] == ["/k/40"]
    assert [str(path) for path in config.gpg_keys("fedora-39-x86_64")] == ["/k/any"]
    assert config.gpg_keys("rhel-9-x86_64") == []


def test_many_packages_are_checked_with_one_rpm_run_and_the_bad_one_is_named(tmp_path, unsigned_rpm):
    good = signed_copy(unsigned_rpm, TEST_KEY, tmp_path)
    stranger = signed_copy(unsigned_rpm, OTHER_KEY, tmp_path)
    ring = keyring(tmp_path)
    ring.verify_all([(good, "good-1-1"), (good, "good-again-1-1")])
    with pytest.raises(SignatureError, match="stranger-1-1 is refused"):
        ring.verify_all([(good, "good-1-1"), (stranger, "stranger-1-1")])


def test_a_server_without_rpm_says_it_cannot_check_signatures(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(signatures.SignatureError, match="rpmkeys is not installed .* installs rpm"):
        signatures._rpmkeys(["--version"])
