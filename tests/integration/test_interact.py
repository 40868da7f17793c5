"""retrace-server-interact as a support engineer uses it: interactive tasks (types 3 and 4) keep what a
session needs, and a real gdb on a real core, a real crash on a real vmcore, open in a real terminal (tmux:
send-keys, capture-pane), in the worker's sandbox."""

import secrets
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testkit.crash_extension import build_extension
from testkit.helpers import add_debian_repository, outcome, submit, upload, wait_final
from testkit.vmcore import kernel_debs

INTERACT = Path(sys.executable).with_name("retrace-server-interact")
WORKER = Path(sys.executable).with_name("retrace-server-worker")


class Terminal:
    """A tmux session running one command, read and typed into as an engineer would; the pane stays after
    the command ends, with its exit status."""

    def __init__(self, argv):
        self.name = f"retrace-{secrets.token_hex(4)}"
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", "200", "-y", "50",
                        f"{shlex.join(map(str, argv))}; echo EXIT=$?; sleep 600"], check=True)

    def screen(self):
        return subprocess.run(["tmux", "capture-pane", "-p", "-J", "-S", "-3000", "-t", self.name],
                              capture_output=True, text=True).stdout

    def wait_for(self, text, timeout=90):
        deadline = time.monotonic() + timeout
        while text not in self.screen():
            assert time.monotonic() < deadline, f"{text!r} never appeared:\n{self.screen()}"
            time.sleep(0.1)
        return self.screen()

    def type(self, line):
        subprocess.run(["tmux", "send-keys", "-t", self.name, line, "Enter"], check=True)

    def close(self):
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


@pytest.fixture
def terminal():
    opened = []

    def open_terminal(*argv):
        opened.append(Terminal(argv))
        return opened[-1]

    yield open_terminal
    for each in opened:
        each.close()


@pytest.fixture(scope="module")
def interactive_server(start_server):
    return start_server(AllowInteractive="1")


def interact(server, task_id, *arguments):
    return [INTERACT, "--config", server.config_path, task_id, *arguments]


def finished_task(server, problem_dir, task_type):
    task_id, auth = submit(server, problem_dir, **{"X-Task-Type": str(task_type)})
    status = wait_final(server, task_id, auth)
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", outcome(status)
    return task_id


def test_gdb_opens_an_interactive_coredump_task_in_a_terminal(interactive_server, problem_dir, terminal):
    task_id = finished_task(interactive_server, problem_dir, 3)
    assert (interactive_server.save_dir / task_id / "crash" / "coredump").is_file(), "type 3 keeps the core"
    session = terminal(*interact(interactive_server, task_id, "gdb"))
    screen = session.wait_for("(gdb)")
    assert "retrace-server-interact: running /usr/bin/gdb -q -nx -iex 'set auto-load off'" in screen
    assert "no network" in screen
    session.type("frame 0")
    session.wait_for("crash_in_library (depth=0")
    session.type("print local_counter")
    session.wait_for("$1 = 0")
    session.type("quit")
    assert "EXIT=0" in session.wait_for("EXIT=")


def test_shell_shows_the_tasks_files_at_the_debuggers_paths_read_only(interactive_server, problem_dir, terminal):
    task_id = finished_task(interactive_server, problem_dir, 3)
    core = interactive_server.save_dir / task_id / "crash" / "coredump"
    session = terminal(*interact(interactive_server, task_id, "shell"))
    session.type(f"test -s {core} && echo CORE-VISIBLE; touch {core} 2>&1 | tail -1; id -u; exit")
    screen = session.wait_for("EXIT=")
    assert "CORE-VISIBLE" in screen and "Read-only file system" in screen
    assert "\n0\n" not in screen, "the shell does not run as root"


def test_a_plain_task_says_its_core_was_deleted_and_how_to_keep_it(interactive_server, problem_dir):
    task_id = finished_task(interactive_server, problem_dir, 0)
    result = subprocess.run(interact(interactive_server, task_id, "gdb"), capture_output=True, text=True)
    assert result.returncode == 2
    assert (f"the coredump of task {task_id} was deleted when the task ended: create the task as type 3 "
            "(X-Task-Type: 3) to keep it") in result.stderr


def test_a_tree_whose_packages_cleanup_evicted_says_to_restart_the_task(interactive_server, problem_dir):
    task_id = finished_task(interactive_server, problem_dir, 3)
    shutil.rmtree(interactive_server.cache_dir / "rpms")
    result = subprocess.run(interact(interactive_server, task_id, "gdb"), capture_output=True, text=True)
    assert result.returncode == 2
    assert (f"the crashed program in the package tree of task {task_id} is gone (cleanup evicts unused cache "
            f"entries); run 'retrace-server-worker {task_id} --restart' to prepare it again") in result.stderr
    restart = subprocess.run([WORKER, "--config", interactive_server.config_path, task_id, "--restart",
                              "--foreground"], capture_output=True, text=True, timeout=120)
    assert restart.returncode == 0, restart.stdout + restart.stderr
    again = subprocess.run(interact(interactive_server, task_id, "gdb"), input="bt\nquit\n", capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0 and "crash_in_library (depth=0" in again.stdout, again.stdout + again.stderr


def test_unknown_actions_and_tasks_are_refused_with_a_sentence(interactive_server, problem_dir):
    unknown = subprocess.run(interact(interactive_server, "123456789", "debug"), capture_output=True, text=True)
    assert unknown.returncode == 2 and "invalid choice: 'debug'" in unknown.stderr
    missing = subprocess.run(interact(interactive_server, "123456789", "gdb"), capture_output=True, text=True)
    assert missing.returncode == 2 and "there is no task 123456789" in missing.stderr
    task_id = finished_task(interactive_server, problem_dir, 3)
    wrong = subprocess.run(interact(interactive_server, task_id, "crash"), capture_output=True, text=True)
    assert wrong.returncode == 2 and f"task {task_id} is a coredump task: use 'gdb', not 'crash'" in wrong.stderr


def test_printdir_and_ending_a_task_by_hand(interactive_server, problem_dir):
    task_id, auth = submit(interactive_server, problem_dir, **{"X-Task-Type": "3"})
    wait_final(interactive_server, task_id, auth)
    printed = subprocess.run(interact(interactive_server, task_id, "printdir"), capture_output=True, text=True)
    assert printed.stdout.strip() == str(interactive_server.save_dir / task_id)
    failed = subprocess.run(interact(interactive_server, task_id, "set-fail", "--reason", "customer withdrew"),
                            capture_output=True, text=True)
    assert failed.returncode == 0, failed.stderr
    status = interactive_server.get(f"/{task_id}", headers=auth)
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE" and "customer withdrew" in outcome(status)
    succeeded = subprocess.run(interact(interactive_server, task_id, "set-success"), capture_output=True, text=True)
    assert succeeded.returncode == 0, succeeded.stderr
    assert interactive_server.get(f"/{task_id}", headers=auth).headers["X-Task-Status"] == "FINISHED_SUCCESS"
    log = interactive_server.get(f"/{task_id}/log", headers=auth).text
    assert "Status set to success by hand: set by hand with retrace-server-interact" in log
    deleted = subprocess.run(interact(interactive_server, task_id, "delete"), capture_output=True, text=True)
    assert (deleted.returncode, deleted.stdout) == (0, f"task {task_id}: deleted\n"), deleted.stderr
    assert not (interactive_server.save_dir / task_id).exists()
    assert interactive_server.get(f"/{task_id}", headers=auth).status_code == 404


def test_crash_opens_an_interactive_vmcore_task_with_its_module_debuginfo_and_extensions(
        warm_kernels, start_server, terminal, uploads, work_dir):
    extensions = work_dir / "interactive-crash-extensions"
    build_extension(extensions)
    server = start_server(repository=False, kernels_from=warm_kernels, AllowInteractive="1",
                          CrashExtensions=str(extensions))
    add_debian_repository(server, kernel_debs().dbg)
    task_id, auth = upload(server, uploads["kdump"], task_type=4)
    status = wait_final(server, task_id, auth, timeout=240)
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", outcome(status)
    session = terminal(*interact(server, task_id, "crash"))
    session.wait_for("crash> ", timeout=180)
    session.type("bt")
    session.wait_for("sysrq_handle_crash")
    session.type("mod")
    screen = session.wait_for("qemu_fw_cfg")
    assert "(not loaded)" not in screen.split("crash> mod", 1)[1], "module debuginfo was loaded (-i mod -S)"
    session.type("retrace_hello")
    session.wait_for("retrace_hello: kernel 6.")
    session.type("quit")
    assert "EXIT=0" in session.wait_for("EXIT=")
