"""Whatever form a customer's crash comes in, it becomes crash/ files, recognized by its bytes."""

import gzip
import io
import lzma
import subprocess
import zipfile

import pytest
import zstandard

from retrace_server.errors import InvalidCrashData, MaliciousArchive, UploadTooLarge
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


# -- what customers wrap crashes in, made by the real tools ---------------------------------------------------

def made(tmp_path, command, output, **files):
    """Run a real archiver (``command`` then the file names) over ``files`` written to a work directory."""
    work = tmp_path / f"make-{output}"
    work.mkdir()
    for name, data in files.items():
        (work / name).write_bytes(data)
    subprocess.run([*command, output, *files], cwd=work, check=True, capture_output=True)
    return (work / output).read_bytes()


def test_a_zip_of_a_problem_directory_s_files_is_unpacked_with_the_uploads_rules(tmp_path):
    data = made(tmp_path, ["zip", "-q"], "problem.zip", coredump=CORE, executable=b"/usr/bin/crasher",
                package=b"crasher-1.0-1.fc41")
    sizes, crash_dir = materialize(tmp_path, data, is_vmcore=False)
    assert sizes == {"coredump": len(CORE), "executable": 16, "package": 18}
    assert (crash_dir / "coredump").read_bytes() == CORE


@pytest.mark.parametrize("tool, output", [(["7z", "a", "-bd"], "vmcore.7z"), (["zip", "-q"], "vmcore.zip")])
def test_a_vmcore_in_a_7z_or_a_zip_becomes_crash_vmcore(tmp_path, tool, output):
    sizes, crash_dir = materialize(tmp_path, made(tmp_path, tool, output, vmcore=KDUMP), is_vmcore=True)
    assert sizes == {"vmcore": len(KDUMP)} and (crash_dir / "vmcore").read_bytes() == KDUMP


@pytest.mark.parametrize("tool", ["bzip2", "lzop"])
def test_a_bzip2_or_lzop_compressed_core_becomes_crash_coredump(tmp_path, tool):
    work = tmp_path / "work"
    work.mkdir()
    (work / "core").write_bytes(CORE)
    subprocess.run([tool, "-k", "core"], cwd=work, check=True, capture_output=True)
    compressed = next(path for path in work.iterdir() if path.name != "core").read_bytes()
    sizes, crash_dir = materialize(tmp_path, compressed, is_vmcore=False)
    assert sizes == {"coredump": len(CORE)} and (crash_dir / "coredump").read_bytes() == CORE


def test_a_vmcore_in_a_tar_in_a_zip_in_a_gzip_is_taken_out_layer_by_layer(tmp_path):
    inner = made(tmp_path, ["zip", "-q"], "case.zip", **{"case-4242.tar": tar_of(vmcore=KDUMP)})
    sizes, crash_dir = materialize(tmp_path, gzip.compress(inner), is_vmcore=True)
    assert sizes == {"vmcore": len(KDUMP)} and (crash_dir / "vmcore").read_bytes() == KDUMP
    assert [path.name for path in tmp_path.iterdir() if "layers" in path.name] == [], "the layers are gone"


def test_more_than_three_layers_are_refused(tmp_path):
    data = tar_of(vmcore=KDUMP)
    name = "case.tar"
    for level in range(4):
        data = made(tmp_path, ["zip", "-q"], f"level{level}.zip", **{name: data})
        name = f"level{level}.zip"
    with pytest.raises(InvalidCrashData, match="nests archives and compressed files more than 3 deep"):
        materialize(tmp_path, data, is_vmcore=True)


def test_wrapped_archives_keep_the_uploads_path_rules_and_caps(tmp_path):
    escaping = io.BytesIO()
    with zipfile.ZipFile(escaping, "w") as archive_file:
        archive_file.writestr("../coredump", CORE)
    (tmp_path / "a").mkdir()
    with pytest.raises(MaliciousArchive, match="Paths with '..' are not allowed"):
        materialize(tmp_path / "a", escaping.getvalue(), is_vmcore=False)
    bomb = made(tmp_path, ["zip", "-q"], "bomb.zip", vmcore=KDUMP + bytes(20 * 10 ** 6))
    (tmp_path / "b").mkdir()
    with pytest.raises(UploadTooLarge, match="more than 10000000 bytes"):
        materialize(tmp_path / "b", bomb, is_vmcore=True)
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "vmcore").write_bytes(KDUMP)
    subprocess.run(["zip", "-q", "-P", "secret", "locked.zip", "vmcore"], cwd=locked, check=True)
    (tmp_path / "c").mkdir()
    with pytest.raises(InvalidCrashData, match="The zip file could not be read: it is encrypted; ask for it without a"):
        materialize(tmp_path / "c", (locked / "locked.zip").read_bytes(), is_vmcore=True)
