"""retrace-server-reposync against real mirrors on loopback: HTTP, rsync daemon, local directory."""

import fcntl
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from testkit.distro import RELEASE_ID, build_rpms, publish_release
from testkit.helpers import submit, wait_final
from testkit.reposync_admin import REPOSYNC, serve_http, serve_rsync
from testkit.server import write_config


@pytest.fixture(scope="module")
def newer_rpms(work_dir):
    """crasher and libcrash 1.1, the "update published upstream"."""
    return build_rpms(work_dir / "build-1.1", version="1.1")


@pytest.fixture
def mirror_dir(fixture_rpms):
    """What the mirror publishes: a createrepo_c repository, initially crasher 1.0.

    Under /var/tmp and world-readable: reposync reads a local mirror as the service user.
    """
    top = Path(tempfile.mkdtemp(prefix="retrace-mirror-", dir="/var/tmp"))
    top.chmod(0o755)
    yield publish_release(top, "fedora", fixture_rpms)
    shutil.rmtree(top)


@pytest.fixture
def http_mirror(mirror_dir):
    process, url = serve_http(mirror_dir)
    yield url
    process.terminate()
    process.wait()


def owner(path):
    info = os.stat(path)
    return info.st_uid, info.st_gid


def rpm_names(rpms):
    return sorted(rpm.name for rpm in rpms)


def test_first_sync_fetches_everything_and_writes_metadata(admin, http_mirror, fixture_rpms):
    repo = admin([http_mirror])
    result = repo.sync()
    assert result.returncode == 0, result.stdout + result.stderr
    assert repo.packages() == rpm_names(fixture_rpms)
    assert "fedora-41-x86_64: 4 packages added" in result.stdout and "metadata updated" in result.stdout
    assert len(repo.indexed_builds()) == 4
    assert (repo.root / "cache" / "index" / f"{RELEASE_ID}.sqlite").is_file(), "index prebuilt for the worker"
    assert os.stat(repo.release_dir).st_uid == os.stat(repo.repo_dir).st_uid, "runs as the service user"


def test_second_sync_fetches_nothing_and_keeps_the_metadata(admin, http_mirror):
    repo = admin([http_mirror])
    repo.sync()
    repomd = (repo.release_dir / "repodata" / "repomd.xml").read_bytes()
    result = repo.sync()
    assert result.returncode == 0
    assert "0 packages added" in result.stdout and "metadata unchanged" in result.stdout
    assert (repo.release_dir / "repodata" / "repomd.xml").read_bytes() == repomd


def test_new_upstream_version_appears_and_old_ones_are_kept(admin, http_mirror, mirror_dir, fixture_rpms, newer_rpms):
    repo = admin([http_mirror])
    repo.sync()
    publish_release(mirror_dir.parent, mirror_dir.name, newer_rpms)
    result = repo.sync()
    assert result.returncode == 0, result.stdout
    assert repo.packages() == sorted(rpm_names(fixture_rpms) + rpm_names(newer_rpms))
    assert "crasher-1.1-1.fc41.x86_64" in repo.indexed_builds() and "crasher-1.0-1.fc41.x86_64" in repo.indexed_builds()


def test_corrupt_download_is_rejected_and_the_repository_stays_usable(admin, http_mirror, mirror_dir, newer_rpms):
    repo = admin([http_mirror])
    repo.sync()
    before = repo.indexed_builds()
    publish_release(mirror_dir.parent, mirror_dir.name, newer_rpms)
    corrupt = mirror_dir / "Packages" / "crasher-1.1-1.fc41.x86_64.rpm"
    data = bytearray(corrupt.read_bytes())
    data[-100] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    result = repo.sync()
    assert result.returncode == 3
    assert "crasher-1.1-1.fc41.x86_64.rpm is corrupt: its sha256 does not match" in result.stdout
    assert "crasher-1.1-1.fc41.x86_64.rpm" not in repo.packages()
    assert not list(repo.root.glob("repos/.reposync-*/*.part")), "no partial download left behind"
    assert set(before) <= set(repo.indexed_builds())


def test_failing_mirror_is_reported_and_the_next_one_used(admin, http_mirror, fixture_rpms):
    repo = admin(["http://127.0.0.1:9/nothing-listens-here/", http_mirror])
    result = repo.sync()
    assert result.returncode == 0, result.stdout
    assert "mirror failed: cannot download http://127.0.0.1:9/" in result.stdout
    assert repo.packages() == rpm_names(fixture_rpms)


def test_no_working_mirror_exits_3_and_names_the_repository(admin):
    result = admin(["http://127.0.0.1:9/nothing/"]).sync()
    assert result.returncode == 3
    assert "no working mirror for: everything" in result.stdout


def test_a_sync_already_running_makes_the_second_stop(admin, http_mirror):
    repo = admin([http_mirror])
    with open(repo.repo_dir / f".reposync-{RELEASE_ID}.lock", "w") as held:
        os.chown(held.name, *owner(repo.repo_dir))
        fcntl.flock(held, fcntl.LOCK_EX)
        result = repo.sync()
    assert result.returncode == 1
    assert "another reposync of fedora-41-x86_64 is running" in result.stderr


def test_two_syncs_at_once_leave_a_complete_repository(admin, http_mirror, fixture_rpms):
    repo = admin([http_mirror])
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda _: repo.sync(), range(2)))
    assert sorted(r.returncode for r in results)[0] == 0 and {r.returncode for r in results} <= {0, 1}
    assert repo.packages() == rpm_names(fixture_rpms) and len(repo.indexed_builds()) == 4


def test_dry_run_lists_what_it_would_fetch_and_changes_nothing(admin, http_mirror):
    repo = admin([http_mirror])
    result = repo.sync("--dry-run", "-v")
    assert result.returncode == 0
    assert "would download crasher-1.0-1.fc41.x86_64.rpm" in result.stdout
    assert not repo.release_dir.exists()


@pytest.fixture
def rsync_mirror(mirror_dir):
    process, url = serve_rsync(mirror_dir)
    yield url + "Packages/*.rpm"
    process.terminate()
    process.wait()


def test_rsync_daemon_mirror_is_synced(admin, rsync_mirror, fixture_rpms):
    repo = admin([rsync_mirror])
    result = repo.sync()
    assert result.returncode == 0, result.stdout + result.stderr
    assert repo.packages() == rpm_names(fixture_rpms) and len(repo.indexed_builds()) == 4
    assert "0 packages added" in repo.sync().stdout


def test_local_directory_mirror_is_synced(admin, mirror_dir, fixture_rpms):
    repo = admin([str(mirror_dir)])
    assert repo.sync().returncode == 0
    assert repo.packages() == rpm_names(fixture_rpms)


def test_unreadable_local_mirror_is_a_failed_mirror_not_a_crash(admin, tmp_path):
    private = tmp_path / "private-mirror"
    private.mkdir(mode=0o700)
    result = admin([str(private)]).sync()
    assert result.returncode == 3 and "Traceback" not in result.stderr
    assert "cannot read the local mirror" in result.stdout


def test_all_syncs_every_configured_release_and_discover_lists_versions(admin, mirror_dir):
    versions = mirror_dir.parent / "by-version"
    for version in ("40", "41", "rawhide"):
        shutil.copytree(mirror_dir, versions / version / "x86_64")
    repo = admin([f"{versions}/$VER/$ARCH/"], SyncReleases="fedora-40-x86_64 fedora-41-x86_64")
    result = repo.reposync("--all")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (repo.repo_dir / "fedora-40-x86_64" / "repodata").is_dir() and repo.release_dir.joinpath("repodata").is_dir()
    assert repo.reposync("--discover", "fedora").stdout.split() == ["40", "41", "rawhide"]


def test_all_with_no_release_configured_is_a_quiet_no_op_and_a_bad_id_is_named(admin, mirror_dir):
    """The shipped cron file runs --all every 6 hours, also before an admin has chosen releases."""
    quiet = admin([str(mirror_dir)], SyncReleases="").reposync("--all")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    bad = admin([str(mirror_dir)], SyncReleases="fedora-41-x86_64 fedora41").reposync("--all")
    assert bad.returncode == 2 and "SyncReleases must list release ids such as fedora-41-x86_64" in bad.stderr


def test_rawhide_keeps_only_the_newest_versions(admin, mirror_dir, newer_rpms):
    publish_release(mirror_dir.parent, mirror_dir.name, newer_rpms)
    repo = admin([str(mirror_dir)], KeepRawhideLatest="1")
    result = repo.reposync("fedora", "rawhide", "x86_64")
    assert result.returncode == 0, result.stdout + result.stderr
    kept = sorted(p.name for p in (repo.repo_dir / "fedora-rawhide-x86_64" / "Packages").iterdir())
    assert kept == rpm_names(newer_rpms)


def test_synced_release_is_served_and_retraces(start_server, http_mirror, problem_dir):
    server = start_server(repository=False)
    plugins = server.root / "plugins"
    plugins.mkdir()
    (plugins / "fixture.conf").write_text(f"[reposync fedora]\neverything = {http_mirror}\n")
    config = write_config(server.root, PluginDir=plugins)
    assert RELEASE_ID not in server.get("/settings").text
    sync = subprocess.run([str(REPOSYNC), "--config", str(config), "fedora", "41", "x86_64"], capture_output=True, text=True)
    assert sync.returncode == 0, sync.stdout + sync.stderr
    assert RELEASE_ID in server.get("/settings").text
    task_id, auth = submit(server, problem_dir)
    assert wait_final(server, task_id, auth).headers["X-Task-Status"] == "FINISHED_SUCCESS"


def test_createrepo_update_mode_reuses_the_old_metadata(admin, http_mirror, mirror_dir, newer_rpms):
    repo = admin([http_mirror], UseCreaterepoUpdate="1")
    repo.sync()
    publish_release(mirror_dir.parent, mirror_dir.name, newer_rpms)
    result = repo.sync()
    assert result.returncode == 0, result.stdout
    assert "metadata written by createrepo_c --update" in result.stdout
    assert len(repo.indexed_builds()) == 8


def test_repo_dir_the_service_user_cannot_write_is_refused_with_advice(admin, http_mirror):
    repo = admin([http_mirror])
    os.chown(repo.repo_dir, 0, 0)
    result = repo.sync()
    assert result.returncode == 2
    assert "is not writable by this user" in result.stderr and "chown it to the service user" in result.stderr
