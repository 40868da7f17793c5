"""Mirror kinds: an HTTP(S) repository, an rsync URL, a local directory.

Each copies the RPMs it offers that ``Packages/`` lacks (same name and size
means present: packages are immutable once published) and never deletes
anything.  New files are written under the staging directory and moved in
only once complete and verified (HTTP: the checksum from the mirror's
metadata; rsync: its own whole-file checksum, ``--delay-updates``), so a
failed or corrupt transfer leaves ``Packages/`` as it was.  A mirror that
cannot be used raises MirrorError; the caller tries the next one.
"""

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from retrace_server.packaging.download import MIRROR_FILE
from retrace_server.packaging.repoindex import COMMON_NS, REPO_NS, iter_elements

_CHUNK = 1024 * 1024
_TIMEOUT = (15, 120)
_HASHES = {"sha256", "sha1", "sha512", "sha384", "sha224", "md5"}
_REPOMD_LIMIT = 1 << 20
_METADATA_LIMIT = 2 << 30  # a metadata file whose size repomd.xml does not give
_METADATA_HREF = re.compile(r"repodata/[A-Za-z0-9][A-Za-z0-9._+-]*")
_INDEXED_METADATA = ("primary", "filelists")  # what the worker's index reads


class MirrorError(Exception):
    """This mirror cannot be used now; the message says why."""


@dataclasses.dataclass
class MirrorResult:
    added: list = dataclasses.field(default_factory=list)
    bytes: int = 0


def _present(packages_dir, name, size):
    try:
        return (packages_dir / name).stat().st_size == size
    except FileNotFoundError:
        return False


def _same_file(first, second):
    try:
        return first.read_bytes() == second.read_bytes()
    except OSError:
        return False


def _safe_name(href):
    name = href.rsplit("/", 1)[-1]
    if not name.endswith(".rpm") or name.startswith(".") or "/" in name or "\\" in name:
        return None
    return name


def http_session():
    session = requests.Session()
    retry = Retry(total=3, backoff_factor=0.5, status_forcelist=(500, 502, 503, 504))
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.mount("https://", HTTPAdapter(max_retries=retry))
    return session


class HttpMirror:
    """A yum/dnf repository over HTTP(S): repomd.xml -> primary -> packages."""

    def __init__(self, url, session=None):
        self.url = url.rstrip("/") + "/"
        self.session = session or http_session()

    def _download(self, relative, target, checksum=None, limit=None):
        """Stream ``relative`` into ``target``; verify ``(type, value)`` if given; bytes written.

        More than ``limit`` bytes is a mirror fault: metadata is untrusted until its checksum is.
        """
        url = self.url + relative
        digest = hashlib.new(checksum[0]) if checksum else None
        written = 0
        try:
            with self.session.get(url, stream=True, timeout=_TIMEOUT) as response:
                if response.status_code != 200:
                    raise MirrorError(f"{url} answered HTTP {response.status_code}")
                with open(target, "wb") as handle:
                    for chunk in response.iter_content(_CHUNK):
                        written += len(chunk)
                        if limit is not None and written > limit:
                            raise MirrorError(f"{url} is larger than {limit} bytes; it was not used")
                        handle.write(chunk)
                        if digest:
                            digest.update(chunk)
        except requests.RequestException as err:
            raise MirrorError(f"cannot download {url}: {err}") from None
        if digest and digest.hexdigest() != checksum[1]:
            target.unlink()
            raise MirrorError(f"{url} is corrupt: its {checksum[0]} does not match the repository metadata")
        return written

    def _repomd(self, directory):
        """The mirror's repomd.xml, downloaded into ``directory/repodata/`` and parsed."""
        repomd = directory / "repodata" / "repomd.xml"
        repomd.parent.mkdir(parents=True, exist_ok=True)
        self._download("repodata/repomd.xml", repomd, limit=_REPOMD_LIMIT)
        try:
            return ET.parse(repomd).getroot()
        except ET.ParseError as err:
            raise MirrorError(f"{self.url}repodata/repomd.xml is not valid XML ({err})") from None

    def _metadata_file(self, repomd, kind, directory, previous=None):
        """The ``kind`` metadata repomd.xml lists, in ``directory`` at its own href, checked against
        repomd's checksum and size; taken from ``previous`` (the last sync's copy) when repomd is unchanged."""
        data = next((d for d in repomd.iter(f"{REPO_NS}data") if d.get("type") == kind), None)
        location = data.find(f"{REPO_NS}location") if data is not None else None
        if location is None:
            raise MirrorError(f"{self.url}repodata/repomd.xml lists no {kind} metadata")
        href = location.get("href", "")
        if not _METADATA_HREF.fullmatch(href):
            raise MirrorError(f"{self.url}repodata/repomd.xml places its {kind} metadata at '{href[:100]}', "
                              "not in repodata/")
        target = directory / href
        if previous is not None and (previous / href).is_file():
            os.link(previous / href, target)
            return target
        checksum = data.find(f"{REPO_NS}checksum")
        expected = (checksum.get("type"), checksum.text) if checksum is not None and checksum.get("type") in _HASHES \
            else None
        size = data.findtext(f"{REPO_NS}size", "")
        self._download(href, target, expected, int(size) if size.isdigit() else _METADATA_LIMIT)
        return target

    def _packages(self, staging):
        """``(href, size, (checksum type, value))`` of every package in the primary metadata."""
        primary_file = self._metadata_file(self._repomd(staging), "primary", staging)
        try:
            for element in iter_elements(primary_file, f"{COMMON_NS}package"):
                package_checksum = element.find(f"{COMMON_NS}checksum")
                size = element.find(f"{COMMON_NS}size")
                package_location = element.find(f"{COMMON_NS}location")
                if package_checksum is None or package_location is None or package_checksum.get("type") not in _HASHES:
                    continue
                yield (
                    package_location.get("href", ""), int(size.get("package", "-1")) if size is not None else -1,
                    (package_checksum.get("type"), package_checksum.text),
                )
        except (ET.ParseError, OSError, EOFError) as err:
            raise MirrorError(f"the primary metadata of {self.url} cannot be read ({err})") from None

    def fetch_metadata(self, target, previous=None):
        """A metadata-only copy of the repository in ``target``: repomd.xml with the primary and filelists it
        lists, and a ``mirror`` file naming this mirror, which workers download the packages a crash needs
        from.  Files of ``previous`` (the last copy) are reused while repomd.xml is unchanged."""
        repomd = self._repomd(target)
        unchanged = previous is not None and _same_file(previous / "repodata" / "repomd.xml",
                                                        target / "repodata" / "repomd.xml")
        for kind in _INDEXED_METADATA:
            self._metadata_file(repomd, kind, target, previous if unchanged else None)
        (target / MIRROR_FILE).write_text(self.url + "\n")
        return unchanged

    def sync(self, packages_dir, staging, report, dry_run=False):
        result = MirrorResult()
        for href, size, checksum in list(self._packages(staging)):
            name = _safe_name(href)
            if name is None or _present(packages_dir, name, size):
                continue
            report(f"  {'would download' if dry_run else 'downloading'} {name} ({size} bytes)")
            if not dry_run:
                part = staging / f"{name}.part"
                result.bytes += self._download(href, part, checksum)
                os.replace(part, packages_dir / name)
            result.added.append(name)
        return result


class RsyncMirror:
    """``rsync://`` URLs (wildcards allowed, as upstream's plugins use them)."""

    def __init__(self, url):
        self.url = url

    def sync(self, packages_dir, staging, report, dry_run=False):
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

    def __init__(self, url):
        self.root = Path(urlsplit(url).path if url.startswith("file://") else url)

    def sync(self, packages_dir, staging, report, dry_run=False):
        try:
            return self._copy_new(packages_dir, staging, report, dry_run)
        except OSError as err:
            raise MirrorError(f"cannot read the local mirror {self.root}: {err.strerror}") from None

    def _copy_new(self, packages_dir, staging, report, dry_run):
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


def mirror_for(url, session=None):
    scheme = urlsplit(url).scheme
    if scheme in ("http", "https"):
        return HttpMirror(url, session)
    if scheme == "rsync":
        return RsyncMirror(url)
    if scheme in ("", "file"):
        return LocalMirror(url)
    raise MirrorError(f"unsupported mirror URL {url} (use http://, https://, rsync:// or a local directory)")
