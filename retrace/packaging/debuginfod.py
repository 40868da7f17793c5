"""debuginfod as a file source: executables and debuginfo by build-id, over HTTP.

For the build-ids the release's packages do not cover (or for a release
with no mirror at all), the worker asks the configured debuginfod servers,
in order, for ``/buildid/<id>/executable`` and ``/buildid/<id>/debuginfo``,
several files at once, within one deadline per task.  Files land in a
shared cache, ``<CacheDir>/buildid/<xx>/<id>/<kind>``, written to a
temporary name and renamed only after their build-id was checked: a file
whose build-id differs from the one asked for is never used.  A build-id
that no server has is remembered for ``DebuginfodMissTTL`` seconds.

gdb itself never talks to debuginfod (its fetching is sequential and, in
13.1, broken with a sysroot): the files are linked into the task's tree and
gdb runs with debuginfod off.
"""

import concurrent.futures
import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path

from retrace_server.analysis.coredump import file_build_id

KINDS = ("executable", "debuginfo")
_CHUNK = 1024 * 1024
_PARALLEL = 8


@dataclasses.dataclass(frozen=True)
class Settings:
    urls: tuple
    deadline: float
    timeout: float
    retries: int
    max_bytes: int
    miss_ttl: float

    @classmethod
    def from_config(cls, config, release=None):
        """The settings for a task of ``release`` (its own server list, if it has one)."""
        return cls(
            tuple(url.rstrip("/") for url in config.debuginfod_urls(release)), config.DebuginfodDeadline,
            config.DebuginfodTimeout, config.DebuginfodRetries, config.DebuginfodMaxFileSize * 1024 * 1024,
            config.DebuginfodMissTTL,
        )


@dataclasses.dataclass
class Fetched:
    path: Path | None  # the cached file, None when nobody had it
    source: str  # the server's URL, "cache" or why it is missing


class BuildIdCache:
    def __init__(self, cache_dir):
        self.root = Path(cache_dir) / "buildid"
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, build_id, kind):
        if not build_id.isalnum() or kind not in KINDS:
            raise ValueError(f"bad build-id or kind: {build_id!r} {kind!r}")
        return self.root / build_id[:2] / build_id / kind

    def _miss_marker(self, build_id, kind):
        return self.path(build_id, kind).with_name(f"{kind}.miss")

    def cached(self, build_id, kind):
        path = self.path(build_id, kind)
        if path.is_file():
            os.utime(path)
            return path
        return None

    def recently_missed(self, build_id, kind, ttl):
        try:
            return time.time() - self._miss_marker(build_id, kind).stat().st_mtime < ttl
        except FileNotFoundError:
            return False

    def remember_miss(self, build_id, kind):
        marker = self._miss_marker(build_id, kind)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()

    def entries(self):
        """``(build-id, last use, bytes)`` of every build-id with cached files."""
        found = []
        for directory in self.root.glob("*/*"):
            files = [path for path in directory.iterdir() if path.name in KINDS]
            if files:
                stats = [path.stat() for path in files]
                found.append((directory.name, max(s.st_mtime for s in stats), sum(s.st_size for s in stats)))
        return found

    def evict(self, build_id):
        """Remove a build-id's files, unless one is being downloaded right now."""
        directory = self.path(build_id, "executable").parent
        if any(path.name.startswith(".") for path in directory.iterdir()):
            return False
        trash = Path(tempfile.mkdtemp(dir=self.root, prefix=f".evict-{build_id}-"))
        os.rename(directory, trash / "entry")
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def temporary(self, build_id, kind):
        directory = self.path(build_id, kind).parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix=f".{kind}.")
        return fd, Path(name)


def _requests():
    """requests, imported on first use: it costs the worker 60 ms of start-up, and most
    tasks never ask a debuginfod server."""
    import requests

    return requests


class _Rejected(Exception):
    """This server's answer cannot be used; try the next one."""


def _download(session, url, settings, deadline, fd, tmp):
    """Stream one answer into ``fd``; _Rejected for anything but a complete, small-enough 200."""
    timeout = max(0.1, min(settings.timeout, deadline - time.monotonic()))
    with session.get(url, stream=True, timeout=(timeout, timeout)) as response:
        if response.status_code == 404:
            raise _Rejected("404")
        if response.status_code != 200:
            raise _Rejected(f"HTTP {response.status_code}")
        declared = int(response.headers.get("Content-Length") or response.headers.get("X-DEBUGINFOD-SIZE") or 0)
        if declared > settings.max_bytes:
            raise _Rejected(f"{declared} bytes is over DebuginfodMaxFileSize")
        written = 0
        with os.fdopen(os.dup(fd), "wb") as out:
            for chunk in response.iter_content(_CHUNK):
                written += len(chunk)
                if written > settings.max_bytes:
                    raise _Rejected("the file is over DebuginfodMaxFileSize")
                if time.monotonic() > deadline:
                    raise _Rejected("the task's debuginfod deadline passed")
                out.write(chunk)


def fetch_one(session, cache, settings, build_id, kind, deadline):
    """The file ``kind`` of ``build_id``: from the cache or the first server that has it."""
    cached = cache.cached(build_id, kind)
    if cached is not None:
        return Fetched(cached, "cache")
    if cache.recently_missed(build_id, kind, settings.miss_ttl):
        return Fetched(None, "no debuginfod server had it (remembered)")
    reasons = []
    all_absent = True
    for server in settings.urls:
        for _attempt in range(settings.retries + 1):
            if time.monotonic() >= deadline:
                return Fetched(None, "the task's debuginfod deadline passed")
            fd, tmp = cache.temporary(build_id, kind)
            try:
                _download(session, f"{server}/buildid/{build_id}/{kind}", settings, deadline, fd, tmp)
                if file_build_id(tmp) != build_id:
                    raise _Rejected("its build-id is not the one asked for")
                os.chmod(tmp, 0o644)
                os.replace(tmp, cache.path(build_id, kind))
                return Fetched(cache.path(build_id, kind), server)
            except _Rejected as err:
                reasons.append(f"{server}: {err}")
                all_absent &= str(err) == "404"
                if str(err) == "404" or "build-id" in str(err):
                    break
            except (_requests().RequestException, OSError) as err:
                reasons.append(f"{server}: {type(err).__name__}")
                all_absent = False
            finally:
                os.close(fd)
                tmp.unlink(missing_ok=True)
    if all_absent:
        cache.remember_miss(build_id, kind)
    return Fetched(None, "; ".join(reasons) or "no debuginfod server configured")


def fetch_all(settings, cache, wanted):
    """``{(build_id, kind): Fetched}`` for every pair in ``wanted``, in parallel, within the deadline."""
    deadline = time.monotonic() + settings.deadline
    results = {}
    requests = _requests()
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=_PARALLEL)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=_PARALLEL)
    futures = {pool.submit(fetch_one, session, cache, settings, bid, kind, deadline): (bid, kind) for bid, kind in wanted}
    try:
        for future in concurrent.futures.as_completed(futures, timeout=max(0.0, deadline - time.monotonic()) + 1):
            results[futures[future]] = future.result()
    except concurrent.futures.TimeoutError:
        pass
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    for pair in wanted:
        results.setdefault(pair, Fetched(None, "the task's debuginfod deadline passed"))
    return results
