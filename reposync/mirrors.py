"""Mirror kinds: an rpm-md repository over HTTP(S) (a base URL, a metalink or a mirrorlist), an rsync URL, a
local directory.

Each copies the RPMs it offers that ``Packages/`` lacks (same name and size
means present: packages are immutable once published) and never deletes
anything.  New files are written beside ``Packages/`` and moved in only once
complete and verified (HTTP: the checksum from the mirror's metadata; rsync:
its own whole-file checksum, ``--delay-updates``), so a failed or corrupt
transfer leaves ``Packages/`` as it was.  A mirror that cannot be used
raises MirrorError; the caller tries the next one.

HTTP goes through librepo, dnf's own downloader: metalinks and mirrorlists
(what Fedora's repositories are published through; a repomd.xml that does
not match the metalink's hash is not used), parallel downloads with
failover between a metalink's mirrors, resumed downloads, checksums, TLS
client certificates (the RHEL CDN's entitlement certificates).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from retrace_server.errors import system_module
from retrace_server.packaging.download import MIRROR_FILE
from retrace_server.packaging.repoindex import COMMON_NS, REPO_NS, iter_elements

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

_CONNECT_SECONDS = 15
_STALLED_SECONDS = 120  # below _STALLED_BYTES a second for this long: the mirror is given up
_STALLED_BYTES = 1024
_PARALLEL_DOWNLOADS = 4
_HASHES = {"sha256", "sha1", "sha512", "sha384", "sha224", "md5"}
_METADATA_LIMIT = 2 << 30  # all metadata of one repository (repomd.xml gives no size of itself)
_METADATA_HREF = re.compile(r"repodata/[A-Za-z0-9][A-Za-z0-9._+-]*")
_INDEXED_METADATA = ("primary", "filelists")  # what the worker's index reads
# How a mirror line names a metalink or a mirrorlist rather than a repository's base URL.
MIRROR_LISTS = ("metalink:", "mirrorlist:")


class MirrorError(Exception):
    """This mirror cannot be used now; the message says why."""


@dataclasses.dataclass
class MirrorResult:
    added: list[str] = dataclasses.field(default_factory=list)
    bytes: int = 0
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (package, why): the next mirror may


class Mirror(Protocol):
    """Where a repository's packages come from: HTTP(S) through librepo, rsync, or a local directory."""

    def sync(self, packages_dir: Path, staging: Path, report: Callable[[str], None],
             dry_run: bool = False) -> MirrorResult:
        """Bring the packages ``packages_dir`` lacks (through ``staging``), saying each to ``report``."""
        ...


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """The TLS files a distribution's mirrors want (a plugin's sslclientcert, sslclientkey, sslcacert)."""

    client_cert: str | None = None
    client_key: str | None = None
    ca_cert: str | None = None


def _present(packages_dir: Path, name: str, size: int) -> bool:
    try:
        return (packages_dir / name).stat().st_size == size
    except FileNotFoundError:
        return False


def _same_file(first: Path, second: Path) -> bool:
    try:
        return first.read_bytes() == second.read_bytes()
    except OSError:
        return False


def _safe_name(href: str) -> str | None:
    name = href.rsplit("/", 1)[-1]
    if not name.endswith(".rpm") or name.startswith(".") or "/" in name or "\\" in name:
        return None
    return name


def http_session() -> requests.Session:
    session = requests.Session()
    retry = Retry(total=3, backoff_factor=0.5, status_forcelist=(500, 502, 503, 504))
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.mount("https://", HTTPAdapter(max_retries=retry))
    return session


class RepoMirror:
    """A yum/dnf repository over HTTP(S), through librepo: repomd.xml -> primary -> packages.

    ``url`` is the repository's base URL, or ``metalink:URL`` or ``mirrorlist:URL``.  ``resume_dir`` keeps
    partly downloaded packages between runs (a sync stopped by a timeout or a reboot goes on where it was).
    """

    def __init__(self, url: str, tls: TlsFiles | None = None, resume_dir: Path | None = None) -> None:
        self.tls, self.resume_dir = tls or TlsFiles(), resume_dir
        kind, _, address = url.partition(":") if url.startswith(MIRROR_LISTS) else ("baseurl", "", url)
        self.kind = kind
        self.address = address if kind != "baseurl" else address.rstrip("/") + "/"
        self.used: str | None = None  # the base URL the metadata came from (a metalink's or mirrorlist's choice)

    def _handle(self, directory: Path, metadata: Iterable[str]) -> Any:
        """A librepo handle that fetches repomd.xml and the ``metadata`` it lists into ``directory``."""
        librepo = system_module("librepo")
        handle = librepo.Handle()
        handle.repotype = librepo.YUMREPO
        if self.kind == "metalink":
            handle.metalinkurl = self.address
        elif self.kind == "mirrorlist":
            handle.mirrorlisturl = self.address
        else:
            handle.urls = [self.address]
        handle.destdir = str(directory)
        handle.yumdlist = list(metadata)
        handle.checksum = True
        handle.connecttimeout = _CONNECT_SECONDS
        handle.lowspeedtime = _STALLED_SECONDS
        handle.lowspeedlimit = _STALLED_BYTES
        handle.maxparalleldownloads = _PARALLEL_DOWNLOADS
        handle.interruptible = True
        handle.progresscb = _metadata_limit
        if self.tls.client_cert:
            handle.sslclientcert = self.tls.client_cert
        if self.tls.client_key:
            handle.sslclientkey = self.tls.client_key
        if self.tls.ca_cert:
            handle.sslcacert = self.tls.ca_cert
        return handle

    def _perform(self, directory: Path, metadata: Iterable[str]) -> tuple[Any, Any]:
        """The handle after fetching; repomd.xml's hrefs are checked before any other file is asked for."""
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(directory / "repodata", ignore_errors=True)  # librepo writes only into a new repodata/
        handle = self._handle(directory, ())
        result = self._run(handle)
        repomd = _parse_repomd(Path(result.yum_repo["repomd"]), self.address)
        for kind in metadata:
            _metadata_href(repomd, kind, self.address)
        self.used = result.yum_repo["url"] or self.address
        if metadata:
            shutil.rmtree(directory / "repodata")
            handle = self._handle(directory, metadata)
            result = self._run(handle)
        return handle, result

    def _run(self, handle: Any) -> Any:
        result = system_module("librepo").Result()
        with _librepo_errors(f"cannot download {self.address}"):
            handle.perform(result)
        return result

    def fetch_metadata(self, target: Path, previous: Path | None = None) -> bool:
        """A metadata-only copy of the repository in ``target``: repomd.xml with the primary and filelists it
        lists, and a ``mirror`` file naming the mirror, which workers download the packages a crash needs
        from.  Files of ``previous`` (the last copy) are reused while repomd.xml is unchanged."""
        self._perform(target, ())
        unchanged = previous is not None and _same_file(previous / "repodata" / "repomd.xml",
                                                        target / "repodata" / "repomd.xml")
        if unchanged and previous is not None:
            repomd = _parse_repomd(target / "repodata" / "repomd.xml", self.address)
            for kind in _INDEXED_METADATA:
                href = _metadata_href(repomd, kind, self.address)
                if not (previous / href).is_file():
                    unchanged = False
                    break
                os.link(previous / href, target / href)
        if not unchanged:
            self._perform(target, _INDEXED_METADATA)
        assert self.used is not None  # _perform set it
        (target / MIRROR_FILE).write_text(self.used + "\n")
        return unchanged

    def _packages(self, staging: Path) -> tuple[Any, list[tuple[str, int, tuple[str, str]]]]:
        """The handle (its mirrors) and ``(href, size, (checksum type, value))`` of every package."""
        handle, result = self._perform(staging, ("primary",))
        packages: list[tuple[str, int, tuple[str, str]]] = []
        try:
            for element in iter_elements(Path(result.yum_repo["primary"]), f"{COMMON_NS}package"):
                package_checksum = element.find(f"{COMMON_NS}checksum")
                size = element.find(f"{COMMON_NS}size")
                package_location = element.find(f"{COMMON_NS}location")
                checksum_type = package_checksum.get("type", "") if package_checksum is not None else ""
                if package_checksum is None or package_location is None or checksum_type not in _HASHES:
                    continue
                packages.append((package_location.get("href", ""),
                                 int(size.get("package", "-1")) if size is not None else -1,
                                 (checksum_type, package_checksum.text or "")))
        except (ET.ParseError, OSError, EOFError, ValueError) as err:
            raise MirrorError(f"the primary metadata of {self.address} cannot be read ({err})") from None
        return handle, packages

    def sync(self, packages_dir: Path, staging: Path, report: Callable[[str], None],
             dry_run: bool = False) -> MirrorResult:
        result = MirrorResult()
        handle, packages = self._packages(staging)
        wanted = []
        for href, size, checksum in packages:
            name = _safe_name(href)
            if name is None or size < 0 or _present(packages_dir, name, size):
                continue
            report(f"  {'would download' if dry_run else 'downloading'} {name} ({size} bytes)")
            wanted.append((name, href, size, checksum))
        if dry_run or not wanted:
            result.added = [name for name, *_ in wanted]
            return result
        partial = self.resume_dir or staging
        partial.mkdir(exist_ok=True)
        resumed = {name for name, *_ in wanted if (partial / f"{name}.part").exists()}
        failures = self._download(handle, partial, wanted)
        # A resumed file whose first part was not the package's fails its checksum: fetched again, whole.
        again = [package for package in wanted if package[0] in resumed and failures.get(package[0], ("",))[0]]
        for name, *_ in again:
            (partial / f"{name}.part").unlink(missing_ok=True)
        failures.update(self._download(handle, partial, again) if again else {})
        for name, _href, size, checksum in wanted:
            part = partial / f"{name}.part"
            if name not in failures:
                os.replace(part, packages_dir / name)
                result.added.append(name)
                result.bytes += size
                continue
            corrupt, message, url = failures[name]
            if corrupt:  # not resumed by the next run
                part.unlink(missing_ok=True)
                result.failed.append((name, f"{url} is corrupt: its {checksum[0]} does not match the repository "
                                            "metadata"))
            else:
                result.failed.append((name, f"cannot download {url}: {message}"))
        return result

    def _download(self, handle: Any, partial: Path,
                  wanted: list[tuple[str, str, int, tuple[str, str]]]) -> dict[str, tuple[bool, str, str]]:
        """``{name: (checksum mismatch?, librepo's words, url)}`` of the ``wanted`` packages that failed, each
        downloaded (or resumed) into ``partial/<name>.part`` from the handle's mirrors in parallel."""
        # Per package, the last mirror's failure: the target itself only says "all mirrors tried".
        reasons: dict[str, tuple[str, str]] = {}

        def mirror_failed(name: str, message: str, url: str) -> None:
            reasons[name] = (message, url)

        librepo = system_module("librepo")
        targets = [librepo.PackageTarget(href, dest=str(partial / f"{name}.part"), handle=handle, resume=True,
                                         checksum_type=librepo.checksum_str_to_type(checksum[0]),
                                         checksum=checksum[1], expectedsize=size, cbdata=name,
                                         mirrorfailurecb=mirror_failed)
                   for name, href, size, checksum in wanted]
        with _librepo_errors(f"cannot download from {self.used}"):
            librepo.download_packages(targets, failfast=False)
        failures: dict[str, tuple[bool, str, str]] = {}
        for target, (name, *_) in zip(targets, wanted):
            if target.err is not None:
                message, url = reasons.get(name, (str(target.err), self.used or self.address))
                failures[name] = ("checksum" in message.lower(), message, url)
        return failures


@contextlib.contextmanager
def _librepo_errors(what: str) -> Iterator[None]:
    """librepo's failures as MirrorError("<what>: <librepo's words>"); Ctrl-C (librepo catches SIGINT while it
    downloads) as KeyboardInterrupt."""
    librepo = system_module("librepo")
    try:
        yield
    except librepo.LibrepoException as err:
        if err.args[0] == librepo.LRE_INTERRUPTED:
            raise KeyboardInterrupt from None
        raise MirrorError(f"{what}: {err.args[1]}") from None


def _metadata_limit(_data: object, _total: float, downloaded: float) -> int:
    """librepo's progress callback while metadata downloads: a mirror sending more than any repository's
    metadata is refused before it fills the disk."""
    librepo = system_module("librepo")
    return int(librepo.CB_ABORT if downloaded > _METADATA_LIMIT else librepo.CB_OK)


def _parse_repomd(path: Path, url: str) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as err:
        raise MirrorError(f"{url}repodata/repomd.xml is not valid XML ({err})") from None


def _metadata_href(repomd: ET.Element, kind: str, url: str) -> str:
    """Where repomd.xml places the ``kind`` metadata: only a plain file in repodata/ is used."""
    data = next((d for d in repomd.iter(f"{REPO_NS}data") if d.get("type") == kind), None)
    location = data.find(f"{REPO_NS}location") if data is not None else None
    if location is None:
        raise MirrorError(f"{url}repodata/repomd.xml lists no {kind} metadata")
    href = location.get("href", "")
    if not _METADATA_HREF.fullmatch(href):
        raise MirrorError(f"{url}repodata/repomd.xml places its {kind} metadata at '{href[:100]}', not in repodata/")
    return href


class RsyncMirror:
    """``rsync://`` URLs (wildcards allowed, as upstream's plugins use them)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def sync(self, packages_dir: Path, staging: Path, report: Callable[[str], None],
             dry_run: bool = False) -> MirrorResult:
        argv = [
            "rsync", "-t", "--no-motd", "--delay-updates", f"--temp-dir={staging}", "--out-format=%n %l",
            "--include=*.rpm", "--exclude=*", *(["--dry-run"] if dry_run else []), self.url, f"{packages_dir}/",
        ]
        try:
            process = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=24 * 3600)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise MirrorError(f"rsync from {self.url} failed: {err}") from None
        if process.returncode != 0:
            reason = process.stderr.strip().splitlines()[-1:] or [f"exit status {process.returncode}"]
            raise MirrorError(f"rsync from {self.url} failed: {reason[0]}")
        result = MirrorResult()
        for line in process.stdout.splitlines():
            name, _, size = line.rpartition(" ")
            if name.endswith(".rpm"):
                report(f"  {'would fetch' if dry_run else 'fetched'} {name}")
                result.added.append(name)
                result.bytes += int(size) if size.isdigit() else 0
        return result


class LocalMirror:
    """A directory on this machine (or a ``file://`` URL), searched recursively for RPMs."""

    def __init__(self, url: str) -> None:
        self.root = Path(urlsplit(url).path if url.startswith("file://") else url)

    def sync(self, packages_dir: Path, staging: Path, report: Callable[[str], None],
             dry_run: bool = False) -> MirrorResult:
        try:
            return self._copy_new(packages_dir, staging, report, dry_run)
        except OSError as err:
            raise MirrorError(f"cannot read the local mirror {self.root}: {err.strerror}") from None

    def _copy_new(self, packages_dir: Path, staging: Path, report: Callable[[str], None], dry_run: bool) -> MirrorResult:
        if not self.root.is_dir():
            raise MirrorError(f"the local mirror {self.root} is not a directory")
        result = MirrorResult()
        for source in sorted(self.root.rglob("*.rpm")):
            size = source.stat().st_size
            if not source.is_file() or _present(packages_dir, source.name, size):
                continue
            report(f"  {'would copy' if dry_run else 'copying'} {source.name}")
            if not dry_run:
                part = staging / f"{source.name}.part"
                shutil.copyfile(source, part)
                if part.stat().st_size != size:
                    part.unlink()
                    raise MirrorError(f"{source} changed while it was copied")
                os.replace(part, packages_dir / source.name)
            result.added.append(source.name)
            result.bytes += size
        return result


def mirror_for(url: str, tls: TlsFiles | None = None, resume_dir: Path | None = None) -> Mirror:
    if url.startswith(MIRROR_LISTS) or urlsplit(url).scheme in ("http", "https"):
        return RepoMirror(url, tls, resume_dir)
    scheme = urlsplit(url).scheme
    if scheme == "rsync":
        return RsyncMirror(url)
    if scheme in ("", "file"):
        return LocalMirror(url)
    raise MirrorError(f"unsupported mirror URL {url} (use http://, https://, metalink:https://..., "
                      "mirrorlist:https://..., rsync:// or a local directory)")
