"""Decompressors for untrusted streams, each with a ceiling on the memory its sender can make it take.

xz and zstd let the compressor choose the decoder's window: an .xz block
header may declare a 4 GiB LZMA2 dictionary, a zstd frame header a 2 GiB
window, and the decoder then grows towards that size as it writes output (a
449 KB upload once held 3 GiB of an upload daemon).  So every xz and zstd
stream read here is first judged by its header: a declared window above the
limit (``MaxDecoderMemory``, 256 MiB by default; ``xz -9`` needs 65 MiB to
decode, ABRT sends ``xz -2``) is refused with a sentence naming both before a
byte of the body is decoded, and the decoders themselves are built with the
same limit, so that a later block or frame cannot declare more.  gzip (a 32
KiB window) and bzip2 (at most 3.6 MiB, ``-9``) are bounded by their formats.

Every reader here is a buffered binary stream over ``raw`` (any object with
``read``), reads ``raw`` in bounded chunks and never more than it needs.
"""

from __future__ import annotations

import bz2
import concurrent.futures
import gzip
import io
import lzma
import queue
import threading
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Protocol

import zstandard

from retrace_server.errors import UploadTooLarge

MIB = 1024 * 1024
DEFAULT_DECODER_MEMORY = 256 * MIB
CHUNK_SIZE = 1024 * 1024
_XZ_MAGIC = b"\xfd7zXZ\x00"
_XZ_STREAM_HEADER = 12
_LZMA2_FILTER = 0x21
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_DECODER_STATE = MIB
# Compressed input is read this much at a time: decoding then keeps pace with a body that is still arriving
# (1 MiB reads made a 100 MiB xz upload 25 % slower, as the decoder waited for whole megabytes).
_INPUT_SIZE = 16 * 1024
# What the decoders raise on bytes that are not what they claim (bzip2's is a plain OSError).
CORRUPT_DATA = (lzma.LZMAError, zstandard.ZstdError, zlib.error, gzip.BadGzipFile, EOFError)



class DecoderMemoryExceeded(UploadTooLarge):
    """A compressed stream declares a window larger than the decoder may hold (413 for an upload)."""


def size_text(nbytes: int) -> str:
    """``4 GiB``, ``64 MiB``, ``32 KiB``: a window as people write it."""
    for unit, size in (("GiB", 1 << 30), ("MiB", MIB), ("KiB", 1024)):
        if nbytes >= size:
            return f"{nbytes / size:.1f}".rstrip("0").rstrip(".") + f" {unit}"
    return f"{nbytes} bytes"


def _refusal(kind: str, declared: int | None, limit: int) -> DecoderMemoryExceeded:
    what = f"declares a {size_text(declared)} window" if declared else "needs more memory to decode"
    return DecoderMemoryExceeded(
        f"The {kind} data {what}; this server decodes with at most {size_text(limit)} "
        f"(MaxDecoderMemory): compress with a smaller window (xz -9 or zstd -19 at most; ABRT sends xz -2)")


def _varint(data: bytes, position: int) -> tuple[int, int]:
    """An .xz multibyte integer at ``position``: ``(value, next position)``; ValueError when cut short."""
    value = 0
    for shift in range(0, 63, 7):
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
    raise ValueError("an .xz integer longer than nine bytes")


def lzma2_dictionary(props: int) -> int | None:
    """The dictionary size an LZMA2 filter's property byte declares (None: not a valid one)."""
    if props > 40:
        return None
    return 0xFFFFFFFF if props == 40 else (2 | (props & 1)) << (props // 2 + 11)


def xz_declared_window(head: bytes) -> int | None:
    """The LZMA2 dictionary the first block of the .xz stream starting ``head`` declares; None when ``head``
    does not hold a whole first block header (liblzma's own limit still holds then)."""
    try:
        if not head.startswith(_XZ_MAGIC) or head[_XZ_STREAM_HEADER] == 0:  # 0: the index, an empty stream
            return None
        start = _XZ_STREAM_HEADER
        end = start + (head[start] + 1) * 4
        if len(head) < end:
            return None
        flags = head[start + 1]
        position = start + 2
        for present in (0x40, 0x80):  # compressed, then uncompressed size
            if flags & present:
                _, position = _varint(head, position)
        for _ in range((flags & 0x03) + 1):
            filter_id, position = _varint(head, position)
            size, position = _varint(head, position)
            if filter_id == _LZMA2_FILTER and size == 1:
                return lzma2_dictionary(head[position])
            position += size
    except (IndexError, ValueError):
        return None
    return None


def zstd_declared_window(head: bytes) -> int | None:
    """The window the zstd frame starting ``head`` declares (its content size for a single-segment frame)."""
    if not head.startswith(_ZSTD_MAGIC) or len(head) < 6:
        return None
    descriptor = head[4]
    content_size_flag, single_segment, dictionary_flag = descriptor >> 6, descriptor & 0x20, descriptor & 0x03
    if not single_segment:
        window = head[5]
        log = 10 + (window >> 3)
        return (1 << log) + ((1 << log) >> 3) * (window & 0x07)
    position = 5 + (0, 1, 2, 4)[dictionary_flag]
    width = (1, 2, 4, 8)[content_size_flag]
    field = head[position:position + width]
    if len(field) < width:
        return None
    size = int.from_bytes(field, "little")
    return size + 256 if width == 2 else size


class _XzStreams(io.RawIOBase):
    """The decoded bytes of one or more concatenated .xz streams (``cat a.xz b.xz``, old parallel ``xz``),
    each judged by its header before its decoder is made."""

    def __init__(self, raw: BinaryIO, memlimit: int) -> None:
        super().__init__()
        self._raw, self._memlimit = raw, memlimit
        self._decoder: lzma.LZMADecompressor | None = None
        self._pending = b""
        self._streams = 0
        self._finished = False

    def readable(self) -> bool:
        return True

    def _fill(self, size: int) -> None:
        while len(self._pending) < size:
            data = self._raw.read(max(CHUNK_SIZE, size - len(self._pending)))
            if not data:
                return
            self._pending += data

    def _next_stream(self) -> bool:
        """Make the decoder of the next stream; False at the end of the data."""
        if self._finished:
            return False
        self._fill(_XZ_STREAM_HEADER + 1)
        if self._streams:
            self._pending = self._pending.lstrip(b"\0")  # stream padding
            self._fill(_XZ_STREAM_HEADER + 1)
            if not self._pending.startswith(_XZ_MAGIC):  # what follows the last stream is not ours, as for LZMAFile
                self._finished = True
                return False
        elif not self._pending:
            self._finished = True
            return False
        self._fill(_XZ_STREAM_HEADER + 1024)
        declared = xz_declared_window(self._pending)
        if declared is not None and declared > self._memlimit:
            raise _refusal("xz", declared, self._memlimit)
        # liblzma counts its own state (tens of KiB) too: a window of exactly the limit is let through.
        self._decoder = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=self._memlimit + _DECODER_STATE)
        self._streams += 1
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while self._decoder is not None or self._next_stream():
            assert self._decoder is not None
            data = b""
            if self._decoder.needs_input:
                data, self._pending = self._pending or self._raw.read(_INPUT_SIZE), b""
                if not data:
                    raise EOFError("the xz data ends before its end-of-stream marker")
            try:
                out = self._decoder.decompress(data, len(buffer))
            except lzma.LZMAError as err:
                if "Memory usage limit" in str(err):
                    raise _refusal("xz", None, self._memlimit) from None
                raise
            if self._decoder.eof:
                self._pending = self._decoder.unused_data + self._pending
                self._decoder = None
            if out:
                buffer[:len(out)] = out
                return len(out)
        return 0


# A block decoded alongside others may unpack to this much at most (xz -T makes blocks of 3 dictionaries: 24 MiB
# at -6); a file with larger blocks is read by the one streaming decoder.
_PARALLEL_BLOCK = 64 * MIB
_PARALLEL_BLOCKS = 4096
_CHECK_SIZES = {0: 0, 1: 4, 4: 8, 10: 32}


def _xz_blocks(handle: BinaryIO, start: int, size: int) -> tuple[bytes, list[tuple[int, int, int]]] | None:
    """``(stream header, [(offset, unpadded size, uncompressed size)] per block)`` of an .xz file of one stream
    at ``start`` (``size`` bytes), from its index; None when it is not that (several streams, padding, a
    damaged index, blocks too large to decode side by side)."""
    if size < 2 * _XZ_STREAM_HEADER:
        return None
    handle.seek(start)
    header = handle.read(_XZ_STREAM_HEADER)
    handle.seek(start + size - _XZ_STREAM_HEADER)
    footer = handle.read(_XZ_STREAM_HEADER)
    if not header.startswith(_XZ_MAGIC) or footer[-2:] != b"YZ" or footer[8:10] != header[6:8]:
        return None
    if header[7] not in _CHECK_SIZES or zlib.crc32(footer[4:10]) != int.from_bytes(footer[:4], "little"):
        return None
    index_size = (int.from_bytes(footer[4:8], "little") + 1) * 4
    if index_size > size - 2 * _XZ_STREAM_HEADER or index_size > 16 * MIB:
        return None
    handle.seek(start + size - _XZ_STREAM_HEADER - index_size)
    index = handle.read(index_size)
    if index[:1] != b"\0" or zlib.crc32(index[:-4]) != int.from_bytes(index[-4:], "little"):
        return None
    try:
        count, position = _varint(index, 1)
        if count > _PARALLEL_BLOCKS:
            return None
        blocks, offset = [], start + _XZ_STREAM_HEADER
        for _ in range(count):
            unpadded, position = _varint(index, position)
            uncompressed, position = _varint(index, position)
            if uncompressed > _PARALLEL_BLOCK or unpadded < 5:
                return None
            blocks.append((offset, unpadded, uncompressed))
            offset += (unpadded + 3) & ~3
    except (IndexError, ValueError):
        return None
    if offset != start + size - _XZ_STREAM_HEADER - index_size:
        return None
    return header, blocks


def _one_block_stream(header: bytes, block: bytes, unpadded: int, uncompressed: int) -> bytes:
    """A whole .xz stream of one block: liblzma then checks the block's own check (CRC64, SHA-256)."""
    records = b"".join(_varint_bytes(value) for value in (1, unpadded, uncompressed))
    index = b"\0" + records
    index += b"\0" * (-len(index) % 4)
    index += zlib.crc32(index).to_bytes(4, "little")
    backward = (len(index) // 4 - 1).to_bytes(4, "little") + header[6:8]
    return header + block + index + zlib.crc32(backward).to_bytes(4, "little") + backward + b"YZ"


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class _Chunked(io.RawIOBase):
    """A raw stream of the whole chunks ``_next_chunk`` decodes (``b""`` at the end), handed out in the
    sizes the reader asks for."""

    def __init__(self) -> None:
        super().__init__()
        self._current = memoryview(b"")

    def readable(self) -> bool:
        return True

    def _next_chunk(self) -> bytes:
        raise NotImplementedError

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if not self._current:
            self._current = memoryview(self._next_chunk())
        size = min(len(buffer), len(self._current))
        buffer[:size] = self._current[:size]
        self._current = self._current[size:]
        return size


class _ParallelXz(_Chunked):
    """The blocks of one .xz stream decoded ``threads`` at a time (liblzma lets go of the GIL), in order.

    What ``xz -T0 -d`` does for files ``xz -T`` wrote (dpkg-deb's are): a
    kernel's 270 MiB -dbg package takes half the time on two cores.  Each
    block is decoded as a stream of its own with the same limit as the
    streaming decoder, its header judged first, its check verified.
    """

    def __init__(self, handle: BinaryIO, header: bytes, blocks: list[tuple[int, int, int]], memlimit: int,
                 threads: int) -> None:
        super().__init__()
        self._handle, self._header, self._memlimit = handle, header, memlimit
        self._blocks = iter(blocks)
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="xz")
        self._ahead: list[concurrent.futures.Future[bytes]] = []
        self._threads = threads

    def _submit(self) -> None:
        while len(self._ahead) <= self._threads:
            block = next(self._blocks, None)
            if block is None:
                return
            offset, unpadded, uncompressed = block
            self._handle.seek(offset)
            data = self._handle.read((unpadded + 3) & ~3)
            declared = xz_declared_window(self._header + data[:1024])
            if declared is not None and declared > self._memlimit:
                raise _refusal("xz", declared, self._memlimit)
            self._ahead.append(self._pool.submit(self._decode, data, unpadded, uncompressed))

    def _decode(self, block: bytes, unpadded: int, uncompressed: int) -> bytes:
        decoder = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=self._memlimit + _DECODER_STATE)
        out = decoder.decompress(_one_block_stream(self._header, block, unpadded, uncompressed))
        if not decoder.eof or len(out) != uncompressed:
            raise EOFError("an xz block does not decode to the size its index gives")
        return out

    def _next_chunk(self) -> bytes:
        self._submit()
        if not self._ahead:
            return b""
        chunk = self._ahead.pop(0).result()
        self._submit()
        return chunk

    def close(self) -> None:
        for future in self._ahead:
            future.cancel()
        self._pool.shutdown(wait=True)
        super().close()


class _ReadAhead(_Chunked):
    """A decoder run one step ahead in a thread of its own, so that decoding (liblzma lets go of the GIL) and
    what the reader does with the bytes (a package's files written) overlap on two cores, as dpkg-deb's
    decompressor process and its tar do.

    At most ``depth`` chunks wait decoded; an error the decoder raises is raised to the reader at the place
    in the stream it happened; closing stops the thread before the next chunk.
    """

    def __init__(self, source: BinaryIO, depth: int) -> None:
        super().__init__()
        self._source = source
        self._chunks: queue.Queue[bytes | BaseException] = queue.Queue(depth)
        self._stop = threading.Event()
        self._ended = False
        self._thread = threading.Thread(target=self._decode, name="read-ahead", daemon=True)
        self._thread.start()

    def _decode(self) -> None:
        while not self._stop.is_set():
            try:
                chunk: bytes | BaseException = self._source.read(CHUNK_SIZE)
            except BaseException as err:  # raised again in the reader's thread
                chunk = err
            while not self._stop.is_set():
                try:
                    self._chunks.put(chunk, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if not chunk or isinstance(chunk, BaseException):
                return

    def _next_chunk(self) -> bytes:
        if self._ended:
            return b""
        chunk = self._chunks.get()
        self._ended = not chunk or isinstance(chunk, BaseException)
        if isinstance(chunk, BaseException):
            raise chunk
        return chunk

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        super().close()


def read_ahead(source: BinaryIO, depth: int = 4) -> io.BufferedReader:
    """``source`` (a decoder) decoded up to ``depth`` chunks ahead of its reader, in a thread (``_ReadAhead``)."""
    return io.BufferedReader(_ReadAhead(source, depth), CHUNK_SIZE)


def parallel_xz_reader(handle: BinaryIO, start: int, size: int, memlimit: int = DEFAULT_DECODER_MEMORY,
                       threads: int = 2) -> io.BufferedReader | None:
    """The .xz file of ``size`` bytes at ``start`` of the seekable ``handle`` decoded ``threads`` blocks at a
    time, the decoders sharing ``memlimit``; None when it is not one stream of several blocks of bounded
    size whose first declares a window the shared limit allows (``xz_reader`` reads it then, from ``start``)."""
    found = _xz_blocks(handle, start, size)
    share = memlimit // threads
    if found is not None and len(found[1]) >= 2:
        handle.seek(found[1][0][0])
        declared = xz_declared_window(found[0] + handle.read(1024))
        if declared is not None and declared <= share:
            handle.seek(start)
            return io.BufferedReader(_ParallelXz(handle, *found, share, threads), CHUNK_SIZE)
    handle.seek(start)
    return None


class _ZstdFrames(io.RawIOBase):
    """The decoded bytes of a zstd stream whose frames may declare at most ``memlimit`` of window."""

    def __init__(self, raw: BinaryIO, memlimit: int) -> None:
        super().__init__()
        buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(RawReader(raw), CHUNK_SIZE)
        declared = zstd_declared_window(buffered.peek(18)[:18])
        if declared is not None and declared > memlimit:
            raise _refusal("zstd", declared, memlimit)
        self._memlimit = memlimit
        self._reader = zstandard.ZstdDecompressor(max_window_size=memlimit).stream_reader(
            buffered, read_size=_INPUT_SIZE, read_across_frames=True)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        try:
            data = self._reader.read(len(buffer))
        except zstandard.ZstdError as err:
            if "too much memory" in str(err):
                raise _refusal("zstd", None, self._memlimit) from None
            raise
        buffer[:len(data)] = data
        return len(data)


class Readable(Protocol):
    """Anything with ``read(size)``: a file, a request body, a decompressor's reader."""

    def read(self, size: int, /) -> bytes: ...


class RawReader(io.RawIOBase):
    """Any ``read(size)`` object as a raw stream, so that it can be buffered (the decompressors and the upload
    sniffing read through one)."""

    def __init__(self, source: Readable) -> None:
        super().__init__()
        self._source = source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._source.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def xz_reader(raw: BinaryIO, memlimit: int = DEFAULT_DECODER_MEMORY) -> io.BufferedReader:
    return io.BufferedReader(_XzStreams(raw, memlimit), CHUNK_SIZE)


def zstd_reader(raw: BinaryIO, memlimit: int = DEFAULT_DECODER_MEMORY) -> io.BufferedReader:
    return io.BufferedReader(_ZstdFrames(raw, memlimit), CHUNK_SIZE)


def gzip_reader(raw: BinaryIO, memlimit: int = DEFAULT_DECODER_MEMORY) -> io.BufferedReader:
    """gzip's window is 32 KiB by its format: ``memlimit`` has nothing to bound."""
    return io.BufferedReader(gzip.GzipFile(fileobj=raw, mode="rb"), CHUNK_SIZE)


def bzip2_reader(raw: BinaryIO, memlimit: int = DEFAULT_DECODER_MEMORY) -> io.BufferedReader:
    """bzip2 needs at most 3.6 MiB (blocks of 900 kB, ``-9``) by its format."""
    return io.BufferedReader(bz2.BZ2File(raw, mode="rb"), CHUNK_SIZE)


Decoder = Callable[[BinaryIO, int], io.BufferedReader]
BY_SUFFIX: dict[str, Decoder] = {".xz": xz_reader, ".zst": zstd_reader, ".gz": gzip_reader, ".bz2": bzip2_reader}


def open_compressed(path: Path, memlimit: int = DEFAULT_DECODER_MEMORY) -> BinaryIO:
    """``path`` read through the decoder its suffix names (a plain file when it names none)."""
    decoder = BY_SUFFIX.get(Path(path).suffix)
    handle = open(path, "rb")
    if decoder is None:
        return handle
    try:
        reader = decoder(handle, memlimit)
    except BaseException:
        handle.close()
        raise
    return _Closing(reader, handle)


class _Closing(io.BufferedReader):
    """A reader that closes the file under it too."""

    def __init__(self, reader: io.BufferedReader, handle: BinaryIO) -> None:
        super().__init__(RawReader(reader), CHUNK_SIZE)
        self._under = (reader, handle)

    def close(self) -> None:
        super().close()
        for stream in self._under:
            stream.close()
