"""Package signatures through the real server and the real reposync: rpm refuses what the release's key did not sign."""

import shutil
import subprocess

import pytest

from testkit.distro import RELEASE_ID, build_rpms, publish_release
from testkit.helpers import outcome, submit, wait_final
from testkit.reposync_admin import serve_http
from testkit.signing import OTHER_KEY

CRASHER = "crasher-1.0-1.fc41.x86_64"


def resigned(rpms, names, key, directory):
    """Copies of ``rpms``; those whose file name starts with one of ``names`` signed by ``key`` instead."""
    directory.mkdir(parents=True, exist_ok=True)
    copies = []
    for rpm in rpms:
        copy = directory / rpm.name
        shutil.copy(rpm, copy)
        if rpm.name.startswith(names):
            subprocess.run(["rpmsign", "--delsign", str(copy)], check=True, capture_output=True)
            key.sign([copy])
        copies.append(copy)
    return copies


@pytest.fixture(scope="module")
def stranger_release(work_dir, fixture_rpms):
    """fedora-41-x86_64 whose crasher package was signed by a key the server does not trust."""
    rpms = resigned(fixture_rpms, (CRASHER,), OTHER_KEY, work_dir / "resigned")
    return publish_release(work_dir / "repos-stranger", RELEASE_ID, rpms)


def test_a_package_signed_by_an_untrusted_key_fails_the_task_naming_it(start_server, stranger_release, problem_dir):
    server = start_server(repository=stranger_release)
    task_id, auth = submit(server, problem_dir)
    status = wait_final(server, task_id, auth)
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert f"{CRASHER} is refused: it is not intact and signed by a key configured for {RELEASE_ID}" in outcome(status)
    assert "NOKEY" in outcome(status)
    assert not list((server.cache_dir / "rpms").glob("*/root/usr/bin/crasher")), "nothing unverified was unpacked"


def test_with_checks_off_the_same_release_retraces_and_the_log_says_unchecked(start_server, stranger_release,
                                                                              problem_dir):
    server = start_server(repository=stranger_release, RequireGPGCheck="0")
    task_id, auth = submit(server, problem_dir)
    assert wait_final(server, task_id, auth).headers["X-Task-Status"] == "FINISHED_SUCCESS"
    assert "Package signatures are not checked (RequireGPGCheck = 0)" in server.get(f"/{task_id}/log",
                                                                                     headers=auth).text


def test_a_release_without_a_configured_key_fails_saying_what_to_configure(start_server, problem_dir):
    server = start_server(extra_ini="[gpgkeys]\n")
    task_id, auth = submit(server, problem_dir)
    status = wait_final(server, task_id, auth)
    assert f"RequireGPGCheck = 1, but no signing key is configured for {RELEASE_ID}" in outcome(status)


def test_reposync_refuses_packages_an_untrusted_key_signed_and_publishes_the_rest(admin, work_dir, tmp_path):
    newer = build_rpms(work_dir / "build-1.1-stranger", version="1.1")
    mirror = publish_release(tmp_path / "mirror", "fedora", resigned(newer, ("libcrash",), OTHER_KEY,
                                                                      tmp_path / "signed"))
    process, url = serve_http(mirror)
    try:
        repo = admin([url])
        result = repo.sync()
    finally:
        process.terminate()
        process.wait()
    assert result.returncode == 5, result.stdout + result.stderr
    assert "2 refused (signature): libcrash-1.1-1.fc41.x86_64.rpm, libcrash-debuginfo-1.1-1.fc41.x86_64.rpm" \
        in result.stdout
    assert "refused libcrash-1.1-1.fc41.x86_64.rpm: libcrash-1.1-1.fc41.x86_64.rpm is refused" in result.stdout
    assert repo.packages() == ["crasher-1.1-1.fc41.x86_64.rpm", "crasher-debuginfo-1.1-1.fc41.x86_64.rpm"]
    assert repo.indexed_builds() == ["crasher-1.1-1.fc41.x86_64", "crasher-debuginfo-1.1-1.fc41.x86_64"]
