"""A known crash's report at ingest scale: answered from the symbol cache, with the release's index opened only
when a frame or the package needs it, an identical report's symbolization reused, one connection per thread."""

import json
import os
import sqlite3
import threading
import time

import pytest

from retrace_server.config import Config
from retrace_server.lru import LRU
from retrace_server.reports import buckets, triage, ureport
from testkit.debian import flat_apt_index

RELEASE = "debian-12-x86_64"
ZLIB_ID, LIBC_ID = "ab" * 20, "cd" * 20
PACKAGES = f"""Package: zlib1g
Version: 1:1.2.13.dfsg-1
Architecture: amd64
Filename: pool/main/z/zlib/zlib1g_1.2.13.dfsg-1_amd64.deb
SHA256: {"c" * 64}

Package: zlib1g-dbg
Version: 1:1.2.13.dfsg-1
Architecture: amd64
Build-Ids: {ZLIB_ID}
Filename: pool/main/z/zlib/zlib1g-dbg_1.2.13.dfsg-1_amd64.deb
SHA256: {"d" * 64}
"""
SYMBOLS = {(ZLIB_ID, 0x10): [("inflate_fast", "inffast.c", 120), ("inflate", "inflate.c", 30)],
           (ZLIB_ID, 0x20): [("inflate", "inflate.c", 40)], (ZLIB_ID, 0x30): [("uncompress", "uncompr.c", 9)]}


def report(*offsets):
    """A report of a program crashing in zlib (whose debuginfo the release has) called from libc (whose it has
    not), as a machine of the release sends it."""
    frames = [{"build_id": ZLIB_ID, "build_id_offset": offset, "file_name": "/usr/lib/x86_64-linux-gnu/libz.so.1"}
              for offset in offsets]
    frames.append({"build_id": LIBC_ID, "build_id_offset": 0x2a1c9, "file_name": "/usr/lib/x86_64-linux-gnu/libc.so.6"})
    document = {"ureport_version": 2, "os": {"name": "debian", "version": "12", "architecture": "x86_64"},
                "packages": [{"name": "zlib1g", "version": "1.2.13.dfsg", "release": "1", "package_role": "affected"}],
                "problem": {"type": "core", "executable": "/usr/bin/unpacker", "signal": 11,
                            "stacktrace": [{"crash_thread": True, "frames": frames}]}}
    return ureport.parse(json.dumps(document).encode())


@pytest.fixture
def config(tmp_path):
    flat_apt_index(tmp_path / "repos" / RELEASE, PACKAGES, "")
    (tmp_path / "spool").mkdir()
    config = Config(SaveDir=tmp_path / "spool", RepoDir=tmp_path / "repos", CacheDir=tmp_path / "cache",
                    LogDir=tmp_path, MinStorageLeft=0)
    with buckets.BucketDB.for_config(config) as db:
        db.remember_symbols(SYMBOLS)
    return config


@pytest.fixture
def opened(monkeypatch):
    """The release indexes the report path opens, by release."""
    opened = []
    real = triage.release_index

    def counted(repo_dir, cache_dir, release, **options):
        opened.append(str(release))
        return real(repo_dir, cache_dir, release, **options)

    monkeypatch.setattr(triage, "release_index", counted)
    monkeypatch.setattr(triage, "_SYMBOLIZATIONS", LRU(256, weight=32 << 20))
    return opened


def test_a_known_crash_is_answered_from_the_symbol_cache_without_opening_the_releases_index(config, opened):
    db = buckets.BucketDB.kept_open(config)
    first = triage.triage(config, report(0x10, 0x20), db)
    assert opened == [RELEASE], "the first report: the package's name and libc's missing debuginfo are looked up"
    again = [triage.triage(config, report(0x10, 0x20), db) for _ in range(3)]
    other_site = triage.triage(config, report(0x30, 0x20), db)
    assert opened == [RELEASE], "what the index said is remembered until its metadata changes"
    assert [answer["count"] for answer in (first, *again)] == [1, 2, 3, 4]
    assert {answer["rendered"] for answer in again} == {first["rendered"]}
    assert '"function": "inflate_fast", "file": "inffast.c", "line": 120' in first["rendered"]
    assert first["missing_build_ids"] == [LIBC_ID] and other_site["bthash"] != first["bthash"]
    bucket = db.bucket(first["bthash"])
    assert bucket["component"] == "zlib1g" and bucket["versions"] == ["1.2.13.dfsg-1"]

    packages = config.RepoDir / RELEASE / "Packages.xz"
    os.utime(packages, ns=(time.time_ns() + 10**9,) * 2)  # reposync brought new metadata
    after_sync = triage.triage(config, report(0x10, 0x20), db)
    assert opened == [RELEASE, RELEASE] and after_sync["bthash"] == first["bthash"]


def test_an_identical_reports_symbolization_is_reused_only_while_settled_and_the_index_unchanged(
        config, opened, monkeypatch):
    calls = []
    real = triage.symbolicate
    settled = [True]

    def counted(*arguments):
        calls.append(1)
        threads, _ = real(*arguments)
        return threads, settled[0]

    monkeypatch.setattr(triage, "symbolicate", counted)
    db = buckets.BucketDB.kept_open(config)
    for _ in range(3):
        triage.triage(config, report(0x10, 0x20), db)
    assert len(calls) == 1
    triage.triage(config, report(0x20, 0x10), db)
    assert len(calls) == 2, "other frames are symbolized on their own"
    settled[0] = False  # e.g. a debuginfo package failed to download: the next report tries again
    triage.triage(config, report(0x30), db)
    triage.triage(config, report(0x30), db)
    assert len(calls) == 4


def test_each_thread_keeps_its_connection_and_a_replaced_database_is_opened_anew(config):
    first = buckets.BucketDB.kept_open(config)
    with buckets.BucketDB.kept_open(config) as same:
        assert same is first
    assert first.db.execute("SELECT 1").fetchone() == (1,), "leaving the block does not close a kept connection"
    others = []
    thread = threading.Thread(target=lambda: others.append(buckets.BucketDB.kept_open(config)))
    thread.start()
    thread.join()
    assert others[0] is not first

    assert first.symbols({(ZLIB_ID, 0x10)}) == {(ZLIB_ID, 0x10): SYMBOLS[(ZLIB_ID, 0x10)]}
    for suffix in ("", "-wal", "-shm"):  # an administrator starts over with an empty database
        (config.SaveDir / f"{buckets.DB_NAME}{suffix}").unlink(missing_ok=True)
    fresh = buckets.BucketDB.kept_open(config)
    assert fresh is not first
    assert fresh.symbols({(ZLIB_ID, 0x10)}) == {}, "nothing is answered from the replaced file's symbols"
    with pytest.raises(sqlite3.ProgrammingError):
        first.db.execute("SELECT 1")


def test_reports_from_many_threads_are_each_counted_once(config):
    def send(count):
        db = buckets.BucketDB.kept_open(config)
        for _ in range(count):
            triage.triage(config, report(0x10, 0x20), db)

    threads = [threading.Thread(target=send, args=(25,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with buckets.BucketDB.for_config(config) as db:
        assert [bucket["count"] for bucket in db.buckets()] == [200]
        assert db.totals()["reports"] == 200
