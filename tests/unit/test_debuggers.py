"""Which gdb reads which cores: asked of the real gdb and gdb-multiarch on this host."""

import shutil

import pytest

from retrace_server.analysis.debuggers import NoDebugger, gdb_for, reads, runs_natively, served_architectures
from retrace_server.arch import HOST_ARCH
from retrace_server.config import parse_config

needs_multiarch = pytest.mark.skipif(shutil.which("gdb-multiarch") is None, reason="gdb-multiarch is not installed")


def test_the_hosts_gdb_reads_the_hosts_cores():
    assert gdb_for(HOST_ARCH) == shutil.which("gdb")


@needs_multiarch
@pytest.mark.parametrize("arch", ["aarch64", "s390x", "ppc64le", "riscv64", "armhfp"])
def test_foreign_cores_get_gdb_multiarch_when_the_hosts_gdb_cannot_read_them(arch):
    if reads(shutil.which("gdb"), arch):
        pytest.skip(f"this host's gdb reads {arch} itself")
    assert gdb_for(arch) == shutil.which("gdb-multiarch")


def test_a_configured_debugger_that_cannot_read_the_architecture_is_refused_with_advice():
    if reads(shutil.which("gdb"), "s390x"):
        pytest.skip("this host's gdb reads s390x")
    with pytest.raises(NoDebugger, match="this server has no debugger for s390x cores: the debugger its "
                                         "\\[debuggers\\] section names for s390x cannot read them; the "
                                         "administrator can install gdb-multiarch"):
        gdb_for("s390x", "gdb")


def test_an_architecture_gdb_has_no_name_for_is_refused():
    with pytest.raises(NoDebugger, match="no debugger for sparc64 cores"):
        gdb_for("sparc64")


def test_a_missing_program_reads_nothing():
    assert not reads("/nonexistent/gdb", "x86_64")


def test_only_the_hosts_own_and_compatible_architectures_run_natively():
    assert runs_natively(HOST_ARCH)
    assert not runs_natively("s390x" if HOST_ARCH != "s390x" else "aarch64")


def test_the_debuggers_section_names_a_gdb_per_architecture():
    config, _ = parse_config("[retrace]\n[debuggers]\naarch64 = /opt/gdb/bin/gdb\n", "test.conf")
    assert config.debugger("aarch64") == "/opt/gdb/bin/gdb" and config.debugger("s390x") is None


def test_a_worker_host_serves_its_own_architecture_and_every_one_its_debuggers_read(tmp_path):
    config, _ = parse_config(f"[retrace]\nCacheDir = {tmp_path}\n", "test.conf")
    served = served_architectures(config)
    assert served[0] == HOST_ARCH
    if shutil.which("gdb-multiarch"):
        assert {"aarch64", "s390x", "ppc64le", "i386"} <= set(served)


def test_retrace_architectures_lists_what_the_host_takes_and_refuses_one_it_cannot_read(tmp_path):
    config, _ = parse_config(f"[retrace]\nCacheDir = {tmp_path}\nRetraceArchitectures = x86_64 s390x\n"
                             "[debuggers]\ns390x = gdb\n", "t.conf")
    if reads(shutil.which("gdb"), "s390x"):
        pytest.skip("this host's gdb reads s390x")
    with pytest.raises(NoDebugger, match="no debugger for s390x cores"):
        served_architectures(config)
    config, _ = parse_config(f"[retrace]\nCacheDir = {tmp_path}\nRetraceArchitectures = x86_64\n", "t.conf")
    assert served_architectures(config) == ["x86_64"]


def test_an_answer_is_kept_for_this_build_of_the_program_only(tmp_path):
    program = tmp_path / "gdb"
    shutil.copy(shutil.which("gdb"), program)
    assert reads(str(program), "x86_64", tmp_path / "cache")
    [kept] = (tmp_path / "cache" / "debuggers").iterdir()
    kept.write_text("no")  # what a later task reads instead of asking gdb again
    assert not reads(str(program), "x86_64", tmp_path / "cache")
    program.write_bytes(program.read_bytes())  # another build: asked again
    assert reads(str(program), "x86_64", tmp_path / "cache")
