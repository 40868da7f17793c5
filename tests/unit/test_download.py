"""Packages of metadata-only releases, downloaded from the mirror each repository names, held to the index."""

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from retrace_server.packaging.download import DownloadError, download_packages, package_url
from retrace_server.packaging.repoindex import Package


def test_a_package_is_served_by_the_mirror_of_the_nearest_directory_that_names_one(tmp_path):
    release = tmp_path / "fedora-41-x86_64"
    (release / "repositories" / "updates").mkdir(parents=True)
    (release / "repositories" / "updates" / "mirror").write_text("https://mirror.example/updates/41/\n")
    (release / "mirror").write_text("https://elsewhere.example/\n")
    package = release / "repositories/updates/Packages/g/glib2-2.82 1.x86_64.rpm"
    assert package_url(release, package) == (
        "https://mirror.example/updates/41/", "https://mirror.example/updates/41/Packages/g/glib2-2.82%201.x86_64.rpm")
    assert package_url(release, release / "pool/main/z/zlib1g.deb") == (
        "https://elsewhere.example/", "https://elsewhere.example/pool/main/z/zlib1g.deb")


def test_a_release_without_a_mirror_file_or_with_a_non_http_one_downloads_nothing(tmp_path):
    release = tmp_path / "debian-12-x86_64"
    release.mkdir()
    assert package_url(release, release / "pool/main/z/zlib1g.deb") is None
    (release / "mirror").write_text("file:///etc/\n")
    assert package_url(release, release / "pool/main/z/zlib1g.deb") is None


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(tmp_path):
    """A loopback HTTP server over ``tmp_path / "mirror"``."""
    root = tmp_path / "mirror"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *args: _Quiet(*args, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def package_of(content, name):
    return Package(hashlib.sha256(content).hexdigest(), name, "0", "1", "1", "x86_64", "", f"{name}.rpm", len(content))


def test_downloads_are_kept_only_when_size_and_sha256_are_the_indexes(mirror, tmp_path):
    root, url = mirror
    good, tampered, longer = package_of(b"good", "good"), package_of(b"tampered", "tampered"), package_of(b"x", "long")
    (root / "good.rpm").write_bytes(b"good")
    (root / "tampered.rpm").write_bytes(b"TAMPERED")
    (root / "long.rpm").write_bytes(b"x" * 100)
    results = download_packages([(package, url + package.location) for package in (good, tampered, longer)],
                                tmp_path / "downloads", 30)
    assert Path(results[good.pkgid]).read_bytes() == b"good"
    assert isinstance(results[tampered.pkgid], DownloadError)
    assert "served a different file than the index lists for tampered-1-1.x86_64" in results[tampered.pkgid].sentence
    assert "sent more than the 1 bytes the index lists for long-1-1.x86_64" in results[longer.pkgid].sentence
    assert sorted(path.name for path in (tmp_path / "downloads").iterdir()) == [Path(results[good.pkgid]).name]


def test_a_missing_package_is_named_with_the_mirrors_answer(mirror, tmp_path):
    _, url = mirror
    package = package_of(b"absent", "absent")
    result = download_packages([(package, url + package.location)], tmp_path / "downloads", 30)[package.pkgid]
    assert result.sentence == f"mirror {url}absent.rpm answered HTTP 404 for absent-1-1.x86_64"
