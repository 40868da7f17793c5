"""apt mirrors (Debian, Ubuntu): a suite's InRelease verified with gpgv, then its indexes, then its packages.

A plugin section with ``type = apt``::

    [reposync debian]
    type = apt
    mirrors = https://deb.debian.org/debian
    suites = $CODENAME $CODENAME-updates
    components = main
    codenames = 12:bookworm 13:trixie
    metadata-only = yes

The chain of trust is apt's: ``InRelease`` is checked by ``gpgv`` against
the keyrings the ``[gpgkeys]`` section lists for the release (e.g.
``/usr/share/keyrings/debian-archive-keyring.gpg``); the Release text that
gpgv verified (never the raw file) gives each index's size and SHA256; each
``Packages`` stanza gives its package's.  Anything that does not match is
refused with its name.  The indexes land in ``RepoDir/<release>/dists/``
by one directory exchange; packages in ``pool/`` as the mirror has them,
unless the sync is ``--metadata-only``: then ``RepoDir/<release>/mirror``
names the mirror, and workers download what a crash needs
(``retrace_server.packaging.download``).
"""
from __future__ import annotations

import dataclasses
import lzma
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import requests

from retrace_server.compression import open_compressed
from retrace_server.packaging import apt
from retrace_server.packaging.download import TooLarge, write_checked
from retrace_server.paths import UnsafePath, inside

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping

    from retrace_server.packaging.release import ReleaseId
    from retrace_server.paths import StrPath

_TIMEOUT = (15, 120)
_CHUNK = 1024 * 1024
_MAX_RELEASE_BYTES = 16 << 20
_RELEASE_SHA256 = re.compile(r"^ ([0-9a-f]{64})\s+(\d+)\s+(\S+)$", re.M)
_SUITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*", re.ASCII)


class AptSyncError(Exception):
    """A mirror or one of its files that cannot be used; the message names it."""


class Refused(AptSyncError):
    """A file whose signature or checksum does not verify."""


@dataclasses.dataclass(frozen=True)
class AptSource:
    mirrors: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]
    codenames: dict[str, str]
    metadata_only: bool = False  # the indexes only, always (as --metadata-only)

    @classmethod
    def from_items(cls, items: dict[str, str]) -> AptSource:
        codenames = dict(pair.split(":", 1) for pair in items.get("codenames", "").split() if ":" in pair)
        return cls(tuple(items.get("mirrors", "").split()), tuple(items.get("suites", "$CODENAME").split()),
                   tuple(items.get("components", "main").split()), codenames,
                   items.get("metadata-only", "no").strip().lower() in ("yes", "true", "1", "on"))

    def suite_names(self, release: ReleaseId) -> list[str]:
        codename = self.codenames.get(release.version, release.version)
        names = [suite.replace("$CODENAME", codename).replace("$VER", release.version) for suite in self.suites]
        bad = [name for name in names if not _SUITE.fullmatch(name)]
        if bad:
            raise AptSyncError(f"suite {bad[0]!r} is not a suite name")
        return names


@dataclasses.dataclass
class AptResult:
    added: int = 0
    bytes: int = 0
    refused: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (file, why): checksums that differ
    failed: list[str] = dataclasses.field(default_factory=list)  # files the mirror did not give


def gpgv_verified(signed: Path, keyrings: Iterable[StrPath], what: str) -> str:
    """The text gpgv verified in ``signed`` (an InRelease); Refused when no keyring's key signed it."""
    with tempfile.TemporaryDirectory(prefix="retrace-gpgv-") as scratch:
        arguments = []
        for number, keyring in enumerate(keyrings):
            data = Path(keyring).read_bytes()
            if data.lstrip().startswith(b"-----BEGIN"):
                dearmored = Path(scratch) / f"keyring-{number}.gpg"
                subprocess.run(["gpg", "--batch", "--yes", "--dearmor", "--output", str(dearmored)], input=data,
                               check=True, capture_output=True)
                keyring = dearmored
            arguments += ["--keyring", str(keyring)]
        output = Path(scratch) / "verified"
        result = subprocess.run(["gpgv", *arguments, "--output", str(output), str(signed)], capture_output=True,
                                text=True, stdin=subprocess.DEVNULL, timeout=120)
        if result.returncode != 0:
            said = " | ".join(line for line in result.stderr.splitlines() if "gpgv:" in line)[-300:]
            raise Refused(f"{what} has no good signature by a key trusted for this release ({said or 'gpgv failed'})")
        return output.read_text(errors="replace")


class AptMirror:
    """One mirror of an apt archive: HTTP(S), rsync, or a local directory (``file://`` or a path)."""

    def __init__(self, url: str, session: requests.Session) -> None:
        self.url = url.rstrip("/") + "/"
        self.session = session

    def fetch(self, relative: str, target: Path, size: int | None = None, sha256: str | None = None) -> int:
        """``relative`` into ``target``, checked against ``size`` and ``sha256`` when given; bytes."""
        limit = size if size is not None else _MAX_RELEASE_BYTES
        try:
            with open(target, "wb") as out:
                received, digests = write_checked(self._chunks(relative), out, limit)
        except TooLarge:
            raise Refused(f"{self.url}{relative} is larger than the {limit} bytes its index lists") from None
        if (size is not None and received != size) or (sha256 and digests["sha256"] != sha256):
            raise Refused(f"{self.url}{relative} does not match the size and SHA256 its index lists; the mirror "
                          "served a different file")
        return received

    def _chunks(self, relative: str) -> Iterator[bytes]:
        if self.url.startswith(("http://", "https://")):
            try:
                with self.session.get(self.url + quote(relative), stream=True, timeout=_TIMEOUT) as response:
                    if response.status_code != 200:
                        raise AptSyncError(f"{self.url}{relative} answered HTTP {response.status_code}")
                    yield from response.iter_content(_CHUNK)
            except requests.RequestException as err:
                raise AptSyncError(f"cannot download {self.url}{relative}: {type(err).__name__}") from None
            return
        if self.url.startswith("rsync://"):
            yield from self._rsync_chunks(relative)
            return
        root = Path(self.url[len("file://"):] if self.url.startswith("file://") else self.url)
        try:
            yield from _file_chunks(inside(root, relative))
        except (OSError, UnsafePath) as err:
            raise AptSyncError(f"cannot read {relative} in {root}: {err}") from None


    def _rsync_chunks(self, relative: str) -> Iterator[bytes]:
        """One file over rsync, into a private directory, then read like a local one."""
        with tempfile.TemporaryDirectory(prefix="retrace-rsync-") as scratch:
            copy = Path(scratch) / "file"
            process = subprocess.run(["rsync", "--no-motd", f"--timeout={_TIMEOUT[1]}", "--", self.url + relative,
                                      str(copy)], capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if process.returncode != 0 or not copy.is_file():
                said = process.stderr.strip().splitlines()[-1:] or ["no file"]
                raise AptSyncError(f"rsync of {self.url}{relative} failed: {said[0]}")
            yield from _file_chunks(copy)


def _file_chunks(path: StrPath) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            yield chunk


def _release_checksums(text: str) -> dict[str, tuple[int, str]]:
    return {path: (int(size), sha256) for sha256, size, path in _RELEASE_SHA256.findall(text)}


def _wanted_indexes(checksums: Mapping[str, object], components: Iterable[str], debarch: str) -> list[str]:
    """For each component, the first Packages compression the Release lists, and its Contents."""
    wanted = []
    for component in components:
        packages = next((name for name in (f"{component}/binary-{debarch}/{index}" for index in apt.INDEX_NAMES)
                         if name in checksums), None)
        if packages is None:
            raise AptSyncError(f"the Release lists no Packages index for {component}/binary-{debarch}")
        wanted.append(packages)
        wanted += [name for name in (f"{component}/Contents-{debarch}.gz", f"Contents-{debarch}.gz")
                   if name in checksums and name not in wanted][:1]
    return wanted


def sync_indexes(mirror: AptMirror, suites: Iterable[str], components: Iterable[str], debarch: str,
                 keyrings: Iterable[StrPath] | None, staging: Path, report: Callable[[str], None]) -> list[Path]:
    """Every suite's verified InRelease and indexes into ``staging/dists``; the Packages files fetched."""
    packages_files = []
    for suite in suites:
        suite_dir = staging / "dists" / suite
        suite_dir.mkdir(parents=True)
        mirror.fetch(f"dists/{suite}/InRelease", suite_dir / "InRelease")
        if keyrings is None:
            text = (suite_dir / "InRelease").read_text(errors="replace")
            report(f"  {suite}: InRelease signature not checked (RequireGPGCheck = 0)")
        else:
            text = gpgv_verified(suite_dir / "InRelease", keyrings, f"the InRelease of {suite} from {mirror.url}")
            report(f"  {suite}: InRelease signature good")
        checksums = _release_checksums(text)
        for name in _wanted_indexes(checksums, components, debarch):
            target = suite_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            mirror.fetch(f"dists/{suite}/{name}", target, *checksums[name])
            if "/binary-" in name:
                packages_files.append(target)
    return packages_files


def sync_pool(mirror: AptMirror, packages_files: Iterable[Path], debarch: str, target: Path, staging: Path,
              report: Callable[[str], None]) -> AptResult:
    """The packages the indexes list that ``target`` lacks, each checked against its stanza."""
    result = AptResult()
    for path in packages_files:
        with open_compressed(path) as stream:
            for row, _build_ids in apt.package_rows(stream, {debarch, "all"}):
                sha256, location, size = row[0], row[7], row[8]
                try:
                    destination = Path(inside(target, location))
                except UnsafePath:
                    result.refused.append((location, "its Filename leaves the repository"))
                    continue
                if destination.is_file() and destination.stat().st_size == size:
                    continue
                partial = staging / f"{sha256}.part"
                try:
                    result.bytes += mirror.fetch(location, partial, size or None, sha256)
                except Refused as err:
                    partial.unlink(missing_ok=True)
                    result.refused.append((location, str(err)))
                    report(f"  refused {location}: {err}")
                    continue
                except AptSyncError as err:
                    partial.unlink(missing_ok=True)
                    result.failed.append(location)
                    report(f"  failed {location}: {err}")
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                os.replace(partial, destination)
                result.added += 1
    return result


# Where a release keeps the index entries of packages its mirror no longer lists, and the field that says since when.
SUPERSEDED_DIR = "superseded"
_SINCE = "Superseded-Since"
_KEPT_FIELDS = ("Package", "Source", "Version", "Architecture", "Filename", "Size", "SHA256", "Build-Ids")


def keep_superseded(release_dir: Path, staging: Path, keep_seconds: float, now: float) -> int:
    """Carry the entries of ``release_dir``'s current indexes that the new ones in ``staging/dists`` dropped
    into ``staging/dists/superseded/Packages.xz``, with the time they left (kept from an earlier sync), for
    ``keep_seconds``; returns how many are kept.

    Archives delete a package's entry (Debian at each point release) while machines one update behind still
    crash with it: kept, a crash names a build the index knows, and a full mirror still has its file.
    """
    fresh: set[tuple[str, str, str]] = set()
    for path in apt.index_files(staging)[0]:
        with open_compressed(path) as stream:
            fresh.update((fields.get("Package", ""), fields.get("Version", ""), fields.get("Architecture", ""))
                         for fields in apt.stanzas(stream))
    kept: dict[tuple[str, str, str], dict[str, str]] = {}
    previous = apt.index_files(release_dir)[0] if (release_dir / "dists").is_dir() else []
    for path in previous:
        with open_compressed(path) as stream:
            for fields in apt.stanzas(stream):
                key = (fields.get("Package", ""), fields.get("Version", ""), fields.get("Architecture", ""))
                if not all(key) or key in fresh or key in kept:
                    continue
                try:
                    since = float(fields.get(_SINCE, now))
                except ValueError:
                    since = now
                if now - since < keep_seconds:
                    kept[key] = {**{name: fields[name] for name in _KEPT_FIELDS if name in fields}, _SINCE: str(int(since))}
    if kept:
        target = staging / "dists" / SUPERSEDED_DIR
        target.mkdir(parents=True, exist_ok=True)
        text = "\n".join("".join(f"{name}: {value}\n" for name, value in fields.items()) for fields in kept.values())
        (target / "Packages.xz").write_bytes(lzma.compress(text.encode()))
    return len(kept)
