import functools
import gzip
import hashlib
import io
import lzma
import os
import subprocess
import tarfile

import pytest
import zstandard

from retrace_server.errors import (
    BadRequest,
    InvalidCrashData,
    LengthRequired,
    MaliciousArchive,
    MissingCrashFile,
    NotEnoughStorage,
    UnsupportedArchive,
    UploadTooLarge,
)
from retrace_server.intake import archive, storage
from retrace_server.tasks.task import IncomingTask

CAPS = {"coredump": None, "executable": 512, "package": 128}
LIMITS = archive.Limits(max_unpacked_bytes=1 << 20, files=CAPS, reserve=lambda nbytes: None)


def tar_of(*members):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def receive(body, crash_dir, content_type="application/x-tar", limits=LIMITS, length=None):
    fmt = archive.format_for(content_type)
    return archive.receive_archive(io.BytesIO(body), len(body) if length is None else length, fmt, crash_dir, limits)


GOOD = tar_of(("coredump", b"\x7fELF core"), ("executable", b"/usr/bin/x"))


@pytest.mark.parametrize(
    "content_type, compress",
    [
        ("application/x-tar", lambda b: b),
        ("application/x-xz-compressed-tar", lzma.compress),
        ("application/x-gzip", gzip.compress),
        ("application/x-zstd-compressed-tar", zstandard.ZstdCompressor().compress),
    ],
    ids=["tar", "xz", "gzip", "zstd"],
)
def test_every_supported_format_unpacks(tmp_path, content_type, compress):
    sizes = receive(compress(GOOD), tmp_path, content_type)
    assert sizes == {"coredump": 9, "executable": 10}
    assert (tmp_path / "executable").read_bytes() == b"/usr/bin/x"


def test_formats_are_listed_xz_first():
    assert archive.supported_formats()[0] == "application/x-xz-compressed-tar"


def test_content_type_parameters_and_aliases_are_accepted():
    assert archive.format_for("application/gzip; charset=binary").content_type == "application/x-gzip"


def test_unknown_content_type_is_refused():
    with pytest.raises(UnsupportedArchive, match="not supported"):
        archive.format_for("application/x-rar-compressed")


def test_missing_content_length_is_411():
    with pytest.raises(LengthRequired):
        archive.declared_length(None, 100)


def test_declared_length_over_limit_is_413():
    with pytest.raises(UploadTooLarge, match="at most 100 bytes"):
        archive.declared_length(101, 100)


def test_an_archive_declared_as_another_archive_type_is_read_by_what_its_bytes_are(tmp_path):
    """Upstream's retrace-server-task sends a gzip-compressed tar as application/x-tar."""
    (tmp_path / "again").mkdir()
    assert receive(GOOD, tmp_path, "application/x-xz-compressed-tar") == receive(GOOD, tmp_path / "again")


def test_bytes_that_are_no_archive_are_415_whatever_archive_type_is_declared(tmp_path):
    with pytest.raises(UnsupportedArchive, match="declared as application/x-tar but it is not an archive this server "
                                                 "reads \\(it looks like text/plain\\)"):
        receive(b"a core would be here\n" * 40, tmp_path, "application/x-tar")


def test_body_shorter_than_content_length_is_400(tmp_path):
    with pytest.raises(BadRequest, match="ended after"):
        receive(GOOD, tmp_path, length=len(GOOD) + 100)


def test_member_over_its_cap_is_refused_before_writing(tmp_path):
    with pytest.raises(InvalidCrashData, match="'executable' file is larger than expected"):
        receive(tar_of(("executable", b"/" * 600)), tmp_path)
    assert not (tmp_path / "executable").exists()


def test_total_over_max_unpacked_is_413(tmp_path):
    limits = archive.Limits(max_unpacked_bytes=100, files=CAPS, reserve=lambda nbytes: None)
    with pytest.raises(UploadTooLarge, match="content is too large"):
        receive(tar_of(("coredump", bytes(60)), ("executable", bytes(50))), tmp_path, limits=limits)


def test_insufficient_storage_is_507(tmp_path):
    with IncomingTask(tmp_path) as upload:
        reserve = functools.partial(storage.reserve, tmp_path, upload.path, min_left_bytes=1 << 62)
        limits = archive.Limits(max_unpacked_bytes=1 << 20, files=CAPS, reserve=reserve)
        with pytest.raises(NotEnoughStorage):
            receive(GOOD, upload.crash_dir, limits=limits)


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A real 64 KiB file system: writes past it fail with ENOSPC."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], check=True)
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_disk_filling_up_while_a_member_is_written_is_507_not_a_crash(tiny_filesystem):
    """Another upload can take the space after the free-space check; the client still gets 507."""
    with pytest.raises(NotEnoughStorage, match="not enough storage space"):
        archive._copy_member(io.BytesIO(bytes(256 * 1024)), tiny_filesystem / "coredump", 256 * 1024)


def test_dot_slash_prefix_is_accepted(tmp_path):
    assert receive(tar_of(("./coredump", b"core")), tmp_path) == {"coredump": 4}


@pytest.mark.parametrize(
    "name, fragment",
    [("../coredump", "'..'"), ("/coredump", "Absolute paths"), ("a/coredump", "top level"), ("core", "not allowed")],
)
def test_bad_member_names_are_refused(tmp_path, name, fragment):
    with pytest.raises(MaliciousArchive, match=fragment):
        receive(tar_of((name, b"x")), tmp_path)
    assert os.listdir(tmp_path) == []


def test_symlink_member_is_refused(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("coredump")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(MaliciousArchive, match="Symlinks"):
        receive(buffer.getvalue(), tmp_path)


def test_unprintable_member_name_is_not_echoed(tmp_path):
    with pytest.raises(MaliciousArchive) as refused:
        receive(tar_of(("evil\x1b[2J", b"x")), tmp_path)
    assert "\x1b" not in refused.value.sentence


def test_truncated_member_is_400(tmp_path):
    with pytest.raises(BadRequest, match="corrupt or truncated|truncated"):
        receive(GOOD[:700], tmp_path)


def test_require_files_names_the_missing_one():
    with pytest.raises(MissingCrashFile, match="Required file 'package' is missing"):
        archive.require_files({"coredump": 1, "executable": 1}, ("coredump", "executable", "package"))


def test_a_coredump_whose_first_bytes_are_not_an_elf_core_is_refused_before_it_is_written(tmp_path):
    from retrace_server.intake.crashdata import HEAD_CHECKS
    limits = archive.Limits(max_unpacked_bytes=64 << 20, files=CAPS, reserve=lambda nbytes: None,
                            head_checks=HEAD_CHECKS)
    body = tar_of(("coredump", b"not a core\n" * 3_000_000))
    with pytest.raises(InvalidCrashData, match="The 'coredump' file is not an ELF core file"):
        receive(body, tmp_path, limits=limits)
    assert not (tmp_path / "coredump").exists()


def test_the_md5_of_a_named_file_is_computed_while_it_streams_in(tmp_path):
    core = os.urandom(300_017)
    digests = {"coredump": None}
    fmt = archive.format_for("application/x-tar")
    body = tar_of(("coredump", core), ("executable", b"/usr/bin/x"))
    archive.receive_archive(io.BytesIO(body), len(body), fmt, tmp_path, LIMITS, digests)
    assert digests == {"coredump": hashlib.md5(core).hexdigest()}
