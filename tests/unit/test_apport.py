"""Ubuntu apport reports as the client reads them (the report written as apport writes it)."""

import shutil
from pathlib import Path

import pytest

from retrace_server.client.apport import ApportError, package_name_version, problem_dir_from_apport
from testkit.debian import apport_report


def test_a_report_becomes_a_problem_directory_with_the_core_decoded(tmp_path):
    core = tmp_path / "core"
    core.write_bytes(bytes(range(256)) * 40000)  # ~10 MiB: several compressed chunks
    report = apport_report(tmp_path / "_usr_bin_strings.0.crash", core, "/usr/bin/x86_64-linux-gnu-strings",
                           "binutils-x86-64-linux-gnu 2.42-4ubuntu2 [origin: Ubuntu]", "Ubuntu 24.04", chunk=1 << 20)
    directory, fields = problem_dir_from_apport(report)
    assert (directory / "coredump").read_bytes() == core.read_bytes()
    assert (directory / "executable").read_text() == "/usr/bin/x86_64-linux-gnu-strings"
    assert (directory / "package").read_text() == "binutils-x86-64-linux-gnu-2.42-4ubuntu2"
    assert (directory / "os_release").read_text() == "Ubuntu 24.04\n"
    assert (directory / "architecture").read_text() == "x86_64" and fields["DistroRelease"] == "Ubuntu 24.04"
    shutil.rmtree(directory)


@pytest.mark.parametrize("text, problem", [
    (b"ProblemType: Crash\nExecutablePath: /bin/x\n", "it has no CoreDump"),
    (b"ProblemType: Crash\nCoreDump: raw\n", "its CoreDump is not base64"),
    (b"ProblemType: Crash\nCoreDump: base64\n !!!not base64!!!\n", "its CoreDump is damaged"),
])
def test_a_report_without_a_usable_core_is_refused_with_a_sentence(tmp_path, text, problem):
    (tmp_path / "x.crash").write_bytes(text)
    before = set(Path("/var/tmp").glob("retrace-client-apport-*"))
    with pytest.raises(ApportError, match=problem):
        problem_dir_from_apport(tmp_path / "x.crash")
    assert set(Path("/var/tmp").glob("retrace-client-apport-*")) == before, "nothing is left behind"


def test_the_package_field_gives_name_and_version():
    assert package_name_version("bash 5.2.21-2ubuntu4") == "bash-5.2.21-2ubuntu4"
    with pytest.raises(ApportError, match="has no version"):
        package_name_version("bash")
