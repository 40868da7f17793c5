"""Build-id -> package lookups for one release repository (rpm-md or apt).

A task must not scan repository metadata (Fedora's filelists are hundreds
of MiB unpacked), so the first task after the metadata changes turns it
(rpm-md's ``primary`` and ``filelists``; apt's ``Packages`` and
``Contents``, see ``retrace_server.packaging.apt``) into a small SQLite index under
``<CacheDir>/index/``; every later task does a few indexed queries.  The
index is built into a temporary file and renamed into place under a lock,
so concurrent tasks never see half an index and build it only once.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import os
import re
import sqlite3
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

from retrace_server import locking
from retrace_server.arch import debian_arch
from retrace_server.compression import CORRUPT_DATA, DecoderMemoryExceeded, open_compressed
from retrace_server.errors import RetraceError
from retrace_server.packaging import apt
from retrace_server.packaging.packages import usr_merge_variants
from retrace_server.packaging.release import (
    ReleaseId,
    RepositoryFormat,
    merges_usr,
    repository_format,
    rpm_repositories,
)
from retrace_server.paths import UnsafePath, inside, shown

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

REPO_NS = "{http://linux.duke.edu/metadata/repo}"
COMMON_NS = "{http://linux.duke.edu/metadata/common}"
_RPM_NS = "{http://linux.duke.edu/metadata/rpm}"
_FILELISTS_NS = "{http://linux.duke.edu/metadata/filelists}"
_SCHEMA_VERSION = "2"

_DEBUG_LINK = re.compile(r"/usr/lib/debug/\.build-id/([0-9a-f]{2})/([0-9a-f]{6,})\.debug")
_BINARY_LINK = re.compile(r"/usr/lib/\.build-id/([0-9a-f]{2})/([0-9a-f]{6,})")
# Files that are never mapped into a process; leaving them out keeps the
# index a fraction of the filelists' size.
_NOT_MAPPED = ("/usr/share/", "/usr/include/", "/usr/src/", "/usr/lib/debug/", "/etc/", "/var/", "/usr/lib/.build-id/")

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE packages (
    id INTEGER PRIMARY KEY, pkgid TEXT, name TEXT, epoch TEXT, version TEXT, release TEXT,
    arch TEXT, sourcerpm TEXT, location TEXT, size INTEGER, format TEXT
);
CREATE TABLE build_ids (build_id TEXT, package INTEGER, kind TEXT);
CREATE TABLE files (path TEXT, package INTEGER);
"""
_INDEXES = """
CREATE INDEX build_ids_by_id ON build_ids (build_id);
CREATE INDEX files_by_path ON files (path);
CREATE INDEX packages_by_pkgid ON packages (pkgid);
"""


class RepositoryError(RetraceError):
    """The release repository's metadata cannot be read."""

    category = "repository error"


@dataclasses.dataclass(frozen=True)
class Package:
    pkgid: str
    name: str
    epoch: str
    version: str
    release: str
    arch: str
    sourcerpm: str
    location: str
    size: int
    format: str = "rpm"

    @property
    def nevra(self) -> str:
        """How the package's own tools name it: ``bash-5.2-3.fc41.x86_64``, ``zlib1g_1:1.2.13.dfsg-1_amd64``."""
        epoch = f"{self.epoch}:" if self.epoch not in ("", "0") else ""
        if self.format == "deb":
            return f"{self.name}_{epoch}{self.version}{'-' if self.release else ''}{self.release}_{self.arch}"
        return f"{self.name}-{epoch}{self.version}-{self.release}.{self.arch}"

    @property
    def file_name(self) -> str:
        return self.location.rsplit("/", 1)[-1]

    def same_build(self, other: Package) -> bool:
        """Built from the same source package in the same build (so build-ids agree)."""
        return (self.sourcerpm, self.epoch, self.version, self.release) == (
            other.sourcerpm, other.epoch, other.version, other.release
        )


def _metadata_files(repository: Path, release_name: str) -> dict[str, Path]:
    """``{type: path}`` of the XML metadata listed by a repository's repomd.xml."""
    repomd = repository / "repodata" / "repomd.xml"
    try:
        root = ET.parse(repomd).getroot()
    except (OSError, ET.ParseError) as err:
        raise RepositoryError(f"The repository of {release_name} has no readable repodata/repomd.xml ({err})") from None
    files: dict[str, Path] = {}
    for data in root.iter(f"{REPO_NS}data"):
        location = data.find(f"{REPO_NS}location")
        href = location.get("href") if location is not None else None
        kind = data.get("type")
        if href and kind:
            try:
                files[kind] = Path(inside(repository, href))
            except UnsafePath:
                continue
    for needed in ("primary", "filelists"):
        if needed not in files:
            raise RepositoryError(f"The repository of {release_name} has no {needed} metadata in repomd.xml")
    return files


def repomd_digest(release_dir: Path) -> str:
    """One digest over the repomd.xml of every repository of the release."""
    repositories = rpm_repositories(release_dir)
    if not repositories:
        raise RepositoryError(f"The repository of {release_dir.name} has no repodata/repomd.xml")
    digest = hashlib.sha256()
    for repository in repositories:
        try:
            digest.update(f"{repository.relative_to(release_dir)}\0".encode())
            digest.update((repository / "repodata" / "repomd.xml").read_bytes())
        except OSError:
            raise RepositoryError(f"The repository of {release_dir.name} has no repodata/repomd.xml") from None
    return digest.hexdigest()


def iter_elements(path: Path, tag: str) -> Iterator[ET.Element]:
    """Each complete ``tag`` element of a large XML file, freed after use."""
    with open_compressed(path) as stream:
        for _event, element in ET.iterparse(stream, events=("end",)):
            if element.tag == tag:
                yield element
                element.clear()


def _inserted(cursor: sqlite3.Cursor) -> int:
    """The row id an INSERT gave its row."""
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def _load_primary(db: sqlite3.Connection, path: Path, prefix: str) -> dict[str, int]:
    """The packages of one repository; ``prefix`` places their files below the release directory."""
    ids: dict[str, int] = {}
    for element in iter_elements(path, f"{COMMON_NS}package"):
        version = element.find(f"{COMMON_NS}version")
        checksum = element.findtext(f"{COMMON_NS}checksum")
        location = element.find(f"{COMMON_NS}location")
        href = location.get("href") if location is not None else None
        if version is None or not checksum or not href:
            raise RepositoryError(f"{path.name} lists a package without its version, checksum or location")
        size = element.find(f"{COMMON_NS}size")
        fmt = element.find(f"{COMMON_NS}format")
        sourcerpm = fmt.findtext(f"{_RPM_NS}sourcerpm", "") if fmt is not None else ""
        cursor = db.execute(
            "INSERT INTO packages (pkgid, name, epoch, version, release, arch, sourcerpm, location, size, format)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'rpm')",
            (
                checksum, element.findtext(f"{COMMON_NS}name"), version.get("epoch", "0"), version.get("ver"),
                version.get("rel"), element.findtext(f"{COMMON_NS}arch"), sourcerpm, prefix + href,
                int(size.get("package", "0")) if size is not None else 0,
            ),
        )
        ids[checksum] = _inserted(cursor)
        provides = fmt.find(f"{_RPM_NS}provides") if fmt is not None else None
        for entry in provides if provides is not None else ():
            if entry.get("name") == "debuginfo(build-id)" and entry.get("ver"):
                db.execute("INSERT INTO build_ids VALUES (?, ?, 'debuginfo')", (entry.get("ver"), ids[checksum]))
    return ids


def _load_filelists(db: sqlite3.Connection, path: Path, ids: dict[str, int]) -> None:
    for element in iter_elements(path, f"{_FILELISTS_NS}package"):
        package = ids.get(element.get("pkgid", ""))
        if package is None:
            continue
        for file_element in element.iter(f"{_FILELISTS_NS}file"):
            name = file_element.text or ""
            if file_element.get("type") == "dir":
                continue
            _add_file(db, name, [package])


def _load_rpm_md(db: sqlite3.Connection, release_dir: Path) -> None:
    """Every repository of the release: a full mirror's one, or a metadata-only release's each."""
    for repository in rpm_repositories(release_dir):
        metadata = _metadata_files(repository, release_dir.name)
        prefix = "" if repository == release_dir else f"{repository.relative_to(release_dir)}/"
        ids = _load_primary(db, metadata["primary"], prefix)
        _load_filelists(db, metadata["filelists"], ids)


def _load_apt(db: sqlite3.Connection, release_dir: Path) -> None:
    """The release's Packages indexes (its arch and ``all``) and Contents files."""
    release = ReleaseId.parse(release_dir.name)
    arches = {debian_arch(release.arch) if release else "amd64", "all"}
    packages, contents = apt.index_files(release_dir)
    by_name: dict[str, list[int]] = {}
    for path in packages:
        with open_compressed(path) as stream:
            for row, build_ids in apt.package_rows(stream, arches):
                package = _inserted(db.execute("INSERT INTO packages (pkgid, name, epoch, version, release, arch, "
                                               "sourcerpm, location, size, format) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, "
                                               "'deb')", row))
                by_name.setdefault(row[1], []).append(package)
                db.executemany("INSERT INTO build_ids VALUES (?, ?, 'debuginfo')",
                               [(build_id, package) for build_id in build_ids])
    for path in (path for path in contents if apt.contents_arch(path.name) in arches):
        with open_compressed(path) as stream:
            for name, owners in apt.contents_rows(stream):
                rows = [row for owner in owners for row in by_name.get(owner, ())]
                _add_file(db, name, rows)


def _add_file(db: sqlite3.Connection, name: str, packages: Iterable[int]) -> None:
    """A file of ``packages``: a build-id link, or a path that may be mapped into a process."""
    debug_link = _DEBUG_LINK.fullmatch(name)
    binary_link = _BINARY_LINK.fullmatch(name)
    if debug_link:
        db.executemany("INSERT INTO build_ids VALUES (?, ?, 'debuginfo')",
                       [(debug_link[1] + debug_link[2], package) for package in packages])
    elif binary_link:
        db.executemany("INSERT INTO build_ids VALUES (?, ?, 'binary')",
                       [(binary_link[1] + binary_link[2], package) for package in packages])
    elif not name.startswith(_NOT_MAPPED):
        db.executemany("INSERT INTO files VALUES (?, ?)", [(name, package) for package in packages])


def _apt_digest(release_dir: Path) -> str:
    try:
        return "apt:" + apt.digest(release_dir)
    except (OSError, apt.AptIndexError) as err:
        raise RepositoryError(f"The repository of {release_dir.name} cannot be read: {err}") from None


# Each repository format's reader: (what changes when its metadata does, how its index is loaded).
_READERS = {
    RepositoryFormat.RPM_MD: (repomd_digest, _load_rpm_md),
    RepositoryFormat.RPM_MD_METADATA: (repomd_digest, _load_rpm_md),
    RepositoryFormat.APT: (_apt_digest, _load_apt),
}


def _reader(release_dir: Path) -> tuple[Callable[[Path], str], Callable[[sqlite3.Connection, Path], None]]:
    found = repository_format(release_dir)
    if found is None:
        raise RepositoryError(f"The repository of {release_dir.name} has no repodata/repomd.xml and no apt index")
    return _READERS[found]


def index_digest(release_dir: Path) -> str:
    """What changes when the repository's metadata does: repomd.xml, or the apt indexes."""
    return _reader(release_dir)[0](release_dir)


def build_index(release_dir: Path, target: Path, digest: str) -> None:
    """Write the index of ``release_dir`` to ``target`` (atomically)."""
    load = _reader(release_dir)[1]
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        db = sqlite3.connect(tmp)
        try:
            db.executescript(_SCHEMA)
            load(db, release_dir)
            db.executescript(_INDEXES)
            db.executemany("INSERT INTO meta VALUES (?, ?)", [("repomd", digest), ("schema", _SCHEMA_VERSION)])
            db.commit()
        finally:
            db.close()
        os.chmod(tmp, 0o640)
        os.replace(tmp, target)
    except DecoderMemoryExceeded as err:
        raise RepositoryError(f"The metadata of {release_dir.name} cannot be indexed: {err.sentence}") from None
    except (OSError, ET.ParseError, *CORRUPT_DATA, apt.AptIndexError) as err:
        raise RepositoryError(f"The metadata of {release_dir.name} cannot be indexed: {err}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _index_path(release_dir: Path, cache_dir: str | Path) -> Path:
    return Path(cache_dir) / "index" / f"{release_dir.name}.sqlite"


def _stored_digest(path: Path) -> str | None:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        rows = dict(db.execute("SELECT key, value FROM meta"))
    except sqlite3.Error:
        return None
    finally:
        db.close()
    return rows.get("repomd") if rows.get("schema") == _SCHEMA_VERSION else None


class RepoIndex:
    """Read-only queries against one release's index."""

    def __init__(self, release_dir: str | Path, db_path: Path, rebuilt: bool, digest: str) -> None:
        self.release_dir = Path(release_dir)
        self.rebuilt = rebuilt
        self.digest = digest  # of the metadata it was built from: what changes when the release changes
        found = repository_format(self.release_dir)
        if found is None:
            raise RepositoryError(f"The repository of {self.release_dir.name} has no repodata/repomd.xml and no apt "
                                  "index")
        self.format = found
        self._db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)

    @classmethod
    def open(cls, release_dir: str | Path, cache_dir: str | Path) -> RepoIndex:
        """The current index of ``release_dir``, rebuilt first if repomd.xml changed."""
        release_dir = Path(release_dir)
        target = _index_path(release_dir, cache_dir)
        index_dir = target.parent
        index_dir.mkdir(parents=True, exist_ok=True)
        digest = index_digest(release_dir)
        rebuilt = False
        if _stored_digest(target) != digest:
            with locking.exclusive(index_dir / f"{release_dir.name}.lock"):
                if _stored_digest(target) != digest:
                    build_index(release_dir, target, digest)
                    rebuilt = True
        return cls(release_dir, target, rebuilt, digest)

    @classmethod
    def current(cls, release_dir: str | Path, cache_dir: str | Path) -> RepoIndex | None:
        """The release's index if it is built and current, else None; never builds one (for web requests)."""
        release_dir = Path(release_dir)
        target = _index_path(release_dir, cache_dir)
        try:
            digest = index_digest(release_dir)
        except RepositoryError:
            return None
        return cls(release_dir, target, False, digest) if _stored_digest(target) == digest else None

    def holds_name_version(self, text: str) -> bool:
        """Whether a package ``name-[epoch:]version[-release]`` (the name may hold dashes) is indexed; without
        an epoch, any epoch."""
        return self.indexed_name(text) is not None

    def indexed_name(self, text: str) -> str | None:
        """The name of the package ``name-[epoch:]version[-release]`` when it is indexed, else None."""
        for cut in (match.start() for match in re.finditer(r"-(?=[0-9])", text)):
            name, full_version = text[:cut], text[cut + 1:]
            epoch, upstream, release = apt.split_version(full_version)
            any_epoch = ":" not in full_version
            row = self._db.execute("SELECT 1 FROM packages WHERE name = ? AND version = ? AND release = ? "
                                   "AND (? OR epoch = ?) LIMIT 1",
                                   (name, upstream, release, any_epoch, epoch)).fetchone()
            if row:
                return name
        return None

    def by_name(self, name: str) -> list[Package]:
        """Every package of that name the index holds (every version and architecture)."""
        return self._packages("WHERE p.name = ?", (name,))

    def by_file_name(self, pattern: str) -> list[Package]:
        """Packages whose file name fits the shell ``pattern`` (``linux-image-6.1.0-56-amd64-dbg_*.deb``)."""
        # GLOB's * also matches '/': the query narrows, fnmatch holds the pattern to the file name.
        found = self._packages("WHERE p.location GLOB ? OR p.location GLOB ?", (pattern, f"*/{pattern}"))
        return [package for package in found if fnmatch.fnmatchcase(package.file_name, pattern)]

    def close(self) -> None:
        self._db.close()

    def _packages(self, sql: str, args: tuple[object, ...]) -> list[Package]:
        rows = self._db.execute(
            "SELECT p.pkgid, p.name, p.epoch, p.version, p.release, p.arch, p.sourcerpm, p.location, p.size, "
            "p.format "
            f"FROM packages p {sql}",
            args,
        )
        return [Package(*row) for row in rows]

    def all_packages(self) -> list[Package]:
        return self._packages("", ())

    def by_build_id(self, build_id: str, kind: str) -> list[Package]:
        return self._packages("JOIN build_ids b ON b.package = p.id WHERE b.build_id = ? AND b.kind = ?", (build_id, kind))

    def debug_package_of(self, package: Package) -> Package | None:
        """The ``-dbgsym`` (or ``-dbg``) package of the same build as a Debian ``package``, found by name and
        version as apport does: Ubuntu's ddebs index has no Build-Ids field and no Contents."""
        if package.format != "deb":
            return None
        found = self._packages("WHERE p.name IN (?, ?) AND p.format = 'deb' AND p.arch = ? AND p.epoch = ? "
                               "AND p.version = ? AND p.release = ?",
                               (f"{package.name}-dbgsym", f"{package.name}-dbg", package.arch, package.epoch,
                                package.version, package.release))
        return found[0] if found else None

    def owners(self, path: str) -> list[Package]:
        """Packages that own ``path``, also across the /lib -> /usr/lib merge."""
        candidates = usr_merge_variants(path, merges_usr(self.release_dir.name))
        marks = ", ".join("?" for _ in candidates)
        return self._packages(f"JOIN files f ON f.package = p.id WHERE f.path IN ({marks})", tuple(candidates))

    def package_path(self, package: Package) -> Path:
        """The package's file; RepositoryError when the metadata names one outside the repository."""
        try:
            return Path(inside(self.release_dir, package.location or ""))
        except UnsafePath:
            raise RepositoryError(
                f"the metadata of {self.release_dir.name} places {package.nevra} at '{shown(package.location or '')}', "
                "outside the repository; the administrator must sync it again"
            ) from None


def release_index(repo_dir: str | Path, cache_dir: str | Path, release: ReleaseId | str, *,
                  rebuild: bool = True) -> RepoIndex | None:
    """The package index of ``release`` from its repository in ``repo_dir``, or None when this server keeps
    no repository of it (a release served through debuginfod alone).

    The one way in for the jobs, reports, the kernel path and the pages: the
    index is rebuilt first when the release's metadata changed, unless
    ``rebuild`` is False (a web request never builds one: it then gets None
    until a worker has).
    """
    release_dir = Path(repo_dir) / str(release)
    if repository_format(release_dir) is None:
        return None
    if not rebuild:
        return RepoIndex.current(release_dir, cache_dir)
    return RepoIndex.open(release_dir, cache_dir)
