"""Builds the synced indexes no longer list: the archives that keep every build a distribution ever shipped.

Archives delete superseded builds (Debian at each point release, Fedora's
updates), and machines one update behind keep crashing with them.  A
release's history sources (``[history]`` in retrace-server.conf, in the
order written; upstream's ``KojiRoot`` adds a Koji tree for RPM releases)
are asked, by package name and version, for what no synced index has:

- ``snapshot``: Debian's snapshot service and its machine-readable API
  (``/mr/binary/<name>/<version>/binfiles?fileinfo=1`` lists the .deb of
  each architecture by SHA1, ``/file/<sha1>`` serves it; the SHA1 is checked
  while the file streams in).  The debug package is the binary's
  ``-dbgsym``, else one of its source's ``-dbg`` packages
  (``/mr/binary/<name>/`` names the source, ``/mr/package/<source>/<version>/
  binpackages`` its binaries).
- ``koji``: a Koji package tree (``packages/<source>/<version>/<release>/
  <arch>/<name>-<version>-<release>.<arch>.rpm``, ``-debuginfo`` beside it),
  over HTTP or as a local directory.

Nothing a history source serves is trusted for what it claims: a package
the synced index lists must have the index's SHA256, and every other one
is used only when the file the crash needs has the core's build-id (the
caller checks the unpacked tree).  Answers are capped: JSON at 1 MiB, a
package at the size snapshot lists or 4 GiB, everything within the
download deadline.
"""
from __future__ import annotations

import abc
import dataclasses
import json
import os
import re
import time
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

from retrace_server.arch import debian_arch
from retrace_server.packaging.download import (
    UNKNOWN_SIZE_CAP,
    DownloadError,
    TooLarge,
    fetch_file,
    read_capped,
    requests_module,
    write_checked,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from retrace_server.config import Config

_JSON_CAP = 1 << 20
_CHUNK = 1 << 20
_HEX40 = re.compile(r"[0-9a-f]{40}")
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~%-]*\.(?:deb|ddeb|rpm)")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_VERSION = re.compile(r"[A-Za-z0-9._+~:^-]+")
# The most debug packages of a source tried for one binary (classic -dbg packages are large).
MAX_DEBUG_CANDIDATES = 4


@dataclasses.dataclass(frozen=True)
class Wanted:
    """A package as the crash names it."""

    name: str
    version: str  # as the distribution writes it: 1:1.2.13.dfsg-1 (Debian), 1.0-1.fc41 (RPM version-release)
    arch: str  # the release's architecture (x86_64)
    source: str | None = None  # the source package, when the release's index knows the name

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


@dataclasses.dataclass(frozen=True)
class Located:
    """A package file a history source serves."""

    name: str
    version: str
    file_name: str
    url: str  # or an absolute path in a local tree
    size: int | None  # what the source lists, else None
    sha1: str | None  # what the source names the file by, checked while it downloads


class HistorySource(abc.ABC):
    """One history source of a release; ``kind`` is its name in ``[history]``."""

    kind: ClassVar[str]
    format: ClassVar[str]  # the package format it serves: deb or rpm

    def __init__(self, url: str, deadline: float, session: Any = None) -> None:
        self.url, self.deadline = url.rstrip("/"), deadline
        self.session = session or requests_module().Session()

    def __str__(self) -> str:
        return f"{self.kind} {self.url}"

    @abc.abstractmethod
    def binary(self, wanted: Wanted) -> Located | None:
        """The file of ``wanted`` for the release's architecture (or ``all``/``noarch``), or None."""

    @abc.abstractmethod
    def debug(self, wanted: Wanted) -> Iterator[Located]:
        """The debug packages that may hold ``wanted``'s debuginfo, the likeliest first (each looked up only
        when the one before it did not hold the build)."""

    def download(self, located: Located, target: Path) -> tuple[int, dict[str, str]]:
        """Fetch ``located`` into the new file ``target``: ``(bytes, digests)``, or DownloadError."""
        limit = located.size or UNKNOWN_SIZE_CAP
        what = f"{located.name} {located.version}"
        deadline = time.monotonic() + self.deadline
        if located.url.startswith("/"):
            try:
                with open(located.url, "rb") as source, open(target, "xb") as handle:
                    received, digests = write_checked(iter(lambda: source.read(_CHUNK), b""), handle, limit)
            except TooLarge:
                raise DownloadError(f"{self} holds more than {limit} bytes for {what}; it was not used") from None
            except OSError as err:
                raise DownloadError(f"{self} cannot give {what} ({err.strerror})") from None
        else:
            received, digests = fetch_file(self.session, located.url, target, limit, deadline, what, str(self),
                                           "it lists" if located.size else "a package may have")
        if located.sha1 and digests["sha1"] != located.sha1:
            raise DownloadError(f"{self} served {what} with a SHA1 other than the {located.sha1} it lists; "
                                "it was not used")
        if located.size and received != located.size:
            raise DownloadError(f"{self} served {received} bytes for {what}, not the {located.size} it lists; "
                                "it was not used")
        return received, digests

    def _json(self, path: str) -> Any:
        """The JSON answer at ``path`` (None for a 404), at most 1 MiB."""
        body = read_capped(self.session, f"{self.url}{path}", _JSON_CAP, self.deadline, str(self))
        try:
            return None if body is None else json.loads(body)
        except ValueError:
            raise DownloadError(f"{self} answered {path} with something that is not JSON") from None


class Snapshot(HistorySource):
    """Debian's snapshot service (or an archive laid out as its API)."""

    kind = "snapshot"
    format = "deb"

    def binary(self, wanted: Wanted) -> Located | None:
        answer = self._json(f"/mr/binary/{quote(wanted.name, safe='')}/{quote(wanted.version, safe='')}"
                            "/binfiles?fileinfo=1")
        if not isinstance(answer, dict):
            return None
        arches = (debian_arch(wanted.arch), "all")
        files = [entry for entry in _list(answer.get("result")) if isinstance(entry, dict)
                 and entry.get("architecture") in arches and _HEX40.fullmatch(str(entry.get("hash", "")))]
        fileinfo = answer.get("fileinfo")
        for entry in sorted(files, key=lambda entry: arches.index(entry["architecture"])):
            infos = _list(fileinfo.get(entry["hash"]) if isinstance(fileinfo, dict) else None)
            info = next((info for info in infos if isinstance(info, dict)
                         and _FILE_NAME.fullmatch(str(info.get("name", "")))), None)
            if info is None:
                continue
            size = info.get("size")
            return Located(wanted.name, wanted.version, str(info["name"]), f"{self.url}/file/{entry['hash']}",
                           size if isinstance(size, int) and size > 0 else None, entry["hash"])
        return None

    def debug(self, wanted: Wanted) -> Iterator[Located]:
        dbgsym = self.binary(dataclasses.replace(wanted, name=f"{wanted.name}-dbgsym"))
        if dbgsym is not None:
            yield dbgsym
        for name in self._source_debug_packages(wanted)[:MAX_DEBUG_CANDIDATES]:
            located = self.binary(dataclasses.replace(wanted, name=name))
            if located is not None:
                yield located

    def _source_debug_packages(self, wanted: Wanted) -> list[str]:
        """The ``-dbg`` binaries of ``wanted``'s source at its version, those sharing most of its name first."""
        versions = self._json(f"/mr/binary/{quote(wanted.name, safe='')}/")
        entry = next((entry for entry in _list(versions.get("result") if isinstance(versions, dict) else None)
                      if isinstance(entry, dict) and entry.get("binary_version") == wanted.version), None)
        if entry is None or not _NAME.fullmatch(str(entry.get("source", ""))) \
                or not _VERSION.fullmatch(str(entry.get("version", ""))):
            return []
        listed = self._json(f"/mr/package/{quote(entry['source'], safe='')}/{quote(entry['version'], safe='')}"
                            "/binpackages")
        names = [str(binary.get("name", "")) for binary in
                 _list(listed.get("result") if isinstance(listed, dict) else None) if isinstance(binary, dict)]
        debug = [name for name in names if name.endswith("-dbg") and _NAME.fullmatch(name)]
        return sorted(debug, key=lambda name: -len(os.path.commonprefix([name, wanted.name])))


def _list(value: Any) -> list[Any]:
    """``value`` when an answer gave a list where one belongs, else nothing (answers are untrusted)."""
    return value if isinstance(value, list) else []


class Koji(HistorySource):
    """A Koji package tree: ``packages/<source>/<version>/<release>/<arch>/``."""

    kind = "koji"
    format = "rpm"

    def _located(self, wanted: Wanted, name: str) -> Located | None:
        version, _, release = wanted.version.split(":", 1)[-1].rpartition("-")
        if not version or not release:
            return None
        for source in dict.fromkeys(filter(None, (wanted.source, wanted.name))):
            for arch in (wanted.arch, "noarch"):
                file_name = f"{name}-{version}-{release}.{arch}.rpm"
                where = f"{self.url}/packages/{source}/{version}/{release}/{arch}/{file_name}"
                if self._exists(where):
                    return Located(name, wanted.version, file_name, where, None, None)
        return None

    def _exists(self, where: str) -> bool:
        if where.startswith("/"):
            return os.path.isfile(where)
        requests = requests_module()
        try:
            response = self.session.head(where, timeout=(10, self.deadline), allow_redirects=True)
        except requests.RequestException as err:
            raise DownloadError(f"{self} cannot be reached ({type(err).__name__})") from None
        return bool(response.status_code == 200)

    def binary(self, wanted: Wanted) -> Located | None:
        return self._located(wanted, wanted.name)

    def debug(self, wanted: Wanted) -> Iterator[Located]:
        names = [f"{wanted.name}-debuginfo", *([f"{wanted.source}-debuginfo"] if wanted.source else [])]
        yield from (located for name in dict.fromkeys(names) if (located := self._located(wanted, name)))


SOURCES: dict[str, type[HistorySource]] = {"snapshot": Snapshot, "koji": Koji}


def sources_for(config: Config, release: object, deadline: float | None = None) -> list[HistorySource]:
    """The history sources of ``release``, in order, each waiting at most ``deadline`` (DownloadDeadline)."""
    wait = config.DownloadDeadline if deadline is None else deadline
    return [SOURCES[kind](url, wait) for kind, url in config.history_sources(release)]


def wanted_of(owner: str, arch: str, package_format: str) -> list[Wanted]:
    """Every reading of ``name-[epoch:]version[-release][.arch]`` (a dso_list's or the crash's package): a
    Debian name and version may both hold dashes, so each dash before a digit is tried as the split."""
    text = owner
    for suffix in {arch, debian_arch(arch), "noarch", "all"}:
        text = text.removesuffix(f".{suffix}")
    if package_format == "rpm":
        parts = text.rsplit("-", 2)
        return [Wanted(parts[0], f"{parts[1]}-{parts[2]}", arch)] if len(parts) == 3 and all(parts) else []
    readings = []
    for match in re.finditer(r"-(?=[0-9])", text):
        name, version = text[:match.start()], text[match.end():]
        if _NAME.fullmatch(name) and _VERSION.fullmatch(version):
            readings.append(Wanted(name, version, arch))
    return readings
