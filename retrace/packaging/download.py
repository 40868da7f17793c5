"""Packages fetched from a release's mirror when a crash needs them (metadata-only releases).

reposync may keep only a release's indexes (``--metadata-only``): a Debian
or Fedora release with its debug packages is hundreds of GiB, a crash needs
a few dozen packages of it.  A ``mirror`` file then names the mirror
reposync used, for the directory it sits in: ``RepoDir/<release>/`` of an
apt release, each ``RepoDir/<release>/repositories/<name>/`` of an rpm-md
one.  A worker downloads the packages a crash needs, several at once,
within one deadline, into ``CacheDir/downloads/``, and keeps a file only if
its size and SHA256 are the ones the release's index lists (an apt index
came from a signed InRelease; an RPM is checked against its signature
too, where the release requires one).  The file is unpacked into the
package cache and removed: the cache's budget is what stays.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote

from retrace_server.errors import RetraceError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from retrace_server.packaging.repoindex import Package

MIRROR_FILE = "mirror"
DOWNLOADS = "downloads"  # under CacheDir
_CHUNK = 1024 * 1024
_PARALLEL = 8
# An index that gives no size: nothing a crash needs is bigger.
UNKNOWN_SIZE_CAP = 4 << 30


class DownloadError(RetraceError):
    category = "repository error"


def _mirror_of(directory: Path) -> str | None:
    try:
        url = (directory / MIRROR_FILE).read_text().strip().splitlines()[0]
    except (OSError, IndexError):
        return None
    return url.rstrip("/") + "/" if url.startswith(("http://", "https://")) else None


def package_url(release_dir: Path, package_path: Path) -> tuple[str, str] | None:
    """``(mirror, URL)`` where a metadata-only release's mirror serves ``package_path`` (a checked path
    inside ``release_dir``), or None: the mirror is named by the nearest directory above the package that
    names one."""
    release_dir = Path(release_dir)
    for directory in Path(package_path).parents:
        mirror = _mirror_of(directory)
        if mirror:
            return mirror, mirror + quote(Path(package_path).relative_to(directory).as_posix())
        if directory == release_dir:
            return None
    return None


def requests_module() -> Any:
    import requests

    return requests


class TooLarge(Exception):
    """More bytes arrived than the index lists."""


def write_checked(chunks: Iterable[bytes], handle: BinaryIO, limit: int) -> tuple[int, dict[str, str]]:
    """Write ``chunks`` to ``handle`` while counting and hashing them; ``(bytes, {"sha256": hex, "sha1": hex})``
    (apt and rpm-md indexes list SHA256, Debian's snapshot service names files by SHA1).

    TooLarge as soon as more than ``limit`` bytes arrive: a mirror's answer is
    untrusted, and the index that gave the size is what it is held to.
    """
    digests = {"sha256": hashlib.sha256(), "sha1": hashlib.sha1(usedforsecurity=False)}
    received = 0
    for chunk in chunks:
        received += len(chunk)
        if received > limit:
            raise TooLarge()
        for digest in digests.values():
            digest.update(chunk)
        handle.write(chunk)
    return received, {name: digest.hexdigest() for name, digest in digests.items()}


def fetch_file(session: Any, url: str, target: Path, limit: int, deadline: float, what: str,
               server: str = "mirror", limit_from: str = "the index lists") -> tuple[int, dict[str, str]]:
    """Stream ``url`` into the new file ``target``, at most ``limit`` bytes (which ``limit_from`` set), by
    ``deadline`` (monotonic); ``(bytes, digests)``, or DownloadError with a sentence about ``what``."""
    requests = requests_module()

    def chunks(response: Any) -> Iterator[bytes]:
        for chunk in response.iter_content(_CHUNK):
            if time.monotonic() > deadline:
                raise requests.Timeout()
            yield chunk

    try:
        with session.get(url, stream=True, timeout=(10, max(1.0, deadline - time.monotonic()))) as response:
            if response.status_code != 200:
                raise DownloadError(f"{server} {url} answered HTTP {response.status_code} for {what}")
            with open(target, "xb") as handle:
                return write_checked(chunks(response), handle, limit)
    except TooLarge:
        raise DownloadError(f"{server} {url} sent more than the {limit} bytes {limit_from} for {what}; "
                            "it was not used") from None
    except requests.Timeout:
        raise DownloadError(f"{server} {url} did not answer for {what} within the download deadline") from None
    except requests.RequestException as err:
        raise DownloadError(f"{server} {url} cannot be reached for {what} ({type(err).__name__})") from None


def read_capped(session: Any, url: str, cap: int, timeout: float, server: str) -> bytes | None:
    """The body at ``url`` (None for a 404), DownloadError past ``cap`` bytes or on any other answer."""
    requests = requests_module()
    try:
        with session.get(url, stream=True, timeout=(10, timeout)) as response:
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                raise DownloadError(f"{server} answered HTTP {response.status_code} for {url}")
            body = bytearray()
            for chunk in response.iter_content(65536):
                body += chunk
                if len(body) > cap:
                    raise DownloadError(f"{server} answered more than {cap >> 10} KiB for {url}; it was not read")
            return bytes(body)
    except requests.RequestException as err:
        raise DownloadError(f"{server} cannot be reached ({type(err).__name__})") from None


def _fetch(session: Any, url: str, package: Package, target: Path, deadline: float) -> None:
    """Stream ``url`` into ``target``, checking size and SHA256 against ``package``; DownloadError says why."""
    limit = package.size or UNKNOWN_SIZE_CAP
    received, digests = fetch_file(session, url, target, limit, deadline, package.nevra)
    if (package.size and received != package.size) or digests["sha256"] != package.pkgid:
        raise DownloadError(f"mirror {url} served a different file than the index lists for {package.nevra} "
                            "(size or SHA256 differ); it was not used")


def download_packages(wanted: Iterable[tuple[Package, str]], directory: Path, deadline_seconds: float,
                      session: Any = None) -> dict[str, Path | DownloadError]:
    """Download ``wanted`` (``[(package, URL)]``) into ``directory``; ``{pkgid: path or DownloadError}``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    session = session or requests_module().Session()
    deadline = time.monotonic() + deadline_seconds

    def one(package: Package, url: str) -> Path:
        target = directory / f"{package.pkgid}.{os.getpid()}{Path(package.location).suffix}"
        try:
            _fetch(session, url, package, target, deadline)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return target

    results: dict[str, Path | DownloadError] = {}
    with concurrent.futures.ThreadPoolExecutor(_PARALLEL) as pool:
        futures = {pool.submit(one, package, url): package for package, url in wanted}
        for future, package in futures.items():
            try:
                results[package.pkgid] = future.result()
            except DownloadError as err:
                results[package.pkgid] = err
            except OSError as err:
                results[package.pkgid] = DownloadError(f"{package.nevra} cannot be stored ({err.strerror})")
    return results
