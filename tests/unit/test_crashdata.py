import pytest

from retrace_server.errors import BadRequest, Conflict, Forbidden, InvalidCrashData
from retrace_server.intake.crashdata import (
    DSO_LIST_LINES,
    HEAD_CHECKS,
    broken_rule,
    parse_dso_list,
    parse_task_type,
    required_files,
    split_parts,
    validate_crash_dir,
)
from retrace_server.tasks.task import TaskType

CORE_HEADER = b"\x7fELF\x02\x01\x01" + bytes(9) + b"\x04\x00" + bytes(46)


def crash_dir(tmp_path, **files):
    contents = {"coredump": CORE_HEADER, "executable": b"/usr/bin/crasher\n", "package": b"crasher-1.0-1.fc41", **files}
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
    return contents


def test_valid_crash_dir_passes(tmp_path):
    names = crash_dir(tmp_path, os_release=b"Fedora release 41 (Forty One)\n")
    validate_crash_dir(tmp_path, names)


@pytest.mark.parametrize(
    "name, data",
    [
        ("executable", b"usr/bin/relative"),
        ("executable", b"/usr/bin/`id`"),
        ("executable", b"/usr/bin/a b"),
        ("package", b"crasher"),
        ("package", b"crasher-1.0-1.fc41\nevil-1-1"),
        ("os_release", b"Fedora release 41 $(id)"),
        ("rootdir", b"/var/lib/../../etc"),
        ("packages", b"bash-1-1 ;reboot"),
        ("os_info", b"ID=debian\nVERSION_ID=$(reboot)\n"),
        ("os_info", b"ID=debian\nnot a key value line\n"),
        ("executable", b""),
    ],
)
def test_bad_text_is_refused(tmp_path, name, data):
    names = crash_dir(tmp_path, **{name: data})
    with pytest.raises(InvalidCrashData, match=f"'{name}' file must hold"):
        validate_crash_dir(tmp_path, names)


def test_os_info_of_debian_is_accepted(tmp_path):
    os_info = (b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\n'
               b'ID=debian\nHOME_URL="https://www.debian.org/"\n# a comment\n')
    validate_crash_dir(tmp_path, crash_dir(tmp_path, os_info=os_info, package=b"binutils-2.40-2"))


def test_package_with_epoch_is_accepted(tmp_path):
    validate_crash_dir(tmp_path, crash_dir(tmp_path, package=b"bash-1:5.2.26-3.fc41"))


def test_task_type_defaults_to_coredump():
    assert parse_task_type(None, False, True) == TaskType.COREDUMP
    assert parse_task_type(" 1 ", False, True) == TaskType.DEBUG


def test_task_type_must_be_a_number():
    with pytest.raises(BadRequest, match="whole number"):
        parse_task_type("zero", False, True)


def test_unknown_task_type_is_refused():
    with pytest.raises(BadRequest, match="Unknown X-Task-Type 9"):
        parse_task_type("9", False, True)


def test_interactive_needs_allow_interactive():
    with pytest.raises(Conflict):
        parse_task_type("3", False, True)
    assert parse_task_type("3", True, True) == TaskType.COREDUMP_INTERACTIVE


def test_vmcore_task_is_accepted_unless_the_administrator_disabled_it():
    assert parse_task_type("2", False, True) == TaskType.VMCORE
    with pytest.raises(Forbidden, match="vmcore tasks were disabled"):
        parse_task_type("2", False, False)


def test_an_interactive_vmcore_task_needs_both_interactive_and_vmcore_tasks_allowed():
    assert parse_task_type("4", True, True) == TaskType.VMCORE_INTERACTIVE
    with pytest.raises(Conflict, match="Interactive tasks were disabled"):
        parse_task_type("4", False, True)
    with pytest.raises(Forbidden, match="vmcore tasks were disabled"):
        parse_task_type("4", True, False)


def test_debug_and_interactive_tasks_keep_their_environment_and_only_vmcore_types_are_vmcores():
    assert [t for t in TaskType if t.keeps_environment] == [TaskType.DEBUG, TaskType.COREDUMP_INTERACTIVE,
                                                            TaskType.VMCORE_INTERACTIVE]
    assert [t for t in TaskType if t.is_vmcore] == [TaskType.VMCORE, TaskType.VMCORE_INTERACTIVE]


def test_vmcore_must_be_a_kernel_dump(tmp_path):
    (tmp_path / "vmcore").write_bytes(b"just some text, not a dump")
    with pytest.raises(InvalidCrashData, match="not a kernel dump"):
        validate_crash_dir(tmp_path, {"vmcore": 1})


def test_vmcore_in_each_dump_format_is_accepted(tmp_path):
    for head in (b"KDUMP   \x06\x00\x00\x00", b"makedumpfile\x00\x00\x00\x00", CORE_HEADER):
        (tmp_path / "vmcore").write_bytes(head.ljust(64, b"\0"))
        validate_crash_dir(tmp_path, {"vmcore": 1})


# Lines as abrt-action-list-dsos writes them (satyr's test of its parser uses these).
ABRT_DSO_LIST = """\
/lib64/libbz2.so.1.0.4 bzip2-libs-1.0.5-7.el6_0.x86_64 (Scientific Linux) 1342032228
/usr/lib64/libunwind-coredump.so.0.0.0 libunwind-1.1-1.fc19.x86_64 (None) 1350312182
/usr/lib/x86_64-linux-gnu/libz.so.1.2.13 zlib1g-1:1.2.13.dfsg-1.amd64
/opt/vendor/libunpackaged.so
"""


def test_a_dso_list_names_each_mapped_files_package_and_leaves_out_the_unowned():
    assert broken_rule("dso_list", ABRT_DSO_LIST.strip()) is None
    assert parse_dso_list(ABRT_DSO_LIST) == {
        "/lib64/libbz2.so.1.0.4": "bzip2-libs-1.0.5-7.el6_0.x86_64",
        "/usr/lib64/libunwind-coredump.so.0.0.0": "libunwind-1.1-1.fc19.x86_64",
        "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13": "zlib1g-1:1.2.13.dfsg-1.amd64"}


@pytest.mark.parametrize("text", ["/usr/lib/libx.so $(id)", "lib/relative.so x-1-1", "/usr/lib/../../etc/x x-1-1",
                                  "/usr/lib/x.so x-1-1 (vendor) (twice)"])
def test_a_dso_list_line_that_is_not_abrts_is_refused_with_the_rule(text):
    assert "mapped file's absolute path" in broken_rule("dso_list", text)


def test_a_dso_list_is_capped_in_lines():
    assert broken_rule("dso_list", "/x\n" * (DSO_LIST_LINES + 1)) is not None


def test_a_split_vmcore_is_vmcore_1_to_n_and_stands_for_vmcore():
    assert split_parts(["vmcore.2", "vmcore.1", "vmcore.3"]) == ["vmcore.1", "vmcore.2", "vmcore.3"]
    assert required_files(TaskType.VMCORE, ["vmcore.1", "vmcore.2"]) == ()
    assert required_files(TaskType.VMCORE, []) == ("vmcore",)
    for names in (["vmcore.1"], ["vmcore.1", "vmcore.3"], ["vmcore", "vmcore.1", "vmcore.2"]):
        with pytest.raises(InvalidCrashData):
            split_parts(names)


def test_a_split_part_must_be_kdump_compressed():
    with pytest.raises(InvalidCrashData, match="not kdump-compressed"):
        HEAD_CHECKS["vmcore.2"](b"\x7fELF\x02\x01\x01" + bytes(9) + b"\x04\x00" + bytes(46), "vmcore.2")
    HEAD_CHECKS["vmcore.2"](b"KDUMP   " + bytes(56), "vmcore.2")
