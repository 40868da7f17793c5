"""Whatever form a customer's crash comes in, it becomes crash/ files, recognized by its bytes."""

import gzip
import lzma

import pytest
import zstandard

from retrace_server.errors import InvalidCrashData, UploadTooLarge
from retrace_server.intake import archive, crashdata, imported
from testkit.helpers import regular, tar_bytes

CORE = b"\x7fELF\x02\x01\x01" + bytes(9) + b"\x04\x00" + bytes(46) + b"core memory" * 1000
KDUMP = b"KDUMP   " + bytes(56) + b"kernel memory" * 1000
COMPRESSORS = {"none": lambda data: data, "gzip": gzip.compress, "xz": lzma.compress,
               "zstd": lambda data: zstandard.ZstdCompressor().compress(data)}


def limits(cap=10 ** 7):
    return archive.Limits(cap, crashdata.size_caps(), lambda nbytes: None, crashdata.HEAD_CHECKS)


def tar_of(**files):
    return tar_bytes([regular(name, data) for name, data in files.items()])


def materialize(tmp_path, data, is_vmcore, cap=10 ** 7):
    downloaded = tmp_path / "download.part"
    downloaded.write_bytes(data)
    crash_dir = tmp_path / "crash"
    crash_dir.mkdir()
    return imported.materialize(downloaded, crash_dir, limits(cap), is_vmcore), crash_dir


@pytest.mark.parametrize("compression", COMPRESSORS)
def test_a_bare_or_compressed_vmcore_becomes_crash_vmcore(tmp_path, compression):
    sizes, crash_dir = materialize(tmp_path, COMPRESSORS[compression](KDUMP), is_vmcore=True)
    assert sizes == {"vmcore": len(KDUMP)} and (crash_dir / "vmcore").read_bytes() == KDUMP


@pytest.mark.parametrize("compression", COMPRESSORS)
def test_a_problem_directory_tar_is_unpacked_with_the_uploads_rules(tmp_path, compression):
    data = tar_of(coredump=CORE, executable=b"/usr/bin/crasher", package=b"crasher-1.0-1.fc41")
    sizes, crash_dir = materialize(tmp_path, COMPRESSORS[compression](data), is_vmcore=False)
    assert sizes == {"coredump": len(CORE), "executable": 16, "package": 18}
    assert (crash_dir / "coredump").read_bytes() == CORE


def test_a_bare_core_is_moved_into_place_not_copied(tmp_path):
    downloaded = tmp_path / "download.part"
    downloaded.write_bytes(CORE)
    inode = downloaded.stat().st_ino
    (tmp_path / "crash").mkdir()
    imported.materialize(downloaded, tmp_path / "crash", limits(), is_vmcore=False)
    assert (tmp_path / "crash" / "coredump").stat().st_ino == inode


@pytest.mark.parametrize("data, is_vmcore", [
    (b"just some text\n" * 10, False), (b"%PDF-1.7\n" + bytes(100), True),
    (gzip.compress(b"\x89PNG\r\n\x1a\n" + bytes(100)), False), (b"", True),
    (b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n", False),
], ids=["text", "pdf", "gzip-png", "empty", "private-key"])
def test_what_is_no_dump_is_refused_without_saying_what_it_looks_like(tmp_path, data, is_vmcore):
    """A URL can reach files that are nobody's business: libmagic's opinion of them is not repeated."""
    name = "vmcore" if is_vmcore else "coredump"
    with pytest.raises(InvalidCrashData) as refused:
        materialize(tmp_path, data, is_vmcore)
    assert str(refused.value) == (f"The file is empty, or not a {name}, nor a tar archive or a compressed {name} "
                                  "this server reads")


def test_caps_hold_for_bare_and_compressed_files(tmp_path):
    for name in ("bare", "packed"):
        (tmp_path / name).mkdir()
    with pytest.raises(UploadTooLarge, match=f"The vmcore is {len(KDUMP)} bytes; this server accepts at most 1000"):
        materialize(tmp_path / "bare", KDUMP, True, cap=1000)
    with pytest.raises(UploadTooLarge, match="decompresses to more than 1000 bytes"):
        materialize(tmp_path / "packed", lzma.compress(KDUMP), True, cap=1000)


def test_a_truncated_compressed_file_is_a_sentence(tmp_path):
    with pytest.raises(InvalidCrashData, match="The compressed file is corrupt or truncated"):
        materialize(tmp_path, lzma.compress(KDUMP + bytes(10 ** 6))[:-200], True)


def test_the_head_check_lets_archives_and_dumps_through_and_names_the_rest():
    for head, is_vmcore in ((CORE, False), (KDUMP, True), (gzip.compress(b"x"), True), (tar_of(a=b"1"), False)):
        imported.check_head(head[:8192], is_vmcore)
    with pytest.raises(InvalidCrashData, match="The file is empty, or not a vmcore"):
        imported.check_head(b"<!DOCTYPE html><html><body>404</body></html>", is_vmcore=True)
