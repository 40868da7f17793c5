"""reposync's HTTP mirrors as distributions publish them, through librepo: metalinks and mirrorlists, resumed
downloads, TLS client certificates; Apache httpd serves the mirrors on loopback."""

import gzip
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from testkit.distro import RELEASE_ID, publish_release
from testkit.reposync_admin import ApacheMirror, Certificates, serve_http


def rpm_names(rpms):
    return sorted(rpm.name for rpm in rpms)


@pytest.fixture
def top():
    """World-readable (Apache's children and the service user read what is here), removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="retrace-mirrors-", dir="/var/tmp"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory)


@pytest.fixture
def apache_mirrors(top):
    started = []

    def start(directory, tls=None):
        started.append(ApacheMirror(directory, top / f"apache-{len(started)}", tls))
        return started[-1]

    yield start
    for mirror in started:
        mirror.stop()


@pytest.fixture
def good(top, fixture_rpms):
    return publish_release(top / "good", "fedora", fixture_rpms)


@pytest.fixture
def tampered(top, fixture_rpms):
    """A mirror whose repomd.xml is not the one the metalink's hash is of (stale or altered)."""
    repository = publish_release(top / "tampered", "fedora", fixture_rpms)
    repomd = repository / "repodata" / "repomd.xml"
    repomd.write_text(repomd.read_text().replace("</repomd>", "<!-- altered --></repomd>"))
    return repository


def metalink(directory, repomd, *mirrors):
    """A metalink as Fedora's MirrorManager writes it: repomd.xml's size and hashes, then its mirrors."""
    data = repomd.read_bytes()
    urls = "\n".join(f'    <url protocol="http" type="http" location="XX" preference="{100 - rank}">'
                     f"{mirror}repodata/repomd.xml</url>" for rank, mirror in enumerate(mirrors))
    (directory / "metalink.xml").write_text(f"""<?xml version="1.0" encoding="utf-8"?>
<metalink version="3.0" xmlns="http://www.metalinker.org/" type="dynamic"
          xmlns:mm0="http://fedorahosted.org/mirrormanager">
 <files>
  <file name="repomd.xml">
   <mm0:timestamp>{int(repomd.stat().st_mtime)}</mm0:timestamp>
   <size>{len(data)}</size>
   <verification>
    <hash type="sha256">{hashlib.sha256(data).hexdigest()}</hash>
    <hash type="sha512">{hashlib.sha512(data).hexdigest()}</hash>
   </verification>
   <resources maxconnections="1">
{urls}
   </resources>
  </file>
 </files>
</metalink>
""")


@pytest.fixture
def lists(top):
    """An HTTP server for metalinks and mirrorlists: ``(directory, url)``."""
    directory = top / "lists"
    directory.mkdir()
    process, url = serve_http(directory)
    yield directory, url
    process.terminate()
    process.wait()


def test_a_metalinks_mirror_whose_repomd_does_not_match_its_hash_is_passed_over(
        admin, apache_mirrors, good, tampered, lists, fixture_rpms):
    """The tampered mirror's packages are corrupt too: only what the verified metadata vouches for is kept."""
    for package in (tampered / "Packages").glob("*.rpm"):
        data = bytearray(package.read_bytes())
        data[-100] ^= 0xFF
        package.write_bytes(bytes(data))
    first, second = apache_mirrors(tampered), apache_mirrors(good)
    directory, url = lists
    metalink(directory, good / "repodata" / "repomd.xml", first.url, second.url)
    repo = admin([f"metalink:{url}metalink.xml"])
    result = repo.sync()
    assert result.returncode == 0, result.stdout + result.stderr
    assert repo.packages() == rpm_names(fixture_rpms)
    for name in rpm_names(fixture_rpms):
        assert (repo.release_dir / "Packages" / name).read_bytes() == (good / "Packages" / name).read_bytes()
    assert ("/repodata/repomd.xml", 200, (tampered / "repodata" / "repomd.xml").stat().st_size) in first.requests(), \
        "the metalink's first mirror was asked first"
    assert {path for path, status, _ in second.requests() if status == 200} >= {
        f"/Packages/{name}" for name in rpm_names(fixture_rpms)}


def test_a_metalink_none_of_whose_mirrors_match_leaves_the_release_as_it_was(admin, apache_mirrors, good, tampered,
                                                                             lists):
    directory, url = lists
    metalink(directory, good / "repodata" / "repomd.xml", apache_mirrors(tampered).url)
    repo = admin([f"metalink:{url}metalink.xml"])
    result = repo.sync()
    assert result.returncode == 3
    assert f"mirror failed: cannot download {url}metalink.xml: " in result.stdout
    assert "no working mirror for everything" in result.stdout and repo.packages() == []


def test_a_mirrorlist_is_tried_in_order(admin, apache_mirrors, good, lists, fixture_rpms):
    directory, url = lists
    (directory / "mirrorlist").write_text(f"# fedora-41\nhttp://127.0.0.1:9/nothing-listens-here/\n"
                                          f"{apache_mirrors(good).url}\n")
    repo = admin([f"mirrorlist:{url}mirrorlist"])
    result = repo.sync()
    assert result.returncode == 0, result.stdout + result.stderr
    assert repo.packages() == rpm_names(fixture_rpms)


def partial_download(repo, name, data):
    """What a sync stopped mid-download leaves: the package's first bytes, owned by the service user and
    marked as librepo marks a download in progress (librepo resumes only a file so marked)."""
    partial = repo.repo_dir / f".reposync-{RELEASE_ID}.partial"
    partial.mkdir()
    (partial / f"{name}.part").write_bytes(data)
    os.setxattr(partial / f"{name}.part", "user.Librepo.DownloadInProgress", b"")
    owner = os.stat(repo.repo_dir)
    for path in (partial, partial / f"{name}.part"):
        os.chown(path, owner.st_uid, owner.st_gid)
    return partial


def test_a_download_a_stopped_sync_left_half_done_is_resumed(admin, apache_mirrors, good):
    mirror = apache_mirrors(good)
    package = sorted((good / "Packages").glob("*.rpm"), key=lambda path: path.stat().st_size)[-1]
    data = package.read_bytes()
    repo = admin([mirror.url])
    partial = partial_download(repo, package.name, data[:len(data) // 2])
    result = repo.sync()
    assert result.returncode == 0, result.stdout + result.stderr
    assert (repo.release_dir / "Packages" / package.name).read_bytes() == data
    assert (f"/Packages/{package.name}", 206, len(data) - len(data) // 2) in mirror.requests(), mirror.requests()
    assert not partial.exists(), "a complete sync leaves nothing to resume"


def test_a_resumed_download_whose_first_part_was_wrong_is_fetched_again_and_verified(admin, apache_mirrors, good):
    mirror = apache_mirrors(good)
    package = sorted((good / "Packages").glob("*.rpm"))[0]
    data = package.read_bytes()
    repo = admin([mirror.url])
    partial_download(repo, package.name, bytes(byte ^ 0xFF for byte in data[:len(data) // 2]))
    result = repo.sync()
    assert result.returncode == 0, result.stdout + result.stderr
    assert (repo.release_dir / "Packages" / package.name).read_bytes() == data
    requests = mirror.requests()
    assert (f"/Packages/{package.name}", 206, len(data) - len(data) // 2) in requests, requests
    assert (f"/Packages/{package.name}", 200, len(data)) in requests, requests


@pytest.fixture
def certificates(top):
    return Certificates(top / "tls")


def test_an_https_mirror_that_wants_a_client_certificate_gets_the_plugins(admin, apache_mirrors, good, certificates,
                                                                          fixture_rpms):
    mirror = apache_mirrors(good, certificates)
    repo = admin([mirror.url], plugin_lines=[f"sslclientcert = {certificates.client_cert}",
                                             f"sslclientkey = {certificates.client_key}",
                                             f"sslcacert = {certificates.ca}"])
    result = repo.sync()
    assert result.returncode == 0, result.stdout + result.stderr
    assert repo.packages() == rpm_names(fixture_rpms)


def test_without_the_client_certificate_the_mirror_fails_with_a_reason(admin, apache_mirrors, good, certificates):
    mirror = apache_mirrors(good, certificates)
    repo = admin([mirror.url], plugin_lines=[f"sslcacert = {certificates.ca}"])
    result = repo.sync()
    assert result.returncode == 3
    assert f"mirror failed: cannot download {mirror.url}: " in result.stdout
    assert "no working mirror for everything" in result.stdout


def test_tls_files_named_by_relative_path_are_refused(admin, good):
    repo = admin([str(good)], plugin_lines=["sslclientcert = entitlement/4242.pem"])
    result = repo.sync()
    assert result.returncode == 2, "a usage error, as for any unreadable plugin"
    assert "must name its TLS files by absolute path, not 'entitlement/4242.pem'" in result.stdout + result.stderr


def test_a_primary_whose_package_size_is_not_a_number_is_a_mirror_failure_not_a_crash(admin, apache_mirrors, good):
    """A hostile mirror can sign nothing, but it can serve metadata whose checksums match what it wrote."""
    repodata = good / "repodata"
    repomd = (repodata / "repomd.xml").read_text()
    primary = next(repodata.glob("*primary.xml.gz"))
    text = gzip.decompress(primary.read_bytes()).decode()
    text = re.sub(r'<size package="\d+"', '<size package="many"', text, count=1)
    packed = gzip.compress(text.encode())
    primary.write_bytes(packed)
    for old, new in ((r'(<data type="primary">.*?<checksum type="sha256">)[0-9a-f]+', hashlib.sha256(packed).hexdigest()),
                     (r'(<data type="primary">.*?<open-checksum type="sha256">)[0-9a-f]+',
                      hashlib.sha256(text.encode()).hexdigest()),
                     (r'(<data type="primary">.*?<size>)\d+', str(len(packed))),
                     (r'(<data type="primary">.*?<open-size>)\d+', str(len(text.encode())))):
        repomd = re.sub(old, lambda match, value=new: match[1] + value, repomd, count=1, flags=re.S)
    (repodata / "repomd.xml").write_text(repomd)
    repo = admin([apache_mirrors(good).url])
    result = repo.sync()
    assert result.returncode == 3, result.stdout + result.stderr
    assert "the primary metadata of http://127.0.0.1:" in result.stdout and "cannot be read" in result.stdout
    assert "Traceback" not in result.stderr and repo.packages() == []
