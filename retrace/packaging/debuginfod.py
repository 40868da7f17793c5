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
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrace_server.elf import debug_alt_link, file_build_id
from retrace_server.packaging.packages import Unresolved, build_id_debug_path, usr_merge_variants

if TYPE_CHECKING:
    import logging
    from collections.abc import Collection, Iterable

    from retrace_server.config import Config
    from retrace_server.packaging.packages import Resolution
    from retrace_server.packaging.release import ReleaseId

KINDS = ("executable", "debuginfo")
_CHUNK = 1024 * 1024
_PARALLEL = 8


@dataclasses.dataclass(frozen=True)
class Settings:
    urls: tuple[str, ...]
    deadline: float
    timeout: float
    retries: int
    max_bytes: int
    miss_ttl: float

    @classmethod
    def from_config(cls, config: Config, release: ReleaseId | str | None = None) -> Settings:
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
    def __init__(self, cache_dir: Path) -> None:
        self.root = Path(cache_dir) / "buildid"
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, build_id: str, kind: str) -> Path:
        if not build_id.isalnum() or kind not in KINDS:
            raise ValueError(f"bad build-id or kind: {build_id!r} {kind!r}")
        return self.root / build_id[:2] / build_id / kind

    def _miss_marker(self, build_id: str, kind: str) -> Path:
        return self.path(build_id, kind).with_name(f"{kind}.miss")

    def cached(self, build_id: str, kind: str) -> Path | None:
        path = self.path(build_id, kind)
        if path.is_file():
            os.utime(path)
            return path
        return None

    def recently_missed(self, build_id: str, kind: str, ttl: float) -> bool:
        try:
            return time.time() - self._miss_marker(build_id, kind).stat().st_mtime < ttl
        except FileNotFoundError:
            return False

    def remember_miss(self, build_id: str, kind: str) -> None:
        marker = self._miss_marker(build_id, kind)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()

    def entries(self) -> list[tuple[str, float, int]]:
        """``(build-id, last use, bytes)`` of every build-id with cached files."""
        found = []
        for directory in self.root.glob("*/*"):
            files = [path for path in directory.iterdir() if path.name in KINDS]
            if files:
                stats = [path.stat() for path in files]
                found.append((directory.name, max(s.st_mtime for s in stats), sum(s.st_size for s in stats)))
        return found

    def evict(self, build_id: str) -> bool:
        """Remove a build-id's files, unless one is being downloaded right now."""
        directory = self.path(build_id, "executable").parent
        if any(path.name.startswith(".") for path in directory.iterdir()):
            return False
        trash = Path(tempfile.mkdtemp(dir=self.root, prefix=f".evict-{build_id}-"))
        os.rename(directory, trash / "entry")
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def temporary(self, build_id: str, kind: str) -> tuple[int, Path]:
        directory = self.path(build_id, kind).parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix=f".{kind}.")
        return fd, Path(name)


def _requests() -> Any:
    """requests, imported on first use: it costs the worker 60 ms of start-up, and most
    tasks never ask a debuginfod server."""
    import requests

    return requests


class _Rejected(Exception):
    """This server's answer cannot be used; try the next one."""


def _download(session: Any, url: str, settings: Settings, deadline: float, fd: int, tmp: Path) -> None:
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


def fetch_one(session: Any, cache: BuildIdCache, settings: Settings, build_id: str, kind: str,
              deadline: float) -> Fetched:
    """The file ``kind`` of ``build_id``: from the cache or the first server that has it."""
    cached = cache.cached(build_id, kind)
    if cached is not None:
        return Fetched(cached, "cache")
    if cache.recently_missed(build_id, kind, settings.miss_ttl):
        return Fetched(None, "no debuginfod server had it (remembered)")
    reasons: list[str] = []
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


def fetch_all(settings: Settings, cache: BuildIdCache,
              wanted: Collection[tuple[str, str]]) -> dict[tuple[str, str], Fetched]:
    """``{(build_id, kind): Fetched}`` for every pair in ``wanted``, in parallel, within the deadline."""
    deadline = time.monotonic() + settings.deadline
    results: dict[tuple[str, str], Fetched] = {}
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


def log_missing(log: logging.Logger, unresolved: Unresolved) -> None:
    """The task log's line for a mapped file the debugger will not have in full."""
    log.warning("Missing for %s (build-id %s): %s", unresolved.path, unresolved.build_id or "unknown",
                unresolved.problem)


def fill_gaps(settings: Settings, cache: BuildIdCache, resolution: Resolution,
              log: logging.Logger) -> list[tuple[str, Path]]:
    """Ask the debuginfod servers for what the packages did not give; ``[(path in the tree, cached file)]``.

    ``resolution.unresolved`` is replaced by what is still missing, each
    saying why; the sources of what was found are noted for the backtrace's
    header.  The dwz files the fetched debuginfo shares its types and lines
    with come too: gdb finds them by build-id, and without them a frame has
    no file:line.
    """
    wanted: list[tuple[str, str]] = []
    for unresolved in resolution.unresolved:
        if unresolved.build_id is None:
            continue
        if not unresolved.binary_found:
            wanted.append((unresolved.build_id, "executable"))
        if not unresolved.debuginfo_found:
            wanted.append((unresolved.build_id, "debuginfo"))
    if not wanted:
        return []
    started = time.monotonic()
    fetched = fetch_all(settings, cache, wanted)
    got = sum(1 for result in fetched.values() if result.path)
    log.info("debuginfod: %d of %d files found in %.3f s", got, len(wanted), time.monotonic() - started)
    placements: list[tuple[str, Path]] = []
    still_missing: list[Unresolved] = []
    for unresolved in resolution.unresolved:
        if unresolved.build_id is None:
            still_missing.append(unresolved)
            continue
        binary = fetched.get((unresolved.build_id, "executable"))
        debuginfo = fetched.get((unresolved.build_id, "debuginfo"))
        if binary and binary.path:
            placements += [(path, binary.path) for path in usr_merge_variants(unresolved.path)]
            resolution.note_source(unresolved.path, "binary", f"debuginfod {binary.source}")
        if debuginfo and debuginfo.path:
            placements.append((build_id_debug_path(unresolved.build_id), debuginfo.path))
            resolution.note_source(unresolved.path, "debuginfo", f"debuginfod {debuginfo.source}")
        has_binary = unresolved.binary_found or bool(binary and binary.path)
        has_debuginfo = unresolved.debuginfo_found or bool(debuginfo and debuginfo.path)
        if has_binary and has_debuginfo:
            continue
        missing = [kind for kind, present in (("executable", has_binary), ("debuginfo", has_debuginfo)) if not present]
        reasons = "; ".join(result.source for result in (binary, debuginfo) if result and not result.path)
        still_missing.append(Unresolved(unresolved.path, unresolved.build_id,
                                        f"{unresolved.problem}; debuginfod has no {' or '.join(missing)} ({reasons})",
                                        has_binary, has_debuginfo))
        log_missing(log, still_missing[-1])
    resolution.unresolved = still_missing
    debuginfo_files = [result.path for (_, kind), result in fetched.items() if kind == "debuginfo" and result.path]
    return placements + _dwz_files(settings, cache, debuginfo_files, log)


def _dwz_files(settings: Settings, cache: BuildIdCache, debuginfo_files: Iterable[Path],
               log: logging.Logger) -> list[tuple[str, Path]]:
    wanted = {link[1]: link[0] for link in map(debug_alt_link, debuginfo_files) if link}
    if not wanted:
        return []
    fetched = fetch_all(settings, cache, [(build_id, "debuginfo") for build_id in wanted])
    placements: list[tuple[str, Path]] = []
    for build_id, name in wanted.items():
        result = fetched.get((build_id, "debuginfo"))
        if result and result.path:
            placements += [(build_id_debug_path(build_id), result.path), (name, result.path)]
        else:
            log.warning("Missing the dwz file %s (build-id %s) that debuginfo shares: debuginfod has none (%s); "
                        "frames may lack file:line", name, build_id, result.source if result else "")
    return placements
