import dataclasses
import re
from pathlib import Path

import pytest

from retrace_server.config import UPSTREAM_UNSUPPORTED, Config, ConfigError, config_path, load_config, parse_config


def parse(body):
    return parse_config("[retrace]\n" + body, "/etc/retrace-server/retrace-server.conf")


def test_missing_keys_take_upstream_defaults():
    config, warnings = parse("")
    assert config == Config()
    assert warnings == []


def test_shipped_config_file_loads_without_warnings():
    shipped = Path(__file__).resolve().parents[2] / "config" / "retrace-server.conf"
    config, warnings = parse_config(shipped.read_text(), shipped)
    assert warnings == []
    assert config.SaveDir == Path("/var/spool/retrace-server")


def test_values_are_converted_to_the_field_types():
    config, _ = parse("MaxPackedSize = 7\nRequireHTTPS = no\nSaveDir = /srv/spool\n")
    assert (config.MaxPackedSize, config.RequireHTTPS, config.SaveDir) == (7, False, Path("/srv/spool"))


def test_sizes_in_mib_convert_to_bytes():
    config, _ = parse("MaxPackedSize = 2\nMaxUnpackedSize = 3\nMinStorageLeft = 4\n")
    assert (config.max_packed_bytes, config.max_unpacked_bytes, config.min_storage_left_bytes) == (
        2 * 1048576, 3 * 1048576, 4 * 1048576,
    )


def test_task_slots_are_running_plus_queued():
    config, _ = parse("MaxParallelTasks = 3\nMaxQueuedTasks = 4\n")
    assert config.task_slots == 7


def test_wrong_type_names_key_and_file():
    with pytest.raises(ConfigError, match=r"retrace-server.conf, line \d+: MaxPackedSize must be a whole number, "
                                          "not 'lots'"):
        parse("MaxPackedSize = lots\n")


def test_bad_boolean_names_the_accepted_spellings():
    with pytest.raises(ConfigError, match="RequireHTTPS must be 1 or 0"):
        parse("RequireHTTPS = maybe\n")


def test_value_below_minimum_is_an_error():
    with pytest.raises(ConfigError, match="MaxParallelTasks must be at least 1, not 0"):
        parse("MaxParallelTasks = 0\n")


def test_value_above_maximum_is_an_error():
    with pytest.raises(ConfigError, match="TaskIdLength must be at most 18, not 40"):
        parse("TaskIdLength = 40\n")


def test_relative_path_is_an_error():
    with pytest.raises(ConfigError, match="SaveDir must be an absolute path"):
        parse("SaveDir = spool\n")


def test_unknown_key_is_a_warning_not_an_error():
    config, warnings = parse("UseFTPTasks2 = 1\n")
    assert config == Config()
    assert len(warnings) == 1
    assert re.fullmatch(r"/etc/retrace-server/retrace-server.conf, line \d+: unknown key UseFTPTasks2 in \[retrace\] "
                        "is ignored; did you mean UseFTPTasks\\?", warnings[0])


@pytest.mark.parametrize(("written", "meant"), [("MaxParalelTasks", "MaxParallelTasks"),
                                                 ("maxparalleltasks", "MaxParallelTasks"),
                                                 ("GdbTimeOut", "GdbTimeout")])
def test_an_unknown_key_close_to_a_known_one_is_named(written, meant):
    _, warnings = parse_config(f"[retrace]\n# a comment\n{written} = 3\n", "f.conf")
    assert warnings == [f"f.conf, line 3: unknown key {written} in [retrace] is ignored; did you mean {meant}?"]


def test_a_bad_value_is_reported_on_its_line():
    with pytest.raises(ConfigError, match=r"^f.conf, line 4: GdbTimeout must be a number, not 'soon'$"):
        parse_config("[other]\nGdbTimeout = 1\n[retrace]\nGdbTimeout = soon\n", "f.conf")


def test_an_upstream_key_this_server_does_not_implement_says_so_by_name():
    config, warnings = parse("KernelChrootRepo = http://x/\nUseFafPackages = 1\n")
    assert config == Config()
    assert warnings == [
        "/etc/retrace-server/retrace-server.conf: KernelChrootRepo is upstream's and is ignored here: kernel debuginfo comes "
        "from the release's repositories and the [debuginfod] servers here, and vmcores' kernels from the kernel cache",
        "/etc/retrace-server/retrace-server.conf: UseFafPackages is upstream's and is ignored here: packages come from "
        "RepoDir and the [debuginfod] servers, not from FAF's store"]


def test_the_managers_upstream_keys_are_read_and_checked():
    config, warnings = parse("AllowTaskManager = 1\nUseFTPTasks = 1\nFTPHost = 127.0.0.1:2121\nEmailNotify = 1\n"
                             "ImportDirs = /srv/cores /mnt/share\nSMTPServer = [::1]:2525\n")
    assert warnings == []
    assert (config.AllowTaskManager, config.UseFTPTasks, config.EmailNotify) == (True, True, True)
    assert config.import_dirs == [Path("/srv/cores"), Path("/mnt/share")]
    assert config.smtp_address == ("::1", 2525)
    with pytest.raises(ConfigError, match="ImportDirs must name absolute directories, not 'cores'"):
        parse("ImportDirs = cores\n")
    with pytest.raises(ConfigError, match="ManagerUserFile must be an absolute path"):
        parse("ManagerUserFile = users\n")


def test_every_key_of_upstreams_configuration_is_implemented_or_explained():
    upstream = ["AuthGroup", "RequireHTTPS", "AllowAPIDelete", "AllowInteractive", "AllowExternalDir",
                "AllowMetrics", "AllowTaskManager", "AllowVMCoreTask", "AllowUsrCoreTask", "TaskManagerAuthDelete",
                "TaskManagerDeleteUsers", "CaseNumberURL", "RequireGPGCheck", "MaxParallelTasks", "MaxPackedSize",
                "MaxUnpackedSize", "MinStorageLeft", "DeleteTaskAfter", "DeleteFailedTaskAfter", "ArchiveTaskAfter",
                "DBFile", "LogDir", "RepoDir", "SaveDir", "DropDir", "UseCreaterepoUpdate", "KeepRawhideLatest",
                "KernelChrootRepo", "KojiRoot", "UseFTPTasks", "FTPSSL", "FTPHost", "FTPUser", "FTPPass", "FTPDir",
                "FTPBufferSize", "WgetKernelDebuginfos", "KernelDebuginfoURL", "VmcoreDumpLevel",
                "VmcoreDumpSavePercent", "UseFafPackages", "FafLinkDir", "RetraceEnvironment", "EmailNotify",
                "EmailNotifyFrom", "BugzillaURL", "BugzillaCredentials", "BugzillaStatus", "BugzillaProduct",
                "BugzillaComponent", "BugzillaTriggerWords", "BugzillaRegExes", "BugzillaQueryLastChangeDelta",
                "ProcessCommunicateTimeout", "KernelDebuggerPath"]
    implemented = {field.name for field in dataclasses.fields(Config)}
    assert [key for key in upstream if key not in implemented and key not in UPSTREAM_UNSUPPORTED] == []


def test_missing_section_is_an_error():
    with pytest.raises(ConfigError, match=r"has no \[retrace\] section"):
        parse_config("[other]\nx = 1\n", "f.conf")


def test_a_file_without_a_section_header_says_what_it_must_begin_with():
    with pytest.raises(ConfigError, match=r"^f.conf, line 1: the file must begin with a \[retrace\] section, "
                                          "not 'no section header'$"):
        parse_config("no section header\n", "f.conf")


def test_a_line_that_is_not_ini_is_named_with_its_number():
    with pytest.raises(ConfigError, match=r"^f.conf, line 3: not a valid INI line \(KEY = VALUE or \[SECTION\]\): "
                                          "'MaxParallelTasks 3'$"):
        parse_config("[retrace]\nGdbTimeout = 60\nMaxParallelTasks 3\n", "f.conf")


def test_a_repeated_section_is_named_with_its_line():
    with pytest.raises(ConfigError, match=r"^f.conf, line 3: not a valid INI file: section 'retrace' already exists$"):
        parse_config("[retrace]\nGdbTimeout = 60\n[retrace]\n", "f.conf")


def test_unreadable_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match=r"missing.conf: cannot read the configuration file"):
        load_config(tmp_path / "missing.conf")


def test_path_comes_from_environment_when_not_explicit():
    assert config_path({"RETRACE_SERVER_CONFIG_PATH": "/x.conf"}) == Path("/x.conf")
    assert config_path({"RETRACE_SERVER_CONFIG_PATH": "/x.conf"}, "/y.conf") == Path("/y.conf")


def test_default_path_is_upstreams():
    assert config_path({}) == Path("/etc/retrace-server/retrace-server.conf")


def test_gdb_timeout_accepts_fractions_of_a_second():
    config, _ = parse_config("[retrace]\nGdbTimeout = 0.5\n", "t.conf")
    assert config.GdbTimeout == 0.5


def test_unknown_retrace_environment_lists_the_choices():
    with pytest.raises(ConfigError, match="RetraceEnvironment must be one of sysroot, chroot, mock, not 'podman'"):
        parse_config("[retrace]\nRetraceEnvironment = podman\n", "t.conf")


def test_a_release_can_have_its_own_debuginfod_servers():
    config, warnings = parse_config(
        "[retrace]\nDebuginfodURLs = https://everyone.example/\n"
        "[debuginfod]\nfedora-41-x86_64 = https://fedora.example/ https://backup.example/\n", "t.conf")
    assert warnings == []
    assert config.debuginfod_urls("fedora-41-x86_64") == ["https://fedora.example", "https://backup.example"]
    assert config.debuginfod_urls("rhel-9-x86_64") == ["https://everyone.example/"]
    assert config.debuginfod_releases == ["fedora-41-x86_64"], "a release with its own servers needs no mirror"


def test_debuginfod_releases_need_servers():
    config, _ = parse_config("[retrace]\nDebuginfodReleases = fedora-41-x86_64\n", "t.conf")
    assert config.debuginfod_releases == []
