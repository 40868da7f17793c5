"""The sysroot environment's trees: shared by tasks that need the same files, a task's own when it keeps it."""

import logging
import os
import tarfile
from pathlib import Path

from retrace_server.config import Config
from retrace_server.elf import Module
from retrace_server.environments.base import Workload
from retrace_server.environments.sysroot import SharedTrees, SysrootEnvironment
from retrace_server.packaging.cache import CachedPackage, cached_entry
from retrace_server.packaging.debpackage import unpack_deb
from retrace_server.packaging.release import ReleaseId
from tests.unit.test_debpackage import entry, hand_made_deb

RELEASE = ReleaseId.parse("debian-12-x86_64")


def cached_package(tmp_path, name, members):
    cache = tmp_path / "cache" / "rpms"
    cache.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).mkdir()
    deb = hand_made_deb(tmp_path / name, members)
    cached = cached_entry(cache / name, cache / f"{name}.lock", lambda tmp: unpack_deb(deb, tmp / "root"))
    return CachedPackage(cached.path, True, 0, False)


def environment(tmp_path, task):
    (tmp_path / task).mkdir(exist_ok=True)
    return SysrootEnvironment(Config(CacheDir=tmp_path / "cache"), tmp_path / task, task, logging.getLogger(task))


def workload(tmp_path, trees, **fields):
    return Workload("/usr/bin/crasher", tmp_path / "core", "gdb", RELEASE, None, trees=trees,
                    modules=[Module("/usr/bin/crasher", 0x400000, "ab" * 20)], **fields)


def test_tasks_needing_the_same_files_read_one_tree_which_outlives_them(tmp_path):
    crasher = cached_package(tmp_path, "crasher", [entry("./usr/bin/crasher")])
    first, second = environment(tmp_path, "1"), environment(tmp_path, "2")
    assert first.prepare(workload(tmp_path, [crasher])) == 1
    assert second.prepare(workload(tmp_path, [crasher])) == 0, "the second task links nothing"
    assert first.tree == second.tree and first.tree.parent.parent == SharedTrees.directory(tmp_path / "cache")
    assert os.path.realpath(first.tree / "usr/bin/crasher") == str(crasher.root / "usr/bin/crasher")
    assert first.read_only_paths(workload(tmp_path, [crasher]))[2] == first.tree
    first.clean(keep=False)
    assert (second.tree / "usr/bin/crasher").exists(), "cleaning a task leaves the shared tree"
    assert not (tmp_path / "1" / "sysroot").exists()


def test_other_packages_or_placed_files_make_another_tree(tmp_path):
    crasher = cached_package(tmp_path, "crasher", [entry("./usr/bin/crasher")])
    library = cached_package(tmp_path, "library", [entry("./usr/lib/libcrash.so.1")])
    (tmp_path / "debug").write_text("debug")
    trees = set()
    for task, work in (("1", workload(tmp_path, [crasher])), ("2", workload(tmp_path, [crasher, library])),
                       ("3", workload(tmp_path, [crasher], placements=[("usr/lib/debug/x.debug", tmp_path / "debug")])),
                       ("4", workload(tmp_path, [library, crasher]))):
        env = environment(tmp_path, task)
        env.prepare(work)
        trees.add(env.tree)
    assert len(trees) == 4, "the first package wins a file both hold, so their order makes another tree"


def test_a_task_that_keeps_its_tree_builds_its_own(tmp_path):
    crasher = cached_package(tmp_path, "crasher", [entry("./usr/bin/crasher")])
    env = environment(tmp_path, "1")
    env.prepare(workload(tmp_path, [crasher], keeps_tree=True))
    assert env.tree == tmp_path / "1" / "sysroot" and (env.tree / "usr/bin/crasher").exists()
    assert not SharedTrees.directory(tmp_path / "cache").exists()
    env.clean(keep=False)
    assert not env.tree.exists()


def test_gdb_s_paths_into_a_shared_tree_read_as_on_the_crashed_machine(tmp_path):
    crasher = cached_package(tmp_path, "crasher", [entry("./usr/bin/crasher")])
    env = environment(tmp_path, "1")
    env.prepare(workload(tmp_path, [crasher]))
    said = f"Reading symbols from {env.tree}/usr/bin/crasher...\n{crasher.root}/usr/bin/crasher"
    assert env.hide(said) == "Reading symbols from /usr/bin/crasher...\n/usr/bin/crasher"


def test_a_shared_tree_is_evicted_like_a_cached_package(tmp_path):
    crasher = cached_package(tmp_path, "crasher", [entry("./usr/bin/crasher", tarfile.REGTYPE)])
    env = environment(tmp_path, "1")
    env.prepare(workload(tmp_path, [crasher]))
    trees = SharedTrees(tmp_path / "cache")
    [(key, _last_use, size)] = trees.entries()
    assert env.tree == trees.directory(tmp_path / "cache") / key / "root" and size > 0
    assert trees.evict(key) and not env.tree.exists() and trees.entries() == []


def test_the_loader_linked_by_the_name_the_program_asks_for_still_resolves_in_the_renamed_shared_tree(tmp_path):
    """A program names /lib64/ld-linux-x86-64.so.2; a core maps the loader at its /usr/lib path, the only one the
    packages (or debuginfod) give: the link is made while the tree is a temporary directory."""
    loader = "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    program = cached_package(tmp_path, "program", [entry("./usr/bin/crasher", content=Path("/usr/bin/true").read_bytes())])
    libc = cached_package(tmp_path, "libc", [entry("." + loader, content=b"the loader")])
    env = environment(tmp_path, "1")
    work = workload(tmp_path, [program, libc])
    work.modules = [*work.modules, Module(loader, 0x7F0000000000, "cd" * 20)]
    env.prepare(work)
    assert (env.tree / "lib64" / "ld-linux-x86-64.so.2").read_bytes() == b"the loader"
