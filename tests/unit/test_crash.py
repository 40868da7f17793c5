"""crash's batch: every command after a marker line, its output split back by them."""

from retrace.crash import COMMANDS, CrashOutput, batch_script, modules_without_debuginfo, split_sections


def test_batch_script_echoes_a_marker_before_each_command_and_quits():
    script = batch_script(["sys", "log"]).splitlines()
    assert script == ["echo ==RETRACE-SECTION sys==", "sys", "echo ==RETRACE-SECTION log==", "log", "quit"]


def test_output_splits_into_the_preamble_and_each_command_s_text():
    text = "WARNING: active task not found\n==RETRACE-SECTION sys==\n  PANIC: x\n==RETRACE-SECTION log==\n[ 1.0] hi\n"
    preamble, sections = split_sections(text)
    assert preamble.strip() == "WARNING: active task not found"
    assert sections == {"sys": "  PANIC: x\n", "log": "[ 1.0] hi\n"}


def test_backtrace_is_bt_a_when_it_shows_frames_else_plain_bt():
    frames = " #0 [ffffd210c0013b20] panic at ffffffff86fcd0a8\n"
    both = CrashOutput({"bt -a": frames, "bt": frames + "more"}, "", False, 1.0)
    assert both.backtrace == frames
    only_bt = CrashOutput({"bt -a": "bt: cannot determine active tasks\n", "bt": frames}, "", False, 1.0)
    assert only_bt.backtrace == frames


def test_full_batch_asks_for_summary_backtraces_log_and_modules():
    assert COMMANDS == ("sys", "bt -a", "bt", "log", "mod")


def test_modules_without_debuginfo_are_the_ones_mod_shows_not_loaded():
    mod = """     MODULE       NAME               BASE         SIZE  OBJECT FILE
ffffffffc03a40c0  pvpanic      ffffffffc03a2000  16384  (not loaded)  [CONFIG_KALLSYMS]
ffffffffc03ac140  pvpanic_pci  ffffffffc03aa000  16384  pvpanic-pci.ko
ffffffffc03b62c0  qemu_fw_cfg  ffffffffc03b3000  20480  (not loaded)  [CONFIG_KALLSYMS]
"""
    assert modules_without_debuginfo(mod) == {"pvpanic", "qemu_fw_cfg"}
