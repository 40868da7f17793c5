"""Crash data a support engineer points at instead of uploading: a URL, a file in ImportDirs, the FTP drop.

Customer vmcores are tens of GiB and already sit somewhere: a web or FTP
server, a share mounted on this host, the FTP drop customers upload to.
The manager checks a source when the task is created (so that a typo, a
closed port or a path outside ``ImportDirs`` is a sentence at once, not a
failed task later) and stores it in the task's ``remote`` file (upstream's
name and format: one source per line, ``FTP <name>`` for the drop); the
worker fetches it with progress in the task log.  Every source is
untrusted: sizes are capped while the bytes flow, and a path is checked
where it really leads, after symlinks, on the file actually opened.
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import ftplib
import http.client
import os
import socket
import ssl
import stat
import threading
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from retrace_server import __version__
from retrace_server.errors import BadRequest, NotFound, UploadTooLarge, disk_full_explained
from retrace_server.intake.storage import NO_STORAGE, ensure_free

if TYPE_CHECKING:
    import hashlib
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from retrace_server.config import Config
    from retrace_server.paths import StrPath

    # The FTP drop's plain files: (name, size or None when the server does not say), by name.
    DropListing = list[tuple[str, int | None]]

PROGRESS_FILE = "progress"
_FTP_DROP_PREFIX = "FTP "
_CHUNK = 1024 * 1024
_CONNECT_TIMEOUT = 10
_READ_TIMEOUT = 120
_PROGRESS_SECONDS = 30
_SCHEMES = ("http", "https", "ftp")
_DEFAULT_PORTS = {"https": 443, "ftp": 21}
_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_REDIRECTS = 5
# How long the manager may wait on a source before it answers the engineer.
CHECK_SECONDS = 20.0
# How far ahead a download claims room on the disk.
ROOM_STEP = 64 * 1024 * 1024


class SourceError(BadRequest):
    """A source that cannot be read: the sentence says what to fix."""


@dataclasses.dataclass(frozen=True)
class Source:
    """``kind`` is ``url``, ``path`` (a file under ImportDirs) or ``drop`` (a file name on the FTP drop)."""

    kind: str
    location: str

    def line(self) -> str:
        return f"{_FTP_DROP_PREFIX}{self.location}" if self.kind == "drop" else self.location

    @classmethod
    def from_line(cls, line: str) -> Source:
        if line.startswith(_FTP_DROP_PREFIX):
            return cls("drop", line[len(_FTP_DROP_PREFIX):])
        return cls("path" if line.startswith("/") else "url", line)

    @property
    def shown(self) -> str:
        """The source for pages and logs: a URL's password is never shown."""
        if self.kind == "drop":
            return f"{self.location} on the FTP drop"
        if self.kind == "url":
            parts = urllib.parse.urlsplit(self.location)
            if parts.password is not None:
                netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
                return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
        return self.location

    @property
    def name(self) -> str:
        """The file's own name, for the task log."""
        path = urllib.parse.urlsplit(self.location).path if self.kind == "url" else self.location
        return urllib.parse.unquote(path.rstrip("/").rsplit("/", 1)[-1]) or "download"


def parse_source(text: str | None) -> Source:
    """A Source from what an engineer typed: an http(s)/ftp URL, a server path or ``file://`` URL."""
    text = (text or "").strip()
    if not text:
        raise SourceError("Give the URL or the server path of the core or vmcore to retrace")
    if _has_control(text) or len(text) > 2048:
        raise SourceError("The URL or path holds control characters or is longer than 2048 characters")
    if text.startswith("file://"):
        text = urllib.parse.unquote(urllib.parse.urlsplit(text).path)
    if text.startswith("/"):
        return Source("path", text)
    parts = urllib.parse.urlsplit(text)
    if parts.scheme.lower() not in _SCHEMES or not parts.hostname:
        raise SourceError(f"'{text[:200]}' is neither an http, https or ftp URL nor an absolute path on the server")
    try:
        _ = parts.port  # a port that is not a number raises here
    except ValueError:
        raise SourceError(f"The URL's port is not a number: '{parts.netloc}'") from None
    decoded = [urllib.parse.unquote(part or "") for part in (parts.username, parts.password, parts.path, parts.query)]
    if any(_has_control(part) for part in decoded):
        raise SourceError("The URL holds encoded control characters (such as %0d%0a); give the file's plain URL")
    return Source("url", text)


def _has_control(text: str) -> bool:
    return any(ord(char) < 0x20 or ord(char) == 0x7F for char in text)


# -- paths under ImportDirs -------------------------------------------------------


def _inside(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


@contextlib.contextmanager
def open_import(path_text: str, import_dirs: Sequence[StrPath]) -> Iterator[BinaryIO]:
    """The opened file at ``path_text``, which must really be under one of ``import_dirs``.

    The check is made on the file opened, through ``/proc/self/fd``, after
    every symlink was followed: a link planted inside an import directory
    that leads out of it, or swapped between check and open, is refused.
    """
    roots = [Path(os.path.realpath(directory)) for directory in import_dirs]
    if not roots:
        raise SourceError("This server imports no server paths (ImportDirs is empty); give a URL instead")
    # One sentence whether the file is missing, unreadable or outside: nothing tells what exists elsewhere.
    refusal = SourceError(f"There is no file {path_text} this server may import (ImportDirs: "
                          f"{' '.join(str(directory) for directory in import_dirs)})")
    if not _inside(Path(os.path.normpath(path_text)), [Path(directory) for directory in import_dirs] + roots):
        raise refusal
    try:
        fd = os.open(path_text, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        raise refusal from None
    try:
        real = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if not _inside(real, roots):
            raise refusal
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SourceError(f"{path_text} is not a regular file")
        with open(fd, "rb", closefd=False) as handle:
            yield handle
    finally:
        os.close(fd)


# -- URLs -------------------------------------------------------------------------


def _where(location: str) -> str:
    parts = urllib.parse.urlsplit(location)
    return f"{parts.hostname}:{parts.port or _DEFAULT_PORTS.get(parts.scheme.lower(), 80)}"


def _connection_sentence(location: str, err: BaseException) -> str:
    where = _where(location)
    if isinstance(err, socket.gaierror):
        return f"Cannot reach {where}: its host name cannot be resolved"
    if isinstance(err, ConnectionRefusedError):
        return f"Cannot reach {where}: the connection was refused (nothing listens on that port)"
    if isinstance(err, (TimeoutError, socket.timeout)):
        return f"Cannot reach {where}: it did not answer in time"
    if isinstance(err, ssl.SSLError):
        return f"Cannot reach {where}: its TLS certificate is not trusted or the handshake failed"
    if isinstance(err, http.client.HTTPException):
        return f"Cannot reach {where}: it did not answer in HTTP"
    return f"Cannot reach {where}: {type(err).__name__}"


class _Watchdog:
    """Cuts the sockets of one check at its deadline, however slowly the far end answers: a WSGI thread waits
    CHECK_SECONDS at most, not every byte's own read timeout."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.deadline, self.fired = seconds, time.monotonic() + seconds, False
        self._timers: list[threading.Timer] = []

    def guard(self, sock: socket.socket) -> None:
        timer = threading.Timer(max(0.0, self.deadline - time.monotonic()), self._cut, (sock,))
        timer.daemon = True
        timer.start()
        self._timers.append(timer)

    def _cut(self, sock: socket.socket) -> None:
        self.fired = True
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        for timer in self._timers:
            timer.cancel()

    def refusal(self, source: Source) -> SourceError:
        return SourceError(f"{_where(source.location)} did not answer within {self.seconds:g} s; check the URL, or "
                           "import the file from a faster server")


def _ftp_connect(host: str, port: int, user: str, password: str, use_tls: bool,
                 watchdog: _Watchdog | None = None) -> ftplib.FTP:
    client = ftplib.FTP_TLS(timeout=_READ_TIMEOUT) if use_tls else ftplib.FTP(timeout=_READ_TIMEOUT)
    try:
        client.connect(host, port, timeout=_CONNECT_TIMEOUT)
        if watchdog is not None and client.sock is not None:
            watchdog.guard(client.sock)
        try:
            client.login(user, password)
        except ftplib.error_perm as err:
            raise SourceError(f"The FTP server {host}:{port} refused the login as '{user}': "
                              f"{str(err)[:120]}") from None
        if isinstance(client, ftplib.FTP_TLS):
            client.prot_p()
        client.voidcmd("TYPE I")
    except BaseException:
        with contextlib.suppress(OSError, EOFError, ftplib.Error):
            client.close()
        raise
    return client


def _ftp_size(client: ftplib.FTP, name: str, shown: str) -> int | None:
    try:
        return client.size(name)
    except ftplib.error_perm:
        raise SourceError(f"There is no file {shown}") from None


def _ftp_url_parts(location: str) -> tuple[str, int, str, str, str]:
    parts = urllib.parse.urlsplit(location)
    user = urllib.parse.unquote(parts.username) if parts.username else "anonymous"
    password = urllib.parse.unquote(parts.password) if parts.password else ""
    return parts.hostname or "", parts.port or 21, user, password, urllib.parse.unquote(parts.path)


@contextlib.contextmanager
def _reached(source: Source, watchdog: _Watchdog | None = None) -> Iterator[None]:
    """Network failures of a source as SourceError sentences (one past the check's deadline says so)."""
    try:
        yield
    except (OSError, EOFError, ftplib.Error, http.client.HTTPException, SourceError) as err:
        if watchdog is not None and watchdog.fired:
            raise watchdog.refusal(source) from None
        if isinstance(err, SourceError):
            raise
        raise SourceError(_connection_sentence(source.location, err)) from None
    finally:
        if watchdog is not None:
            watchdog.cancel()
    if watchdog is not None and watchdog.fired:  # what was read before the cut is not the answer
        raise watchdog.refusal(source)


def _same_server(location: str, target: str) -> bool:
    """A redirect may move a file on its server, never to another scheme, host or port (the engineer named
    that server; a redirect elsewhere would make this one fetch from wherever the far end likes)."""
    current, new = urllib.parse.urlsplit(location), urllib.parse.urlsplit(target)
    return (current.scheme.lower(), _where(location)) == (new.scheme.lower(), _where(target))


@contextlib.contextmanager
def _http_response(location: str, watchdog: _Watchdog | None = None) -> Iterator[http.client.HTTPResponse]:
    """The answer to GET ``location``, after redirects on the same server; SourceError for an HTTP error."""
    shown = Source("url", location).shown
    for _ in range(_MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(location)
        connection: http.client.HTTPConnection
        if parts.scheme.lower() == "https":
            connection = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=_CONNECT_TIMEOUT,
                                                     context=ssl.create_default_context())
        else:
            connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=_CONNECT_TIMEOUT)
        try:
            connection.connect()
            connection.sock.settimeout(_READ_TIMEOUT)
            if watchdog is not None:
                watchdog.guard(connection.sock)
            headers = {"Accept-Encoding": "identity", "User-Agent": f"retrace-server/{__version__}"}
            if parts.username is not None:
                credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
                headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
            connection.request("GET", urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, "")),
                               headers=headers)
            answer = connection.getresponse()
            if answer.status in _REDIRECTS and answer.getheader("Location"):
                target = urllib.parse.urljoin(location, answer.getheader("Location"))
                if not _same_server(location, target):
                    raise SourceError(f"{shown} redirects to another server; give the file's final URL instead")
                location = target
                continue
            if answer.status >= 400:
                raise SourceError(f"{shown} answered HTTP {answer.status}; check the URL")
            yield answer
            return
        finally:
            connection.close()
    raise SourceError(f"{shown} redirects more than {_MAX_REDIRECTS} times")


def _http_head(location: str, head_size: int, watchdog: _Watchdog) -> tuple[int | None, bytes]:
    """``(announced size or None, first bytes)``, after checking that the server serves the URL."""
    with _http_response(location, watchdog) as answer:
        length = answer.getheader("Content-Length") or ""
        return int(length) if length.isdigit() else None, answer.read(head_size)


# -- the FTP drop -----------------------------------------------------------------


class FtpDrop:
    """The FTP drop of the config (UseFTPTasks, FTPHost, FTPUser, FTPPass, FTPDir, FTPSSL)."""

    def __init__(self, config: Config) -> None:
        if not config.UseFTPTasks or not config.FTPHost:
            raise NotFound("This server has no FTP drop (UseFTPTasks = 0 or no FTPHost)")
        host, _, port = config.FTPHost.rpartition(":") if config.FTPHost.count(":") == 1 else (config.FTPHost, "", "")
        self.host, self.port = host, int(port) if port.isdigit() else 21
        self.config = config

    @contextlib.contextmanager
    def session(self, watchdog: _Watchdog | None = None) -> Iterator[ftplib.FTP]:
        source = Source("url", f"ftp://{self.host}:{self.port}/")
        with _reached(source, watchdog):
            client = _ftp_connect(self.host, self.port, self.config.FTPUser, self.config.FTPPass, self.config.FTPSSL,
                                  watchdog)
            try:
                client.cwd(self.config.FTPDir)
                yield client
            finally:
                with contextlib.suppress(OSError, EOFError, ftplib.Error):
                    client.quit()

    def listing(self, limit: int = 5000) -> DropListing:
        """``[(name, size or None)]`` of the plain files in FTPDir, sorted by name; at most ``limit``."""
        with self.session(_Watchdog(CHECK_SECONDS)) as client:
            try:
                entries = [(name, facts) for name, facts in client.mlsd(facts=["type", "size"])
                           if facts.get("type") == "file"]
                files = [(name, int(facts["size"]) if facts.get("size", "").isdigit() else None)
                         for name, facts in entries]
            except ftplib.error_perm:
                files = [(name, None) for name in client.nlst()]
        return sorted((name, size) for name, size in files if is_drop_name(name))[:limit]


def is_drop_name(name: str) -> bool:
    """File names from the FTP server are untrusted: a plain name only, nothing that walks or breaks lines."""
    return (0 < len(name) <= 255 and "/" not in name and name not in (".", "..")
            and all(0x20 <= ord(char) != 0x7F for char in name))


# -- checking (the manager) and fetching (the worker) -----------------------------


def _is_ftp(source: Source) -> bool:
    return source.kind == "drop" or (source.kind == "url"
                                     and urllib.parse.urlsplit(source.location).scheme.lower() == "ftp")


@contextlib.contextmanager
def _ftp(source: Source, config: Config, watchdog: _Watchdog | None = None) -> Iterator[tuple[ftplib.FTP, str, int]]:
    """``(client, path on the server, block size)`` for a file on the FTP drop or at an ftp:// URL."""
    if source.kind == "drop":
        if not is_drop_name(source.location):
            raise SourceError("That is not a file name on the FTP drop")
        with FtpDrop(config).session(watchdog) as client:
            yield client, source.location, config.FTPBufferSize * _CHUNK
        return
    host, port, user, password, path = _ftp_url_parts(source.location)
    with _reached(source, watchdog):
        client = _ftp_connect(host, port, user, password, False, watchdog)
        try:
            yield client, path, _CHUNK
        finally:
            with contextlib.suppress(OSError, EOFError, ftplib.Error):
                client.quit()


def check(source: Source, config: Config, head_size: int = 8192) -> tuple[int | None, bytes | None]:
    """SourceError unless ``source`` can be read now; returns ``(size or None, its first bytes or None)``.

    The first bytes let the manager refuse what is not a dump at once; an
    FTP source's are not read (aborting a transfer is not portable).
    """
    if source.kind == "path":
        with open_import(source.location, config.import_dirs) as handle:
            return os.fstat(handle.fileno()).st_size, handle.read(head_size)
    watchdog = _Watchdog(CHECK_SECONDS)
    if _is_ftp(source):
        with _ftp(source, config, watchdog) as (client, path, _blocksize), _reached(source, watchdog):
            return _ftp_size(client, path, source.shown), None
    with _reached(source, watchdog):
        return _http_head(source.location, head_size, watchdog)


class _Sink:
    """The file being fetched: counts, caps, keeps room on the disk, digests and reports progress.

    ``ensure_room(nbytes)`` raises NotEnoughStorage unless ``nbytes`` more
    fit above MinStorageLeft; it is asked for every ROOM_STEP bytes ahead,
    so a source that announces no size cannot fill the spool's volume.
    """

    def __init__(self, target: Path, cap: int, total: int | None, progress: Callable[[int, int | None], None],
                 digest: hashlib._Hash | None, ensure_room: Callable[[int], None]) -> None:
        self.handle = open(target, "xb")
        self.cap, self.total, self.progress, self.digest = cap, total, progress, digest
        self.ensure_room = ensure_room
        self.written = self.room_until = 0
        self.reported = time.monotonic()

    def write(self, chunk: bytes) -> None:
        self.written += len(chunk)
        if self.written > self.cap:
            raise UploadTooLarge(f"The file is larger than this server accepts ({self.cap} bytes)")
        if self.written > self.room_until:
            self.ensure_room(ROOM_STEP)
            self.room_until = self.written + ROOM_STEP
        with disk_full_explained(NO_STORAGE):
            self.handle.write(chunk)
        if self.digest is not None:
            self.digest.update(chunk)
        if time.monotonic() - self.reported >= _PROGRESS_SECONDS:
            self.reported = time.monotonic()
            self.progress(self.written, self.total)


def fetch(source: Source, target: Path, config: Config, cap: int, progress: Callable[[int, int | None], None],
          digest: hashlib._Hash | None = None) -> int:
    """Copy ``source`` to the new file ``target`` (at most ``cap`` bytes, leaving MinStorageLeft free);
    returns the size.

    ``progress(done, total or None)`` is called every 30 s; ``digest`` (a
    hashlib object) sees every byte, so the md5 costs no second pass.
    """
    def ensure_room(nbytes: int) -> None:
        ensure_free(config.SaveDir, nbytes, config.min_storage_left_bytes)

    total = None
    sink = None
    try:
        if source.kind == "path":
            with open_import(source.location, config.import_dirs) as handle:
                total = os.fstat(handle.fileno()).st_size
                if total > cap:
                    raise UploadTooLarge(f"{source.location} is {total} bytes; this server accepts at most {cap}")
                sink = _Sink(target, cap, total, progress, digest, ensure_room)
                while chunk := handle.read(_CHUNK):
                    sink.write(chunk)
        elif _is_ftp(source):
            with _ftp(source, config) as (client, path, blocksize):
                total = _ftp_size(client, path, source.shown)
                sink = _Sink(target, cap, total, progress, digest, ensure_room)
                with _reached(source):
                    client.retrbinary(f"RETR {path}", sink.write, blocksize=blocksize)
        else:
            with _reached(source), _http_response(source.location) as answer:
                length = answer.getheader("Content-Length") or ""
                total = int(length) if length.isdigit() else None
                if total is not None and total > cap:
                    raise UploadTooLarge(f"{source.shown} is {total} bytes; this server accepts at most {cap}")
                sink = _Sink(target, cap, total, progress, digest, ensure_room)
                try:
                    while chunk := answer.read(_CHUNK):
                        sink.write(chunk)
                except http.client.IncompleteRead as err:
                    sink.write(err.partial)  # the length check below says how far it came
        if total is not None and sink.written != total:
            raise SourceError(f"{source.shown} ended after {sink.written} of its {total} bytes; try again")
        return sink.written
    finally:
        if sink is not None:
            sink.handle.close()
