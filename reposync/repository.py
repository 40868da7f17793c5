"""One release repository, ``<RepoDir>/<dist>-<ver>-<arch>/``, synced without a visible half state.

Packages arrive complete (see ``mirrors``); new metadata is written by
createrepo_c into a staging directory and swapped with ``repodata/`` in one
``renameat2(RENAME_EXCHANGE)``, so readers (the worker's index, dnf,
/settings) see the old metadata or the new, never none.  One sync per
release at a time: an flock the kernel drops if the sync dies.
"""
from __future__ import annotations

import ctypes
import dataclasses
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import requests

from retrace_server import locking
from retrace_server.arch import canonical_arch, debian_arch
from retrace_server.errors import system_module
from retrace_server.packaging.download import MIRROR_FILE
from retrace_server.packaging.release import REPOSITORIES, ReleaseId
from retrace_server.packaging.repoindex import RepoIndex, RepositoryError
from retrace_server.packaging.signatures import Keyring, SignatureError
from retrace_server.reposync.apt import (
    AptMirror,
    AptSource,
    AptSyncError,
    Refused,
    keep_superseded,
    sync_indexes,
    sync_pool,
)
from retrace_server.reposync.mirrors import MIRROR_LISTS, MirrorError, RepoMirror, http_session, mirror_for

if TYPE_CHECKING:
    from collections.abc import Iterable

    from retrace_server.config import Config
    from retrace_server.reposync.cli import Output
    from retrace_server.reposync.plugins import Plugins, Repository

EXIT_OK = 0
EXIT_LOCKED = 1
EXIT_USAGE = 2  # a release, plugin or configuration this command cannot work with, as every command's
EXIT_MIRRORS_FAILED = 3
EXIT_CREATEREPO_FAILED = 4
EXIT_PACKAGES_REFUSED = 5
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_LIST_TIMEOUT = 60
_HREF = re.compile(r'href="([^"?/][^"?]*)"')


class SyncError(Exception):
    """The sync cannot run; ``exit_code`` says how the command ends."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclasses.dataclass
class SyncSummary:
    release: str
    added: int = 0
    bytes: int = 0
    removed: int = 0
    failed_repositories: list[str] = dataclasses.field(default_factory=list)
    refused: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (file name, why): bad signatures
    metadata_updated: bool = False
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        if self.failed_repositories:
            return EXIT_MIRRORS_FAILED
        return EXIT_PACKAGES_REFUSED if self.refused else EXIT_OK

    def line(self) -> str:
        text = (
            f"{self.release}: {self.added} packages added ({self.bytes / 1048576:.1f} MiB), {self.removed} removed, "
            f"metadata {'updated' if self.metadata_updated else 'unchanged'}, {self.seconds:.1f} s"
        )
        if self.failed_repositories:
            text += "; no working mirror for: " + ", ".join(self.failed_repositories)
        if self.refused:
            text += f"; {len(self.refused)} refused (signature): " + ", ".join(name for name, _ in self.refused)
        return text


def exchange_directories(first: Path, second: Path) -> None:
    """Atomically swap two directories (Linux renameat2); falls back to two renames."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
        if result == 0:
            return
    parked = Path(f"{second}.old")
    os.rename(second, parked)
    os.rename(first, second)
    os.rename(parked, first)


def _rpm_header(path: Path) -> Any:
    rpm = system_module("rpm")
    transaction = rpm.TransactionSet()
    transaction.setVSFlags(rpm._RPMVSF_NOSIGNATURES | rpm._RPMVSF_NODIGESTS)
    with open(path, "rb") as handle:
        return transaction.hdrFromFdno(handle.fileno())


def prune_rawhide(packages_dir: Path, keep: int, report: Callable[[str], None], dry_run: bool = False) -> int:
    """Keep the ``keep`` newest versions of each package name and arch; returns how many went."""
    rpm = system_module("rpm")
    by_name: dict[tuple[str, str], list[tuple[tuple[str, str, str], Path]]] = {}
    for path in packages_dir.glob("*.rpm"):
        try:
            header = _rpm_header(path)
        except (rpm.error, OSError):
            continue
        evr = (str(header[rpm.RPMTAG_EPOCH] or 0), header[rpm.RPMTAG_VERSION], header[rpm.RPMTAG_RELEASE])
        by_name.setdefault((header[rpm.RPMTAG_NAME], header[rpm.RPMTAG_ARCH]), []).append((evr, path))
    removed = 0
    for versions in by_name.values():
        ordered = sorted(versions, key=_LabelKey, reverse=True)
        for _evr, path in ordered[keep:]:
            report(f"  {'would remove' if dry_run else 'removing'} {path.name} (rawhide keeps the {keep} newest)")
            if not dry_run:
                path.unlink()
            removed += 1
    return removed


class _LabelKey:
    """Sort key comparing ``(evr, path)`` pairs by rpm's own version order."""

    def __init__(self, item: tuple[tuple[str, str, str], Path]) -> None:
        self.evr = item[0]

    def __lt__(self, other: _LabelKey) -> bool:
        return bool(system_module("rpm").labelCompare(self.evr, other.evr) < 0)


def write_metadata(target: Path, staging: Path, use_update: bool, report: Callable[[str], None]) -> None:
    """createrepo_c into ``staging`` and swap the result in; the old metadata is removed."""
    output = staging / "metadata"
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir()
    argv = ["createrepo_c", "--quiet", "--outputdir", str(output)]
    if use_update and (target / "repodata" / "repomd.xml").is_file():
        argv += ["--update", "--update-md-path", str(target / "repodata")]
    argv.append(str(target))
    process = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if process.returncode != 0:
        raise SyncError(f"createrepo_c failed: {process.stderr.strip()[-500:]}", EXIT_CREATEREPO_FAILED)
    new = output / "repodata"
    if (target / "repodata").is_dir():
        exchange_directories(new, target / "repodata")
        shutil.rmtree(new)
    else:
        os.rename(new, target / "repodata")
    report(f"  metadata written by createrepo_c{' --update' if '--update' in argv else ''}")


def parse_release(distribution: str, version: str, arch: str) -> ReleaseId:
    release = ReleaseId.parse(f"{distribution.lower()}-{version.lower()}-{canonical_arch(arch)}")
    if release is None:
        raise SyncError(f"'{distribution} {version} {arch}' is not a release (e.g. fedora 41 x86_64)", EXIT_USAGE)
    return release


def sync_release(config: Config, plugins: Plugins, release: ReleaseId, output: Output, dry_run: bool = False,
                 session: requests.Session | None = None, metadata_only: bool = False) -> SyncSummary:
    """Sync one release from its plugin's mirrors; a SyncSummary (SyncError when it cannot run)."""
    repositories = plugins.get(release.distribution)
    if repositories is None:
        known = ", ".join(sorted(plugins)) or "none"
        raise SyncError(f"no plugin for the distribution '{release.distribution}' (known: {known})", EXIT_USAGE)
    if not repositories:
        raise SyncError(
            f"the plugin for '{release.distribution}' lists no repositories; add mirrors (see README, reposync)",
            EXIT_USAGE,
        )
    started = time.monotonic()
    if not os.access(config.RepoDir, os.W_OK | os.X_OK):
        raise SyncError(
            f"RepoDir {config.RepoDir} is not writable by this user (uid {os.geteuid()}); "
            "chown it to the service user", EXIT_USAGE,
        )
    target = Path(config.RepoDir) / str(release)
    lock_path = Path(config.RepoDir) / f".reposync-{release}.lock"
    try:
        lock_fd = locking.try_exclusive(lock_path)
    except OSError as err:
        raise SyncError(f"cannot use {lock_path}: {err.strerror} (run as the service user?)", EXIT_USAGE) from None
    if lock_fd is None:
        raise SyncError(f"another reposync of {release} is running; this one stops", EXIT_LOCKED)
    try:
        staging = Path(config.RepoDir) / f".reposync-{release}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        if isinstance(repositories, AptSource):
            summary = _sync_apt(config, repositories, release, target, staging, output, dry_run, metadata_only,
                                session or http_session())
            shutil.rmtree(staging, ignore_errors=True)
            summary.seconds = time.monotonic() - started
            return summary
        if metadata_only:
            summary = _sync_rpm_metadata(config, repositories, release, target, staging, output, dry_run)
            shutil.rmtree(staging, ignore_errors=True)
            summary.seconds = time.monotonic() - started
            return summary
        packages_dir = target / "Packages"
        if not dry_run:
            packages_dir.mkdir(parents=True, exist_ok=True)
        summary = SyncSummary(str(release))
        # Partly downloaded packages outlive a stopped sync (staging does not) and are resumed by the next.
        resume_dir = staging.with_name(f"{staging.name}.partial")
        try:
            keyring = None if dry_run else Keyring.for_release(config, release)
        except SignatureError as err:
            raise SyncError(err.sentence, EXIT_USAGE) from None
        for repository in repositories:
            _sync_repository(repository, release, packages_dir, staging, resume_dir, output, dry_run, summary,
                             keyring)
        if not summary.failed_repositories:
            shutil.rmtree(resume_dir, ignore_errors=True)
        if release.version == "rawhide" and packages_dir.is_dir():
            summary.removed = prune_rawhide(packages_dir, config.KeepRawhideLatest, output.item, dry_run)
        changed = summary.added or summary.removed or not (target / "repodata" / "repomd.xml").is_file()
        if changed and not dry_run and packages_dir.is_dir():
            write_metadata(target, staging, config.UseCreaterepoUpdate, output.step)
            summary.metadata_updated = True
            if (target / REPOSITORIES).is_dir():
                shutil.rmtree(target / REPOSITORIES)
                output.step("  the metadata-only copy is replaced by this full mirror")
            _prebuild_index(target, config.CacheDir, output.step)
        shutil.rmtree(staging, ignore_errors=True)
        summary.seconds = time.monotonic() - started
        return summary
    finally:
        os.close(lock_fd)


def _sync_apt(config: Config, source: AptSource, release: ReleaseId, target: Path, staging: Path, output: Output,
              dry_run: bool, metadata_only: bool, session: requests.Session) -> SyncSummary:
    """An apt release: the first mirror whose signed indexes verify, then (unless metadata-only) its packages."""
    summary = SyncSummary(str(release))
    metadata_only = metadata_only or source.metadata_only
    keyrings = config.required_gpg_keys(str(release))
    if keyrings is not None and not keyrings:
        raise SyncError(f"RequireGPGCheck = 1, but no keyring is configured for {release}: list the archive keyring "
                        "(e.g. /usr/share/keyrings/debian-archive-keyring.gpg) in the [gpgkeys] section", EXIT_USAGE)
    try:
        suites = source.suite_names(release)
    except AptSyncError as err:
        raise SyncError(str(err), EXIT_USAGE) from None
    debarch = debian_arch(release.arch)
    for url in source.mirrors:
        mirror = AptMirror(url, session)
        output.step(f"{', '.join(suites)}: {mirror.url}")
        shutil.rmtree(staging / "dists", ignore_errors=True)
        try:
            packages_files = sync_indexes(mirror, suites, source.components, debarch, keyrings, staging, output.step)
        except Refused as err:
            output.step(f"  refused: {err}")
            summary.refused.append((mirror.url, str(err)))
            continue
        except AptSyncError as err:
            output.step(f"  mirror failed: {err}; trying the next one")
            continue
        if dry_run:
            return summary
        target.mkdir(parents=True, exist_ok=True)
        if not metadata_only:
            pooled = sync_pool(mirror, packages_files, debarch, target, staging, output.item)
            summary.added, summary.bytes, summary.refused = pooled.added, pooled.bytes, summary.refused + pooled.refused
            summary.failed_repositories += pooled.failed
            output.step(f"  {pooled.added} new packages ({pooled.bytes / 1048576:.1f} MiB)")
        superseded = keep_superseded(target, staging, config.KeepSupersededDays * 86400, time.time())
        if superseded:
            output.step(f"  {superseded} packages the mirror no longer lists are kept in the index "
                        f"(KeepSupersededDays = {config.KeepSupersededDays})")
        _install_indexes(staging, target, mirror.url, metadata_only)
        summary.metadata_updated = True
        output.step("  indexes installed" + (" (metadata only: workers download packages from this mirror)"
                                             if metadata_only else ""))
        _prebuild_index(target, config.CacheDir, output.step)
        return summary
    summary.failed_repositories.append(", ".join(suites))
    return summary


def _sync_rpm_metadata(config: Config, repositories: Iterable[Repository], release: ReleaseId, target: Path,
                       staging: Path, output: Output, dry_run: bool) -> SyncSummary:
    """Each repository's metadata from its first http(s) mirror that serves it, in ``repositories/<name>/``;
    workers download the packages a crash needs from that mirror.  A repository no mirror serves keeps the
    metadata of its last sync."""
    if (target / "repodata").is_dir():
        raise SyncError(f"{release} is a full mirror here; remove RepoDir/{release} first to keep only its "
                        "metadata", EXIT_USAGE)
    summary = SyncSummary(str(release))
    fresh = staging / REPOSITORIES
    fresh.mkdir()
    for repository in repositories:
        previous = target / REPOSITORIES / repository.name
        if not _fetch_rpm_metadata(repository, release, fresh / repository.name, previous, output, dry_run):
            output.step(f"  no working mirror for {repository.name}")
            summary.failed_repositories.append(repository.name)
            if previous.is_dir() and not dry_run:
                shutil.copytree(previous, fresh / repository.name, copy_function=os.link)
    if dry_run or not any(fresh.iterdir()):
        return summary
    if (target / REPOSITORIES).is_dir():
        exchange_directories(fresh, target / REPOSITORIES)
    else:
        target.mkdir(parents=True, exist_ok=True)
        os.rename(fresh, target / REPOSITORIES)
    summary.metadata_updated = True
    _prebuild_index(target, config.CacheDir, output.step)
    return summary


def _fetch_rpm_metadata(repository: Repository, release: ReleaseId, target: Path, previous: Path, output: Output,
                        dry_run: bool) -> bool:
    """Whether one of the repository's http(s) mirrors gave its metadata into ``target``."""
    for url in repository.mirror_urls(release.version, release.arch):
        output.step(f"{repository.name}: {url} (metadata only)")
        try:
            mirror = mirror_for(url, repository.tls)
        except MirrorError as err:
            output.step(f"  mirror failed: {err}; trying the next one")
            continue
        if not isinstance(mirror, RepoMirror):
            output.step("  skipped: workers download the packages of a metadata-only release over http(s)")
            continue
        if dry_run:
            output.step("  would fetch repomd.xml, primary and filelists")
            return True
        try:
            unchanged = mirror.fetch_metadata(target, previous if previous.is_dir() else None)
        except (MirrorError, OSError) as err:
            shutil.rmtree(target, ignore_errors=True)
            output.step(f"  mirror failed: {err}; trying the next one")
            continue
        output.step("  metadata unchanged" if unchanged else "  metadata fetched (repomd.xml, primary, filelists)")
        return True
    return False


def _install_indexes(staging: Path, target: Path, mirror_url: str, metadata_only: bool) -> None:
    """Swap the new ``dists/`` in; a metadata-only release names its mirror for the workers."""
    if (target / "dists").is_dir():
        exchange_directories(staging / "dists", target / "dists")
        shutil.rmtree(staging / "dists")
    else:
        os.rename(staging / "dists", target / "dists")
    if metadata_only:
        (target / MIRROR_FILE).write_text(mirror_url + "\n")
    else:
        (target / MIRROR_FILE).unlink(missing_ok=True)


_FAILURES_SHOWN = 10


def _sync_repository(repository: Repository, release: ReleaseId, packages_dir: Path, staging: Path,
                     resume_dir: Path, output: Output, dry_run: bool, summary: SyncSummary, keyring: Keyring | None) -> None:
    """The repository's packages from its first mirror that has them all; what one mirror fails to give (a
    corrupt or missing file) is asked of the next."""
    failed: list[tuple[str, str]] = []
    for url in repository.mirror_urls(release.version, release.arch):
        output.step(f"{repository.name}: {url}")
        try:
            result = mirror_for(url, repository.tls, resume_dir).sync(packages_dir, staging, output.item, dry_run)
        except MirrorError as err:
            output.step(f"  mirror failed: {err}; trying the next one")
            continue
        if keyring is not None:
            result.added = _refuse_unverified(packages_dir, result.added, keyring, output.step, summary)
        summary.added += len(result.added)
        summary.bytes += result.bytes
        output.step(f"  {len(result.added)} new packages ({result.bytes / 1048576:.1f} MiB)")
        failed = result.failed
        if not failed:
            return
        for _name, why in failed[:_FAILURES_SHOWN]:
            output.step(f"  {why}")
        more = f" ({len(failed) - _FAILURES_SHOWN} more not shown)" if len(failed) > _FAILURES_SHOWN else ""
        output.step(f"  {len(failed)} packages failed here{more}; trying the next mirror")
    output.step(f"  no working mirror for {repository.name}" + (f" ({len(failed)} packages missing)" if failed else ""))
    summary.failed_repositories.append(repository.name)


def _refuse_unverified(packages_dir: Path, names: Iterable[str], keyring: Keyring, report: Callable[[str], None],
                       summary: SyncSummary) -> list[str]:
    """The new packages whose signatures verify; the others are deleted before any metadata names them."""
    kept: list[str] = []
    for name in names:
        try:
            keyring.verify(packages_dir / name, name)
        except SignatureError as err:
            (packages_dir / name).unlink(missing_ok=True)
            report(f"  refused {name}: {err.sentence}")
            summary.refused.append((name, err.sentence))
            continue
        kept.append(name)
    return kept


def _prebuild_index(target: Path, cache_dir: Path, report: Callable[[str], None]) -> None:
    """Index the new metadata now, so the first task after the sync does not pay for it."""
    try:
        RepoIndex.open(target, cache_dir).close()
        report("  build-id index rebuilt")
    except (OSError, RepositoryError) as err:
        report(f"  the build-id index will be rebuilt by the first task ({err})")


def discover_versions(plugins: Plugins, distribution: str, arch: str,
                      session: requests.Session | None = None) -> list[str]:
    """Versions the first mirror of the distribution's first repository offers (``--discover``)."""
    repositories = plugins.get(distribution)
    if isinstance(repositories, AptSource):
        raise SyncError(f"--discover reads the version directories of rpm-md mirrors; '{distribution}' is an apt "
                        "source, whose releases are its suites (give the version to sync, e.g. debian 12 x86_64)",
                        EXIT_USAGE)
    if not repositories:
        raise SyncError(f"no plugin with repositories for '{distribution}'", EXIT_USAGE)
    # A directory listing is read: a metalink or mirrorlist names no directory of versions.
    template = next((mirror for mirror in repositories[0].mirrors if not mirror.startswith(MIRROR_LISTS)), "")
    if "$VER" not in template:
        raise SyncError(f"no mirror of '{distribution}' has a $VER directory to discover versions in", EXIT_USAGE)
    parent = template.split("$VER", 1)[0]
    names = _list_directory(parent.replace("$ARCH", arch), session or http_session())
    return sorted({name for name in names if name.isdigit() or name == "rawhide"}, key=lambda v: (not v.isdigit(), v.zfill(8)))


def _list_directory(url: str, session: requests.Session) -> list[str]:
    if url.startswith(("http://", "https://")):
        try:
            response = session.get(url, timeout=_LIST_TIMEOUT)
        except requests.RequestException as err:
            raise SyncError(f"cannot list {url}: {err}", EXIT_MIRRORS_FAILED) from None
        if response.status_code != 200:
            raise SyncError(f"cannot list {url}: HTTP {response.status_code}", EXIT_MIRRORS_FAILED)
        return [href.rstrip("/") for href in _HREF.findall(response.text)]
    if url.startswith("rsync://"):
        process = subprocess.run(["rsync", "--no-motd", "--list-only", url], capture_output=True, text=True)
        if process.returncode != 0:
            raise SyncError(f"cannot list {url}: {process.stderr.strip()}", EXIT_MIRRORS_FAILED)
        return [line.split()[-1] for line in process.stdout.splitlines() if line.strip()]
    path = Path(url[len("file://"):] if url.startswith("file://") else url)
    if not path.is_dir():
        raise SyncError(f"cannot list {path}: not a directory", EXIT_MIRRORS_FAILED)
    return [entry.name for entry in path.iterdir()]

