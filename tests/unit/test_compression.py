"""Decoders with a memory ceiling: what a stream's header declares, and what the readers then do."""

import bz2
import gzip
import io
import lzma
import os
import subprocess

import pytest
import zstandard

from retrace_server import compression
from retrace_server.compression import (
    DEFAULT_DECODER_MEMORY,
    DecoderMemoryExceeded,
    lzma2_dictionary,
    open_compressed,
    size_text,
    xz_declared_window,
    zstd_declared_window,
)
from tests.integration.test_decoder_memory import xz_declaring, zstd_with_window

DATA = os.urandom(50_000) + bytes(3_000_000)


@pytest.mark.parametrize("preset, dictionary", [(0, 256 * 1024), (2, 2 << 20), (6, 8 << 20), (9, 64 << 20)])
def test_the_dictionary_an_xz_header_declares_is_what_the_preset_chose(preset, dictionary):
    assert xz_declared_window(lzma.compress(b"x", preset=preset)) == dictionary


def test_lzma2_property_bytes_name_their_dictionaries():
    assert [lzma2_dictionary(props) for props in (0, 1, 18, 39, 40, 41)] == [
        4096, 6144, 2 << 20, 3 << 30, 0xFFFFFFFF, None]


@pytest.mark.parametrize("head", [b"", b"\xfd7zXZ\x00", b"not xz at all", lzma.compress(b"")[:13]])
def test_a_header_too_short_or_foreign_declares_nothing(head):
    assert xz_declared_window(head) is None


def test_a_zstd_frame_declares_its_window_or_its_single_segment_content_size():
    assert zstd_declared_window(zstd_with_window(b"x" * 1000, 29)) == 512 << 20
    assert zstd_declared_window(zstandard.ZstdCompressor().compress(b"x" * 1000)) == 1000
    assert zstd_declared_window(b"\x28\xb5\x2f\xfd") is None


@pytest.mark.parametrize("nbytes, text", [(0xFFFFFFFF, "4 GiB"), (65 << 20, "65 MiB"), (1536 << 20, "1.5 GiB"),
                                          (32 * 1024, "32 KiB"), (100, "100 bytes")])
def test_sizes_are_said_as_people_write_them(nbytes, text):
    assert size_text(nbytes) == text


def test_an_xz_stream_declaring_4_gib_is_refused_with_both_sizes_before_any_output():
    with pytest.raises(DecoderMemoryExceeded, match="declares a 4 GiB window; this server decodes with at most 256 MiB"):
        compression.xz_reader(io.BytesIO(xz_declaring(DATA))).read(1)


def test_a_second_stream_is_judged_by_its_own_header():
    good = lzma.compress(DATA, preset=2)
    assert compression.xz_reader(io.BytesIO(good + b"\0" * 4 + good)).read() == DATA + DATA
    with pytest.raises(DecoderMemoryExceeded):
        compression.xz_reader(io.BytesIO(good + xz_declaring(DATA))).read()


def test_the_limit_is_the_caller_s():
    assert compression.xz_reader(io.BytesIO(xz_declaring(DATA, props=34)), 512 << 20).read() == DATA
    with pytest.raises(DecoderMemoryExceeded, match="at most 16 MiB"):
        compression.xz_reader(io.BytesIO(lzma.compress(DATA, preset=9)), 16 << 20).read()


def test_a_truncated_xz_stream_is_eof_error_and_trailing_garbage_after_a_stream_is_ignored():
    good = lzma.compress(DATA, preset=2)
    with pytest.raises(EOFError):
        compression.xz_reader(io.BytesIO(good[:-20])).read()
    assert compression.xz_reader(io.BytesIO(good + b"garbage")).read() == DATA


def test_a_zstd_frame_over_the_limit_is_refused_and_one_under_it_decoded():
    data = zstd_with_window(DATA, 25)
    assert compression.zstd_reader(io.BytesIO(data)).read() == DATA
    with pytest.raises(DecoderMemoryExceeded, match="declares a 32 MiB window; this server decodes with at most 16 MiB"):
        compression.zstd_reader(io.BytesIO(data), 16 << 20).read()


@pytest.mark.parametrize("suffix, compress", [(".xz", lzma.compress), (".gz", gzip.compress), (".bz2", bz2.compress),
                                              (".zst", zstandard.ZstdCompressor().compress), ("", bytes)])
def test_index_files_are_read_through_the_decoder_their_suffix_names(tmp_path, suffix, compress):
    path = tmp_path / f"Packages{suffix}"
    path.write_bytes(compress(DATA))
    with open_compressed(path) as stream:
        assert stream.read() == DATA


def xz_in_blocks(tmp_path, data, *options):
    """``data`` compressed by the real xz with ``options`` (``-T2 --block-size=...`` writes blocks)."""
    plain = tmp_path / "plain"
    plain.write_bytes(data)
    subprocess.run(["xz", "-k", "-f", *options, str(plain)], check=True)
    return (tmp_path / "plain.xz").read_bytes()


def parallel(blob, memlimit=DEFAULT_DECODER_MEMORY):
    handle = io.BytesIO(b"ar header" + blob + b"next member")
    return compression.parallel_xz_reader(handle, len(b"ar header"), len(blob), memlimit)


def test_an_xz_file_in_blocks_is_decoded_two_blocks_at_a_time_to_the_same_bytes(tmp_path):
    data = os.urandom(1 << 20) * 3 + b"x" * (3 << 20)
    reader = parallel(xz_in_blocks(tmp_path, data, "-T2", "--block-size=1MiB"))
    assert reader is not None and reader.read() == data
    reader.close()


@pytest.mark.parametrize("options", [("-T1",), ("-T2", "--block-size=1MiB", "--lzma2=dict=192MiB")])
def test_one_block_or_windows_beyond_each_decoder_s_share_are_left_to_the_streaming_decoder(tmp_path, options):
    assert parallel(xz_in_blocks(tmp_path, b"y" * (3 << 20), *options)) is None


def test_two_concatenated_streams_are_left_to_the_streaming_decoder(tmp_path):
    blob = xz_in_blocks(tmp_path, b"a" * (2 << 20), "-T2", "--block-size=1MiB")
    assert parallel(blob + blob) is None


def test_a_damaged_block_is_an_error_of_the_data_not_wrong_bytes(tmp_path):
    blob = bytearray(xz_in_blocks(tmp_path, os.urandom(3 << 20), "-T2", "--block-size=1MiB"))
    blob[(1 << 20) + 4096] ^= 0xFF  # inside the second block's data
    reader = parallel(bytes(blob))
    with pytest.raises(compression.CORRUPT_DATA):
        reader.read()
    reader.close()


def test_a_decoder_read_ahead_in_its_thread_gives_the_same_bytes_and_its_errors_where_they_happen():
    data = os.urandom(3 << 20)
    reader = compression.read_ahead(compression.xz_reader(io.BytesIO(lzma.compress(data))))
    assert reader.read(5) == data[:5] and reader.read() == data[5:] and reader.read() == b""
    reader.close()
    damaged = bytearray(lzma.compress(data))
    damaged[len(damaged) // 2] ^= 0xFF
    reader = compression.read_ahead(compression.xz_reader(io.BytesIO(bytes(damaged))))
    assert reader.read(1 << 20) == data[:1 << 20], "the bytes before the damage come first"
    with pytest.raises(compression.CORRUPT_DATA):
        reader.read()
    reader.close()


def test_a_read_ahead_closed_early_stops_its_thread_with_at_most_its_depth_decoded():
    reads = []

    class Endless(io.RawIOBase):
        def readinto(self, buffer):
            reads.append(len(buffer))
            buffer[:] = bytes(len(buffer))
            return len(buffer)

    reader = compression.read_ahead(Endless(), depth=2)
    reader.read(10)
    reader.close()
    assert len(reads) <= 2 + 2, "the chunk read, the two waiting, and the one the thread holds"
