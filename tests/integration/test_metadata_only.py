"""An RPM release kept as metadata only: reposync copies each repository's repomd.xml, primary and
filelists; the worker downloads the packages a crash needs from that repository's mirror, holds each to
the checksum its metadata lists and to the release's signing key, and unpacks it into the cache.

The mirror is Fedora-shaped: binaries in one repository, their debuginfo in another, served over
loopback HTTP.  The reference is the same crash retraced from a full mirror of the same packages.
"""

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from testkit.distro import RELEASE_ID, is_debuginfo, publish_release
from testkit.helpers import crashing_thread, outcome, submit, wait_final
from testkit.reposync_admin import REPOSYNC, serve_http
from testkit.signing import OTHER_KEY
from tests.integration.test_signatures import resigned

CRASHER_DEBUGINFO = "crasher-debuginfo-1.0-1.fc41.x86_64"


@pytest.fixture
def split_mirror(fixture_rpms):
    """``(top directory, URL)`` of a mirror with repositories ``everything/`` and ``debug/``."""
    top = Path(tempfile.mkdtemp(prefix="retrace-mirror-", dir="/var/tmp"))
    top.chmod(0o755)
    publish_release(top, "everything", [rpm for rpm in fixture_rpms if not is_debuginfo(rpm)])
    publish_release(top, "debug", [rpm for rpm in fixture_rpms if is_debuginfo(rpm)])
    process, url = serve_http(top)
    yield top, url
    process.terminate()
    process.wait()
    shutil.rmtree(top)


def synced(start_server, url, *arguments, **settings):
    """A server with no release until ``retrace-server-reposync fedora 41 x86_64 --metadata-only`` ran."""
    server = start_server(repository=False, extra_ini=(
        f"[reposync fedora]\nfedora = {url}everything/\nfedora-debuginfo = {url}debug/\n"), **settings)
    return server, reposync(server, "--metadata-only", *arguments)


def reposync(server, *arguments):
    return subprocess.run([str(REPOSYNC), "--config", str(server.config_path), "fedora", "41", "x86_64", *arguments],
                          capture_output=True, text=True, timeout=300)


def retrace(server, problem_dir):
    task_id, auth = submit(server, problem_dir)
    status = wait_final(server, task_id, auth)
    log = server.get(f"/{task_id}/log", headers=auth).text
    succeeded = status.headers["X-Task-Status"] == "FINISHED_SUCCESS"
    return status, log, server.get(f"/{task_id}/backtrace", headers=auth).text if succeeded else ""


def test_a_metadata_only_release_retraces_with_the_packages_its_mirrors_serve(
        start_server, server, split_mirror, problem_dir):
    _, url = split_mirror
    metadata_only, sync = synced(start_server, url)
    assert sync.returncode == 0, sync.stdout + sync.stderr
    release_dir = metadata_only.root / "repos" / RELEASE_ID
    assert sorted(path.name for path in release_dir.iterdir()) == ["repositories"]
    for name, served in (("fedora", "everything/"), ("fedora-debuginfo", "debug/")):
        assert (release_dir / "repositories" / name / "mirror").read_text() == f"{url}{served}\n"
        assert not list((release_dir / "repositories" / name).rglob("*.rpm"))
    status, log, backtrace = retrace(metadata_only, problem_dir)
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
    assert crashing_thread(backtrace) == crashing_thread(retrace(server, problem_dir)[2])
    assert re.search(rf"Downloaded 4 of 4 packages \([\d.]+ MiB\) from {url}debug/, {url}everything/", log), log
    assert "Signatures of 4 packages verified" in log
    assert not list((metadata_only.cache_dir / "downloads").iterdir()), "downloads are unpacked, then removed"
    again = reposync(metadata_only, "--metadata-only")
    assert again.returncode == 0 and again.stdout.count("metadata unchanged") == 2, again.stdout


def test_a_package_whose_bytes_differ_from_its_repositorys_checksum_is_refused_on_download(
        start_server, split_mirror, problem_dir):
    top, url = split_mirror
    server, sync = synced(start_server, url)
    assert sync.returncode == 0, sync.stdout + sync.stderr
    served = next((top / "debug" / "Packages").glob(f"{CRASHER_DEBUGINFO}.rpm"))
    served.write_bytes(served.read_bytes()[:-1] + b"!")  # same size, other bytes
    status, _, _ = retrace(server, problem_dir)
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert re.search(rf"mirror \S+ served a different file than the index lists for {CRASHER_DEBUGINFO} \(size or "
                     r"SHA256 differ\); it was not used", outcome(status)), outcome(status)


def test_a_downloaded_package_signed_by_an_untrusted_key_is_refused_naming_it(
        start_server, split_mirror, fixture_rpms, problem_dir, tmp_path):
    """The mirror's own metadata lists the stranger's package: only the release's key catches it."""
    top, url = split_mirror
    shutil.rmtree(top / "debug")
    publish_release(top, "debug", resigned([rpm for rpm in fixture_rpms if is_debuginfo(rpm)], (CRASHER_DEBUGINFO,),
                                           OTHER_KEY, tmp_path / "resigned"))
    server, sync = synced(start_server, url)
    assert sync.returncode == 0, sync.stdout + sync.stderr
    status, _, _ = retrace(server, problem_dir)
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert (f"{CRASHER_DEBUGINFO} is refused: it is not intact and signed by a key configured for {RELEASE_ID}"
            in outcome(status)), outcome(status)
    assert not list((server.cache_dir / "rpms").glob("*/root")), "nothing of any package is unpacked"


def test_a_repository_no_mirror_serves_keeps_its_last_metadata_and_the_sync_exits_3(start_server, split_mirror):
    top, url = split_mirror
    server, sync = synced(start_server, url)
    assert sync.returncode == 0, sync.stdout + sync.stderr
    shutil.rmtree(top / "debug")
    again = reposync(server, "--metadata-only")
    assert again.returncode == 3, again.stdout + again.stderr
    assert "no working mirror for fedora-debuginfo" in again.stdout
    kept = server.root / "repos" / RELEASE_ID / "repositories" / "fedora-debuginfo" / "repodata" / "repomd.xml"
    assert kept.is_file()


def test_a_repomd_that_places_its_metadata_outside_repodata_is_not_used(start_server, split_mirror):
    top, url = split_mirror
    repomd = top / "debug" / "repodata" / "repomd.xml"
    repomd.write_text(re.sub(r'href="repodata/([^"]*primary[^"]*)"', r'href="../../\1"', repomd.read_text()))
    server, sync = synced(start_server, url)
    assert sync.returncode == 3, sync.stdout + sync.stderr
    assert re.search(r"places its primary metadata at '\.\./\.\./\S*primary\S*', not in repodata/", sync.stdout)
    assert not (server.root / "repos" / RELEASE_ID / "repositories" / "fedora-debuginfo").exists()


def test_chroot_on_a_metadata_only_release_says_what_to_change(start_server, split_mirror, problem_dir):
    _, url = split_mirror
    server, sync = synced(start_server, url, RetraceEnvironment="chroot")
    assert sync.returncode == 0, sync.stdout + sync.stderr
    status, _, _ = retrace(server, problem_dir)
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert ("RetraceEnvironment = chroot installs gdb from a full RPM mirror of fedora-41-x86_64, and this server "
            "serves that release from its metadata only") in outcome(status), outcome(status)


def test_a_full_mirror_is_not_turned_into_metadata_only_silently(start_server, split_mirror):
    _, url = split_mirror
    server = start_server(extra_ini=f"[reposync fedora]\nfedora = {url}everything/\n")
    sync = reposync(server, "--metadata-only")
    assert sync.returncode == 2, "a release this command cannot work with: exit status 2, as every usage error"
    assert "fedora-41-x86_64 is a full mirror here; remove RepoDir/fedora-41-x86_64 first" in sync.stderr
