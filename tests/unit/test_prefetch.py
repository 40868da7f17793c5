"""A coredump's packages named while the core still uploads (retrace_server.packaging.prefetch), and the
dispatcher's request for it (retrace_server.tasks.dispatch)."""

import logging
import os
import threading
import time
from typing import NamedTuple

import pytest

from retrace_server.config import Config
from retrace_server.elf import Module, core_map, read_core
from retrace_server.packaging.prefetch import (
    GrowingFile,
    Prefetched,
    UploadEnded,
    _Unpacker,
    guessed_release,
    named_release,
    packaged_modules,
    prefetch,
)
from retrace_server.packaging.release import ReleaseId
from retrace_server.packaging.supply import CacheCounts
from retrace_server.tasks import dispatch
from retrace_server.tasks.task import IncomingTask, TaskType
from testkit.synthetic_core import BUILD_ID, synthetic_core

FEDORA = ReleaseId("fedora", "41", "x86_64")
DEBIAN = ReleaseId("debian", "12", "x86_64")


def written_slowly(path, data, pieces=8, pause=0.05):
    """A thread writing ``data`` to ``path`` a piece at a time, as an upload does."""
    def write():
        with open(path, "ab", buffering=0) as target:
            step = -(-len(data) // pieces)
            for start in range(0, len(data), step):
                time.sleep(pause)
                target.write(data[start:start + step])
    path.write_bytes(b"")
    thread = threading.Thread(target=write)
    thread.start()
    return thread


def test_a_core_read_while_it_is_written_says_what_the_whole_core_says(tmp_path):
    data = synthetic_core(paths=("/usr/bin/crasher", "/usr/lib64/libcrash.so"))
    path = tmp_path / "coredump"
    writer = written_slowly(path, data)
    fd = os.open(path, os.O_RDONLY)
    try:
        mapped = core_map(GrowingFile(fd, len(data), writer.is_alive, time.monotonic() + 30), len(data))
        build_ids = [mapped.build_id_at(start) for _path, start in mapped.bases]
    finally:
        os.close(fd)
        writer.join()
    whole = read_core(path)
    assert [(module.path, module.start) for module in whole.modules] == list(mapped.bases)
    assert build_ids == [module.build_id for module in whole.modules]
    assert mapped.arch == "x86_64" and build_ids[0] == BUILD_ID.hex()


def test_a_read_past_what_an_ended_upload_wrote_stops_instead_of_waiting(tmp_path):
    data = synthetic_core()
    path = tmp_path / "coredump"
    path.write_bytes(data[:200])  # the headers, not the notes
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(UploadEnded, match="the upload ended 200 bytes into the core's"):
            core_map(GrowingFile(fd, len(data), lambda: False, time.monotonic() + 30), len(data))
        with pytest.raises(UploadEnded):  # nor past the deadline of one that still uploads
            core_map(GrowingFile(fd, len(data), lambda: True, time.monotonic() + 0.2), len(data))
    finally:
        os.close(fd)


def test_the_release_is_read_from_the_files_that_came_before_the_core(tmp_path):
    (tmp_path / "os_release").write_text("Fedora release 41 (Forty One)\n")
    assert named_release(tmp_path, "x86_64", [DEBIAN, FEDORA])[0] == FEDORA
    assert named_release(tmp_path, "x86_64", [DEBIAN]) == (  # named, but not served here: no guess either
        None, "from os_release 'Fedora release 41 (Forty One)', which is not a release served here")
    (tmp_path / "os_release").unlink()
    assert named_release(tmp_path, "x86_64", [DEBIAN, FEDORA]) is None


class Index:
    """A release index that lists some build-ids."""

    def __init__(self, *build_ids):
        self.build_ids = build_ids

    def by_build_id(self, build_id, kind):
        return ["a package"] if kind == "debuginfo" and build_id in self.build_ids else []


def test_without_a_release_file_the_release_is_the_one_whose_index_lists_the_core_s_build_ids(tmp_path):
    path = tmp_path / "coredump"
    path.write_bytes(synthetic_core(paths=("/usr/bin/crasher",)))
    with open(path, "rb") as handle:
        mapped = core_map(handle, path.stat().st_size)
        release, how = guessed_release(mapped, {DEBIAN: Index("00" * 20), FEDORA: Index(BUILD_ID.hex())})
        assert (release, how) == (FEDORA, "its index lists the build-id of /usr/bin/crasher")
        release, how = guessed_release(mapped, {DEBIAN: Index(), FEDORA: Index()})
        assert release is None and "no x86_64 release served here lists the build-id" in how


@pytest.fixture
def config(tmp_path):
    return Config(SaveDir=tmp_path / "spool")


def request(config, upload, size):
    return dispatch.prefetch_request(config, f"prefetch {upload} {size}".encode())


def test_a_prefetch_request_names_a_live_upload_and_a_size_it_may_have(config):
    config.SaveDir.mkdir()
    with IncomingTask(config.SaveDir) as upload:
        name = upload.path.name
        assert request(config, name, 5 << 20) == (upload.path / "crash", 5 << 20)
        assert request(config, name, config.max_unpacked_bytes + 1) is None
        assert request(config, name, 0) is None
        assert request(config, "../" + name, 1) is None
        assert request(config, "tmpnosuchupload", 1) is None
        assert dispatch.prefetch_request(config, b"!") is None
    assert request(config, name, 5 << 20) is None  # it ended


def test_only_a_large_enough_coredump_upload_asks_for_a_prefetch(config, monkeypatch):
    sent = []
    monkeypatch.setattr(dispatch, "_send", lambda _config, datagram: sent.append(datagram))
    started = dispatch.prefetch_trigger(config, TaskType.COREDUMP, config.SaveDir / ".incoming" / "tmpabc")
    started("executable", 30)
    started("coredump", (4 << 20) - 1)
    started("coredump", 4 << 20)
    assert sent == [f"prefetch tmpabc {4 << 20}".encode()]
    assert dispatch.prefetch_trigger(config, TaskType.VMCORE, config.SaveDir) is None
    for off in ({"PrefetchPackages": False}, {"Dispatcher": "celery"}):
        assert dispatch.prefetch_trigger(Config(**off), TaskType.COREDUMP, config.SaveDir) is None


class Tree:
    """An unpacked package as its manifest lists it: (path, kind, link target, build-id)."""

    def __init__(self, *entries):
        self.entries = [list(entry) for entry in entries]

    def manifest(self):
        return self.entries


def test_the_unpacked_packages_tell_the_build_ids_before_the_core_s_memory_does():
    """A library's headers come after the program's heap in a core; the package holding its path has them."""
    libc = Tree(("lib/x86_64-linux-gnu/libc.so.6", "f", "", "aa" * 20), ("usr/share/doc/libc6", "d", "", ""))
    program = Tree(("usr/bin/python3.11", "f", "", "bb" * 20), ("usr/bin/python3", "l", "python3.11", ""))
    bases = [("/usr/bin/python3.11", 0x1000), ("/usr/lib/x86_64-linux-gnu/libc.so.6", 0x7F00),
             ("/usr/lib/x86_64-linux-gnu/libnowhere.so", 0x8000)]
    found = packaged_modules(bases, [libc, program], merged=True)
    assert found == [Module("/usr/bin/python3.11", 0x1000, "bb" * 20),
                     Module("/usr/lib/x86_64-linux-gnu/libc.so.6", 0x7F00, "aa" * 20)]
    assert packaged_modules(bases, [libc], merged=False) == [], "/lib and /usr/lib are two places there"


class Package(NamedTuple):
    pkgid: int
    name: str


class Supply:
    """A package supply that records what it was asked to unpack."""

    def __init__(self):
        self.asked = []
        self.counts = CacheCounts()

    def cached(self, package, _index):
        self.asked.append(package)
        self.counts.cache_misses += 1
        return package


def test_packages_not_begun_when_the_upload_ends_are_left_alone():
    """An upload cut short leaves no work behind it: only what was under way finishes."""
    uploading = [True]
    supply, result = Supply(), Prefetched()
    unpacker = _Unpacker(supply, None, result, logging.getLogger("test"), lambda: uploading[0])
    crasher, libcrash, libc6, libc6_dbg = (Package(pkgid, name) for pkgid, name in enumerate(
        ("crasher", "libcrash", "libc6", "libc6-dbg")))
    unpacker.add([crasher, libcrash])
    unpacker.wait()
    uploading[0] = False
    unpacker.add([libc6, libc6_dbg, crasher])  # crasher: named once only
    unpacker.finish()
    assert supply.asked == [crasher, libcrash] and result.packages == [crasher, libcrash, libc6, libc6_dbg]
    assert (result.unpacked, result.skipped) == (2, 2)


def test_a_release_whose_metadata_cannot_be_read_is_not_prefetched_from(tmp_path):
    """A repository being synchronised: the prefetch says why in its line, the worker will say it to the user."""
    (tmp_path / "repos" / "fedora-41-x86_64" / "repodata").mkdir(parents=True)
    (tmp_path / "repos" / "fedora-41-x86_64" / "repodata" / "repomd.xml").write_text("<repomd")
    crash = tmp_path / "crash"
    crash.mkdir()
    (crash / "os_release").write_text("Fedora release 41 (Forty One)\n")
    core = synthetic_core()
    (crash / "coredump").write_bytes(core)
    config = Config(SaveDir=tmp_path / "spool", RepoDir=tmp_path / "repos", CacheDir=tmp_path / "cache")
    result = prefetch(config, crash, len(core), lambda: False, logging.getLogger("test"))
    assert result.release is None and result.packages == []
    assert result.summary().startswith("nothing prefetched: from os_release 'Fedora release 41 (Forty One)'; The "
                                       "repository of fedora-41-x86_64 has no readable repodata/repomd.xml")
