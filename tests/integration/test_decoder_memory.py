"""What a compressed stream's header may make the server's decoders hold, through the real server.

An .xz block header can declare a 4 GiB dictionary and a zstd frame a
2 GiB window; before MaxDecoderMemory, a 449 KB vmcore upload raised one
upload daemon to 3 GiB.  Every stream here is a real archive whose header
was rewritten to declare more than it needs (the body decodes as before).
"""

import concurrent.futures
import io
import lzma
import struct
import tarfile
import zlib
from pathlib import Path

import pytest
import zstandard

from testkit.helpers import XZ_TAR, ZSTD_TAR, submit, wait_final

MIB = 1024 * 1024
HUGE = 40  # an LZMA2 property byte: 4 GiB - 1


def xz_declaring(data, props=HUGE):
    """``data`` xz-compressed (-2), its first block header rewritten to declare the dictionary ``props`` names
    (its CRC32 mended): a valid stream whose decoder would be made to hold that much."""
    blob = bytearray(lzma.compress(data, preset=2))
    start, size = 12, (blob[12] + 1) * 4
    assert blob[start + 2:start + 4] == b"\x21\x01", "one LZMA2 filter with one property byte"
    blob[start + 4] = props
    blob[start + size - 4:start + size] = struct.pack("<I", zlib.crc32(bytes(blob[start:start + size - 4])))
    return bytes(blob)


def zstd_with_window(data, window_log):
    """``data`` zstd-compressed as a stream of unknown size, so that its frame declares 2**window_log."""
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=window_log)
    compressor = zstandard.ZstdCompressor(compression_params=params).compressobj()
    return compressor.compress(data) + compressor.flush()


def crash_tar(problem_dir, core_size, name="coredump"):
    """A tar of the problem dir whose dump is ``core_size`` bytes: the real core's head, then zeros."""
    head = (problem_dir / "coredump").read_bytes()[:64 * 1024]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = core_size
        tar.addfile(info, _Zeros(head, core_size))
        if name == "coredump":
            for other in ("executable", "package", "os_release"):
                tar.add(problem_dir / other, arcname=other)
    return buffer.getvalue()


class _Zeros(io.RawIOBase):
    def __init__(self, head, size):
        self.head, self.left = head, size

    def readable(self):
        return True

    def readinto(self, buffer):
        count = min(len(buffer), self.left)
        taken = self.head[:count]
        buffer[:len(taken)] = taken
        buffer[len(taken):count] = bytes(count - len(taken))
        self.head, self.left = self.head[count:], self.left - count
        return count


def peak_rss_mib(server, display_name):
    """The peak resident size (VmHWM, MiB) of each of ``server``'s mod_wsgi daemons called ``display_name``."""
    children = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(parent, []).append(int(proc.name))
    found, stack = [], [server.process.pid]
    while stack:
        pid = stack.pop()
        stack += children.get(pid, [])
        try:
            # mod_wsgi pads the display name with spaces, over the room of Apache's own argv.
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].strip() == display_name.encode():
                status = Path(f"/proc/{pid}/status").read_text()
                found.append(int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) // 1024)
        except (OSError, StopIteration):
            continue
    assert found, f"no {display_name} daemon found under the server"
    return found


REFUSAL = ("The xz data declares a 4 GiB window; this server decodes with at most 256 MiB (MaxDecoderMemory): "
           "compress with a smaller window (xz -9 or zstd -19 at most; ABRT sends xz -2)")


def test_ten_vmcore_uploads_declaring_a_4_gib_dictionary_are_413_and_the_daemons_stay_small(start_server,
                                                                                           problem_dir):
    """Before: each of these 80 KB uploads grew its daemon by the 512 MiB it unpacked to (1 GiB and more
    with ten at once)."""
    server = start_server(MaxPackedSize="64", MaxUnpackedSize="1024", MaxVmcoreUnpackedSize="1024",
                          MaxUploadsPerClient="20", MaxQueuedTasks="40")
    body = xz_declaring(crash_tar(problem_dir, 512 * MIB, name="vmcore"))
    assert len(body) < 200 * 1024

    def post(_):
        return server.post("/create", data=body, headers={"Content-Type": XZ_TAR, "X-Task-Type": "2"})

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(post, range(10)))
    assert [(answer.status_code, answer.text) for answer in answers] == [(413, REFUSAL)] * 10
    assert max(peak_rss_mib(server, "retrace-upload")) < 100
    assert server.task_dirs() == [] and server.incoming() == []


def test_a_coredump_upload_declaring_a_4_gib_dictionary_is_413(server, problem_dir):
    body = xz_declaring(crash_tar(problem_dir, 4 * MIB))
    answer = server.post("/create", data=body, headers={"Content-Type": XZ_TAR})
    assert (answer.status_code, answer.text) == (413, REFUSAL)


def test_the_same_archive_with_its_true_dictionary_is_accepted(server, problem_dir):
    """The rewriting is all that differs: with the dictionary xz -2 writes (2 MiB) the archive retraces."""
    body = xz_declaring((_real_tar(problem_dir)), props=18)
    task_id, auth = submit(server, None, archive=body)
    assert wait_final(server, task_id, auth).headers["X-Task-Status"] == "FINISHED_SUCCESS"


def _real_tar(problem_dir):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in ("coredump", "executable", "package", "os_release"):
            tar.add(problem_dir / name, arcname=name)
    return buffer.getvalue()


def test_a_zstd_upload_whose_frame_declares_a_512_mib_window_is_413(server, problem_dir):
    body = zstd_with_window(crash_tar(problem_dir, 4 * MIB), 29)
    answer = server.post("/create", data=body, headers={"Content-Type": ZSTD_TAR})
    assert answer.status_code == 413
    assert answer.text.startswith("The zstd data declares a 512 MiB window; this server decodes with at most 256 MiB")


@pytest.mark.parametrize("limit, status", [("64", 413), ("1024", 201)])
def test_max_decoder_memory_is_the_administrator_s_to_set(start_server, problem_dir, limit, status):
    server = start_server(MaxDecoderMemory=limit)
    body = xz_declaring(_real_tar(problem_dir), props=32)  # 256 MiB
    answer = server.post("/create", data=body, headers={"Content-Type": XZ_TAR})
    assert answer.status_code == status, answer.text
