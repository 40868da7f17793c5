"""`make run` installs what the server needs, `make test` adds the laboratory: both sets as apt plans them
on a fresh bookworm (debootstrap from the Debian archive), read from scripts/install-system-packages."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from testkit.debootstrap import fresh_debian, in_root

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install-system-packages"
# What the suite needs and a server never runs: none of it may come with `make run`.
LABORATORY = ("chromium", "rabbitmq-server", "qemu-system-x86", "qemu-system-arm", "gcc", "gcc-aarch64-linux-gnu",
              "debootstrap", "rsyslog", "debhelper", "dpkg-dev", "python3-pytest", "python3-selenium", "dnf",
              "tmux", "busybox-static")
RUN_LIMIT_MB = 500


def listed(*flags):
    return subprocess.run(["sh", str(SCRIPT), "--list", *flags], capture_output=True, text=True,
                          check=True).stdout.split()


def plan(root, packages):
    """apt's plan for ``packages`` on the fresh root: (new package names, MB it says they take)."""
    ran = subprocess.run(in_root(root, "apt-get", "install", "--assume-no", "--no-install-recommends", *packages),
                         capture_output=True, text=True, timeout=600)
    said = ran.stdout + ran.stderr
    size = re.search(r"After this operation, ([\d.,]+) ([kMG])B of additional disk space will be used", said)
    assert size, said[-3000:]
    megabytes = float(size[1].replace(",", "")) * {"k": 1 / 1000, "M": 1, "G": 1000}[size[2]]
    new = said.split("The following NEW packages will be installed:", 1)[1]
    new = re.split(r"\n\S", new, maxsplit=1)[0].split()
    return new, megabytes


@pytest.fixture(scope="module")
def bookworm(tmp_path_factory):
    root = fresh_debian("bookworm", tmp_path_factory.mktemp("bookworm-plan") / "root")
    ran = subprocess.run(in_root(root, "apt-get", "update", "-q"), capture_output=True, text=True, timeout=900)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_the_run_set_names_no_test_tool_and_the_test_set_holds_the_run_set():
    run, test = listed(), listed("--test")
    assert not set(run) & set(LABORATORY)
    assert set(run) < set(test) and set(LABORATORY) <= set(test)


def test_make_run_installs_the_server_without_the_laboratory_and_under_500_mb(bookworm):
    new, megabytes = plan(bookworm, listed())
    print(f"\nmake run on a fresh bookworm: {len(new)} packages, {megabytes:.0f} MB")
    assert {"apache2", "libapache2-mod-wsgi-py3", "gdb", "bubblewrap", "crash"} <= set(new)
    assert not set(new) & set(LABORATORY), "a test-only package came with the run set"
    assert megabytes < RUN_LIMIT_MB
    test_new, test_megabytes = plan(bookworm, listed("--test"))
    print(f"make test on a fresh bookworm: {len(test_new)} packages, {test_megabytes:.0f} MB")
    assert test_megabytes > megabytes and set(LABORATORY) <= set(test_new)
