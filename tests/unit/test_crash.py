"""crash's batch: every command after a marker line, its output split back by them."""

from retrace.crash import COMMANDS, CrashOutput, batch_script, split_sections


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
