import io
import os
import re
import shutil
import tarfile

import pytest

from retrace_server.client import cli, crash
from retrace_server.client.cli import exploitable_rating
from retrace_server.client.crash import release_id
from retrace_server.client.progress import Reporter, human_size
from retrace_server.client.server import ServerRefused, Settings
from retrace_server.packaging.release import parse_os_release

FEDORA_OS_RELEASE = """NAME="Fedora Linux"
VERSION="41 (Workstation Edition)"
ID=fedora
VERSION_ID=41
REDHAT_BUGZILLA_PRODUCT="Fedora"
REDHAT_BUGZILLA_PRODUCT_VERSION=41
"""


def test_os_release_values_lose_their_quotes():
    fields = parse_os_release(FEDORA_OS_RELEASE + "PRETTY_NAME='Fedora Linux 41'\n")
    assert fields["NAME"] == "Fedora Linux" and fields["PRETTY_NAME"] == "Fedora Linux 41"


@pytest.mark.parametrize("os_info, expected", [
    (FEDORA_OS_RELEASE, "fedora-41-x86_64"),
    (FEDORA_OS_RELEASE.replace("PRODUCT_VERSION=41", "PRODUCT_VERSION=rawhide"), "fedora-rawhide-x86_64"),
    ('ID="rhel"\nVERSION_ID="9.4"\n', "rhel-9-x86_64"),
    ('ID="centos"\nVERSION_ID="9"\n', "centos-9-x86_64"),
    ('ID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\n', "debian-12-x86_64"),
    ('ID=ubuntu\nVERSION_ID="24.04"\n', "ubuntu-24.04-x86_64"),
])
def test_release_id_comes_from_os_release_fields(os_info, expected):
    assert release_id(os_info, None, "x86_64") == expected


def test_release_id_falls_back_to_the_release_line():
    assert release_id(None, "Fedora release 41 (Forty One)", "aarch64") == "fedora-41-aarch64"
    assert release_id(None, "something else", "x86_64") is None


def test_settings_parse_upstream_lines_with_any_key_case_and_unknown_keys():
    settings = Settings.parse(
        "running_tasks 2\nMAX_RUNNING_TASKS 2\nmax_packed_size 50\nmax_unpacked_size 1024\n"
        "supported_formats application/x-xz-compressed-tar application/x-tar\n"
        "supported_releases fedora-41-x86_64\nsomething_new 7"
    )
    assert settings.fully_occupied
    assert settings.supported_releases == ("fedora-41-x86_64",)


def test_settings_with_garbage_numbers_are_refused():
    with pytest.raises(ServerRefused, match="cannot read"):
        Settings.parse("running_tasks many")


def test_exploitable_rating_is_the_number_after_the_last_colon():
    assert exploitable_rating("Signal: SIGSEGV\nExploitable rating (0-8 scale): 6\n") == 6
    assert exploitable_rating(None) is None and exploitable_rating("no rating") is None


def test_sizes_read_like_a_person_writes_them():
    assert (human_size(512), human_size(1536), human_size(5 * 1024 * 1024)) == ("512 bytes", "1.5 KiB", "5.0 MiB")


def test_without_a_terminal_status_lines_appear_only_when_they_change():
    stream = io.StringIO()
    reporter = Reporter(stream, live=False)
    reporter.status("Generating backtrace", True, 1)
    reporter.status("Generating backtrace", False, 2)
    reporter.upload_progress(10, 100, 0)
    assert stream.getvalue() == "Generating backtrace\n"


def test_on_a_terminal_progress_redraws_one_line_then_ends_it():
    stream = io.StringIO()
    reporter = Reporter(stream, live=True)
    reporter.upload_progress(50, 100, 0)
    reporter.say("Upload successful")
    assert stream.getvalue().startswith("\r\033[KUploading [###############               ]  50% 50 bytes of 100 bytes")
    assert stream.getvalue().endswith("\nUpload successful\n")


class _Args:
    yes = False


def test_large_upload_asks_on_a_terminal_and_a_no_cancels(monkeypatch):
    from retrace_server.client.cli import ASK_ABOVE_BYTES, LocalError, confirm_large_upload

    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    asked = []
    monkeypatch.setattr("builtins.input", lambda prompt: asked.append(prompt) or "n")
    with pytest.raises(LocalError, match="upload cancelled"):
        confirm_large_upload(ASK_ABOVE_BYTES + 1, _Args())
    assert asked and "Continue?" in asked[0]


def test_small_uploads_yes_flag_and_no_terminal_never_ask(monkeypatch):
    from retrace_server.client.cli import ASK_ABOVE_BYTES, confirm_large_upload

    monkeypatch.setattr("builtins.input", lambda prompt: pytest.fail("must not ask"))
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    confirm_large_upload(ASK_ABOVE_BYTES, _Args())
    yes = _Args()
    yes.yes = True
    confirm_large_upload(ASK_ABOVE_BYTES + 1, yes)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    confirm_large_upload(ASK_ABOVE_BYTES + 1, _Args())


@pytest.mark.parametrize(("value", "said"), [("abc", "must be a number of seconds, not 'abc'"),
                                             ("-1", "must be between 0 and 3600 seconds, not -1")])
def test_a_bad_abrt_status_delay_is_a_usage_error_naming_the_variable(monkeypatch, capsys, value, said):
    monkeypatch.setenv("ABRT_STATUS_DELAY", value)
    with pytest.raises(SystemExit) as ended:
        cli.main(["status", "--uri", "https://127.0.0.1:9", "-t", "1", "-p", "x"])
    assert ended.value.code == 2
    assert f"ABRT_STATUS_DELAY: {said}" in capsys.readouterr().err


def test_the_status_delay_option_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("ABRT_STATUS_DELAY", "abc")
    assert cli.build_parser().parse_args(["status", "-l", "0.5"]).status_delay == 0.5


def test_on_a_merged_usr_system_dpkg_is_asked_for_both_spellings(monkeypatch, tmp_path):
    """dpkg's database names /bin/sleep; the core and the user say /usr/bin/sleep."""
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "bin").symlink_to("usr/bin")
    assert crash._merged_usr_spellings("/usr/bin/sleep", root=str(tmp_path)) == ["/usr/bin/sleep", "/bin/sleep"]
    assert crash._merged_usr_spellings("/bin/sleep", root=str(tmp_path)) == ["/bin/sleep", "/usr/bin/sleep"]
    (tmp_path / "bin").unlink()
    (tmp_path / "bin").mkdir()
    assert crash._merged_usr_spellings("/usr/bin/sleep", root=str(tmp_path)) == ["/usr/bin/sleep"]
    assert crash._merged_usr_spellings("/opt/x/bin/y", root=str(tmp_path)) == ["/opt/x/bin/y"]


def test_this_machines_own_program_is_found_in_dpkgs_database_by_the_path_the_kernel_writes():
    """A stock Debian 12 (this machine): /bin -> usr/bin, and coreutils owns /bin/sleep in dpkg's database."""
    if not (shutil.which("dpkg-query") and os.path.islink("/bin")):
        pytest.skip("needs a merged-/usr Debian system")
    assert crash._owning_package("/usr/bin/sleep").startswith("coreutils-")


@pytest.mark.parametrize("xz_installed", [True, False])
def test_the_archive_is_tar_xz_with_or_without_the_xz_program(monkeypatch, tmp_path, xz_installed):
    """A minimal system (Debian's minbase) has no xz: the client compresses with Python's lzma instead."""
    (tmp_path / "coredump").write_bytes(b"\x7fELF" + bytes(100_000))
    (tmp_path / "executable").write_text("/usr/bin/sleep")
    real_which = shutil.which
    monkeypatch.setattr(cli.shutil, "which", lambda name: real_which(name) if xz_installed or name != "xz" else None)
    crash_data = crash.Crash(tmp_path, ["coredump", "executable"], "coreutils-9.1-1", "x86_64", "debian-12-x86_64")
    with cli.crash_archive(crash_data) as (archive, size):
        data = archive.read()
    assert size == len(data) and data.startswith(b"\xfd7zXZ")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:xz") as unpacked:
        assert sorted(unpacked.getnames()) == ["coredump", "executable"]
        assert unpacked.extractfile("executable").read() == b"/usr/bin/sleep"


def test_the_archive_sends_the_core_after_the_files_naming_its_release(tmp_path):
    """The server unpacks a core's packages while the core uploads, once it knows the release."""
    (tmp_path / "coredump").write_bytes(b"\x7fELF" + bytes(1000))
    for name, text in (("executable", "/usr/bin/sleep"), ("package", "coreutils-9.1-1"), ("os_release", "Debian 12")):
        (tmp_path / name).write_text(text)
    crash_data = crash.Crash(tmp_path, ["coredump", "executable", "package", "os_release"], "coreutils-9.1-1",
                             "x86_64", "debian-12-x86_64")
    with cli.crash_archive(crash_data) as (archive, _size), tarfile.open(fileobj=archive, mode="r:xz") as unpacked:
        assert unpacked.getnames() == ["executable", "package", "os_release", "coredump"]


def test_the_dso_list_names_each_mapped_file_with_the_package_owning_it_here(tmp_path):
    """As abrt-action-list-dsos writes it: owned files with their package, the others alone."""
    from testkit.synthetic_core import synthetic_core

    if not (shutil.which("dpkg-query") and os.path.islink("/bin")):
        pytest.skip("needs a merged-/usr Debian system")
    core = tmp_path / "core"
    core.write_bytes(synthetic_core(paths=("/usr/bin/sleep", "/opt/built-here/prog")))
    lines = crash.dso_list(core).splitlines()
    assert lines[0] == "/opt/built-here/prog"
    assert re.fullmatch(r"/usr/bin/sleep coreutils-[^ ]+\.amd64", lines[1]), lines
    owners = crash.owning_packages(["/usr/bin/sleep", "/bin/sleep", "/nonexistent"], with_arch=False)
    assert owners["/usr/bin/sleep"] == owners["/bin/sleep"] == crash._owning_package("/usr/bin/sleep")
    assert "/nonexistent" not in owners


def test_the_client_sleeps_only_after_a_poll_the_server_did_not_hold(monkeypatch):
    """Long polls (X-Wait) follow each other at once; after an answer the server did not hold (upstream's)
    the client waits the status delay, as ABRT did."""
    from retrace_server.client.server import Status

    answers = iter([Status("PENDING", "Analyzing crash data", waited=True),
                    Status("PENDING", "Generating backtrace", waited=False),
                    Status("FINISHED_SUCCESS", "Retrace job finished successfully", waited=True)])
    asked, slept = [], []

    class Server:
        def status(self, task_id, password, wait=0):
            asked.append(wait)
            return next(answers)

    monkeypatch.setattr(cli.time, "sleep", slept.append)
    status = cli.wait_until_finished(Server(), "1", "p", 7.0, Reporter(io.StringIO(), live=False))
    assert status.finished and asked == [cli.LONG_POLL_SECONDS] * 3 and slept == [7.0]


def test_a_mapped_file_that_is_another_build_here_than_in_the_core_is_named():
    """What a package update between the crash and the report leaves: same path, another build-id."""
    from retrace_server.client.unwind import changed_files
    from retrace_server.elf import CoreInfo, Module, file_build_id

    here = file_build_id("/usr/bin/true")
    core = CoreInfo("x86_64", (Module("/usr/bin/true", 0x1000, here), Module("/usr/bin/env", 0x2000, "ab" * 20),
                               Module("/usr/bin/cat", 0x3000, None), Module("/gone/lib.so", 0x4000, "cd" * 20)),
                    11, None)
    assert changed_files(core) == ["/usr/bin/env"], "the same build, no build-id in the core, a file gone: not named"
