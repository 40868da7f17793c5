"""The systemd units: valid, as exposed as the README says, and hardened only as far as the sandbox still runs.

No systemd runs on the machines this suite runs on, so what a unit's hardening does to a process is made
here by hand from the unit's own directives, the way systemd makes it: a private mount namespace with the
mounts the directives stand for (PrivateTmp, ProtectHome, PrivateDevices, ProtectSystem with its
ReadWritePaths, ProtectControlGroups, ProtectProc, ProtectKernelTunables, ProtectKernelLogs), a private
network for PrivateNetwork, the unit's user with no_new_privs and an empty capability bounding set, and a
seccomp filter for RestrictAddressFamilies and RestrictNamespaces.  In it runs the real sandbox
(bubblewrap, our seccomp filter, gdb) as a worker starts it.
"""

import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "config" / "systemd"
README = ROOT / "README.md"
# Units whose processes start bubblewrap: the dispatcher's workers, a Celery worker host, debuginfod.
SANDBOXING = ("retrace-server-dispatcher.service", "retrace-server-worker.service",
              "retrace-server-debuginfod.service")
FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16}
SANDBOXED_GDB = (
    "from retrace_server.environments.sandbox import run_sandboxed\n"
    "ran = run_sandboxed(['gdb', '--batch', '-nx', '-ex', 'print 6*7'], [], timeout=60, memory_bytes=2 << 30)\n"
    "print(ran.text)\n"
)
# Applied (with no_new_privs set) before the command runs: what systemd's seccomp filters for
# RestrictAddressFamilies and RestrictNamespaces refuse.
SECCOMP = """
import errno, os, sys
import seccomp
allowed, restrict_namespaces = [int(n) for n in sys.argv[1].split(",") if n], sys.argv[2] == "yes"
rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
if allowed:
    for family in range(46):
        if family not in allowed:
            rules.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.EQ, family))
if restrict_namespaces:
    rules.add_rule(seccomp.ERRNO(errno.EPERM), "unshare")
    rules.add_rule(seccomp.ERRNO(errno.EPERM), "setns")
    rules.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, 0x7E020000, 0x7E020000))
    for flag in (0x10000000, 0x20000000, 0x40000000, 0x04000000, 0x08000000, 0x00020000, 0x02000000):
        rules.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
rules.load()
os.execvp(sys.argv[3], sys.argv[3:])
"""


def service_section(text):
    """``{key: [values]}`` of a unit's [Service] section (a key may repeat)."""
    found, section = {}, None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def enabled(service, key):
    return service.get(key, ["no"])[-1] not in ("no", "false", "")


def namespace_script(service, stash):
    """Shell commands that make, in a private mount namespace, the mounts systemd makes for ``service``.

    The suite's own Python (its venv may live under /tmp or a home directory, which the unit hides) is
    bound back where it was, as a package's /usr would be there; ``stash`` (an empty directory) holds it
    and the host's /dev meanwhile.
    """
    prefix = shlex.quote(sys.prefix)
    script = ["set -e", f"mkdir {stash}/prefix {stash}/dev", f"mount --rbind {prefix} {stash}/prefix"]
    if enabled(service, "PrivateTmp"):
        script += ["mount -t tmpfs tmpfs /tmp", "mount -t tmpfs tmpfs /var/tmp"]
    if enabled(service, "PrivateDevices"):
        script += [f"mount --rbind /dev {stash}/dev", "mount -t tmpfs -o mode=755 tmpfs /dev"]
        for node in ("null", "zero", "full", "random", "urandom", "tty"):
            script += [f"touch /dev/{node}", f"mount --bind {stash}/dev/{node} /dev/{node}"]
    if enabled(service, "ProtectHome"):
        script += [f"[ ! -d {home} ] || mount -t tmpfs -o ro,mode=000 tmpfs {home}"
                   for home in ("/home", "/root", "/run/user")]
    script += [f"mkdir -p {prefix}", f"mount --rbind {stash}/prefix {prefix}"]
    if service.get("ProtectSystem", ["no"])[-1] == "strict":
        writable = [path.lstrip("-") for value in service.get("ReadWritePaths", []) for path in value.split()]
        script += [f"[ ! -e {path} ] || mount --bind {path} {path}" for path in writable]
        script += ["mount -o remount,bind,ro /"]
    if enabled(service, "ProtectControlGroups"):
        script += ["mount --rbind /sys/fs/cgroup /sys/fs/cgroup", "mount -o remount,bind,ro /sys/fs/cgroup"]
    if service.get("ProtectProc", ["default"])[-1] != "default":
        script += [f"mount -t proc -o hidepid={service['ProtectProc'][-1]} proc /proc"]
    if enabled(service, "ProtectKernelTunables"):
        script += ["mount --bind /proc/sys /proc/sys", "mount -o remount,bind,ro /proc/sys"]
    if enabled(service, "ProtectKernelLogs"):
        script += ["mount --bind /dev/null /proc/kmsg"]
    return script


def run_as_unit(service, command):
    """``command`` run the way systemd would start it for ``service`` (see the module's docstring)."""
    user = service.get("User", ["root"])[-1]
    credentials = ["setpriv", f"--reuid={user}", f"--regid={service.get('Group', [user])[-1]}", "--clear-groups"]
    if enabled(service, "NoNewPrivileges"):
        credentials.append("--no-new-privs")
    if service.get("CapabilityBoundingSet") == [""]:
        credentials.append("--bounding-set=-all")
    families = [FAMILIES[name] for value in service.get("RestrictAddressFamilies", []) for name in value.split()]
    filtered = [sys.executable, "-c", SECCOMP, ",".join(map(str, families)),
                "yes" if enabled(service, "RestrictNamespaces") else "no", *command]
    if families or enabled(service, "RestrictNamespaces"):
        assert enabled(service, "NoNewPrivileges"), "systemd's seccomp filters need no_new_privs without root"
    stash = tempfile.mkdtemp(prefix="retrace-unit-", dir="/run")
    try:
        script = namespace_script(service, stash) + ["exec " + shlex.join(credentials + filtered)]
        unshare = ["unshare", "--mount", "--propagation", "private",
                   *(["--net"] if enabled(service, "PrivateNetwork") else [])]
        return subprocess.run([*unshare, "sh", "-c", "\n".join(script)], capture_output=True, text=True, timeout=180)
    finally:
        shutil.rmtree(stash)  # empty here: its mounts were the namespace's


def unit_text(name):
    return (UNITS / name).read_text()


@pytest.mark.parametrize("name", SANDBOXING[:2])
def test_a_worker_started_under_the_units_hardening_still_runs_gdb_in_the_sandbox(name):
    ran = run_as_unit(service_section(unit_text(name)), [sys.executable, "-c", SANDBOXED_GDB])
    assert ran.returncode == 0 and "$1 = 42" in ran.stdout, ran.stdout + ran.stderr


@pytest.mark.parametrize("directive", ["ProtectKernelTunables=yes", "ProtectKernelLogs=yes", "RestrictNamespaces=yes",
                                       "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6"])
def test_each_directive_the_sandboxing_units_leave_off_would_stop_the_sandbox(directive):
    """Why the dispatcher, worker and debuginfod units are less hardened than cleanup and reposync."""
    service = service_section(unit_text("retrace-server-dispatcher.service"))
    key, value = directive.split("=", 1)
    service[key] = [value]
    ran = run_as_unit(service, [sys.executable, "-c", SANDBOXED_GDB])
    assert "$1 = 42" not in ran.stdout
    assert "the debugger sandbox (bubblewrap) cannot start" in ran.stderr, ran.stdout + ran.stderr


# A process of the service user that changed user itself (as Apache's daemons and a root-started dispatcher
# do) is not dumpable: a /proc mounted with hidepid does not show it even to that user.
HIDDEN_TASKS = """
import os, pwd, sys, threading
user = pwd.getpwnam(sys.argv[1])
os.setgroups([]); os.setgid(user.pw_gid); os.setuid(user.pw_uid)
stop = threading.Event()
for _ in range(int(sys.argv[2])):
    threading.Thread(target=stop.wait, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""


def test_protect_proc_would_hide_the_service_users_own_tasks_from_the_sandboxs_process_limit():
    """The sandbox limits the user's processes to what it counts in /proc plus 1024; with ProtectProc=invisible
    more than 1024 of them (threads of Apache's daemons on a busy server) go uncounted, and bubblewrap cannot
    even fork.  Without it, the same tasks are counted and the sandbox runs."""
    service = service_section(unit_text("retrace-server-dispatcher.service"))
    hidden = subprocess.Popen([sys.executable, "-c", HIDDEN_TASKS, service["User"][-1], "1100"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert hidden.stdout.readline() == "ready\n"
        counted = run_as_unit(service, [sys.executable, "-c", SANDBOXED_GDB])
        assert counted.returncode == 0 and "$1 = 42" in counted.stdout, counted.stdout + counted.stderr
        invisible = run_as_unit({**service, "ProtectProc": ["invisible"]}, [sys.executable, "-c", SANDBOXED_GDB])
        assert "$1 = 42" not in invisible.stdout
        assert "the debugger sandbox (bubblewrap) cannot start" in invisible.stderr, invisible.stdout + invisible.stderr
    finally:
        hidden.stdin.close()
        hidden.wait(timeout=30)


@pytest.mark.parametrize("name", SANDBOXING)
def test_the_sandboxing_units_leave_proc_unmasked_and_namespaces_allowed(name):
    service = service_section(unit_text(name))
    for key in ("ProtectKernelTunables", "ProtectKernelLogs", "RestrictNamespaces"):
        assert not enabled(service, key), f"{name}: {key} stops bubblewrap"
    assert service.get("ProtectProc", ["default"])[-1] == "default", f"{name}: ProtectProc hides tasks the sandbox counts"
    assert "AF_NETLINK" in " ".join(service["RestrictAddressFamilies"]), f"{name}: bwrap configures lo over netlink"


def test_cleanup_runs_under_its_units_hardening():
    """The full set (masked /proc, no network, no namespaces): cleanup still reads the spool and its config."""
    ran = run_as_unit(service_section(unit_text("retrace-server-cleanup.service")),
                      [str(Path(sys.executable).with_name("retrace-server-cleanup")), "--help"])
    assert ran.returncode == 0 and "usage: retrace-server-cleanup" in ran.stdout, ran.stdout + ran.stderr


def exposure(unit):
    said = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True,
                          text=True, check=True).stdout
    return float(re.search(r"Overall exposure level for \S+: (\d+\.\d)", said)[1])


def test_the_readme_states_every_units_exposure():
    stated = dict(re.findall(r"^\| `(retrace-server-[a-z]+\.service)` \| (\d+\.\d) ", README.read_text(), re.M))
    measured = {unit.name: f"{exposure(unit):.1f}" for unit in sorted(UNITS.glob("*.service"))}
    assert stated == measured
    assert all(float(figure) < 5 for figure in measured.values()), "every unit at least 'OK' (below 5)"


def test_every_unit_verifies(tmp_path):
    """systemd-analyze verify, with ExecStart pointing at this venv's command (no /usr/bin copy here)."""
    for unit in sorted(UNITS.iterdir()):
        text = unit.read_text()
        text = re.sub(r"^ExecStart=/usr/bin/(\S+)", lambda m: f"ExecStart={Path(sys.executable).parent / m[1]}",
                      text, flags=re.M)
        (tmp_path / unit.name).write_text(text)
    ran = subprocess.run(["systemd-analyze", "verify", "--man=no", *sorted(map(str, tmp_path.iterdir()))],
                         capture_output=True, text=True)
    problems = [line for line in ran.stderr.splitlines() if "retrace-server" in line]
    assert ran.returncode == 0 and not problems, ran.stderr
