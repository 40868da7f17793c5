"""Package signatures: a package is used only if a key the admin trusts for its release signed it.

``RequireGPGCheck = 1`` (upstream's key and default): every RPM is checked
by rpm itself (``rpmkeys --checksig``: the header and payload digests and
the signature) against the keys the ``[gpgkeys]`` section lists for its
release, when reposync brings it in and again before a worker unpacks it
(the cache keeps only verified packages).  An unsigned package, one signed
by another key, or one whose bytes changed is refused with its name.  The
keys are imported once into an rpm database of their own under
``CacheDir/keyrings/``, never into the host's.

Debian packages carry no signature of their own: apt signs a repository's
``InRelease``, which lists the checksums of the ``Packages`` indexes, which
list each package's SHA256.  A worker checks a package's SHA256 against
the index before unpacking it (``verify_checksum``); reposync checks the
``InRelease`` signature.
"""
from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from retrace_server.errors import RetraceError
from retrace_server.packaging.cache import cached_entry

if TYPE_CHECKING:
    from collections.abc import Iterable

    from retrace_server.config import Config
    from retrace_server.packaging.payload import ManifestEntry
    from retrace_server.packaging.release import ReleaseId
    from retrace_server.packaging.repoindex import Package

_TIMEOUT = 300


class SignatureError(RetraceError):
    """A package whose signature does not verify, or a release without keys."""

    category = "bad signature"


def verify_checksum(path: Path, package: Package) -> None:
    """SignatureError unless the file's SHA256 is the one the release's index lists for ``package``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    if digest.hexdigest() != package.pkgid:
        raise SignatureError(f"the file of {package.nevra} does not match the SHA256 its release's index lists "
                             "for it; the mirror served a different package, and it was not used")


class Keyring:
    """The keys trusted for one release, imported into a private rpm database."""

    def __init__(self, release: ReleaseId | str, dbpath: Path) -> None:
        self.release = release
        self.dbpath = dbpath

    @classmethod
    def for_release(cls, config: Config, release: ReleaseId | str) -> Keyring | None:
        """The release's Keyring; None when RequireGPGCheck = 0.  SignatureError when it has no key."""
        paths = config.required_gpg_keys(release)
        if paths is None:
            return None
        if not paths:
            raise SignatureError(
                f"RequireGPGCheck = 1, but no signing key is configured for {release}: the administrator lists "
                f"its key files in the [gpgkeys] section of the configuration (or sets RequireGPGCheck = 0)")
        try:
            keys = [(str(path), path.read_bytes()) for path in paths]
        except OSError as err:
            raise SignatureError(f"the signing key {err.filename} configured for {release} cannot be read "
                                 f"({err.strerror})") from None
        digest = hashlib.sha256(b"\0".join(data for _, data in sorted(keys))).hexdigest()[:16]
        directory = Path(config.CacheDir) / "keyrings"
        directory.mkdir(parents=True, exist_ok=True)

        def import_keys(tmp: Path) -> list[ManifestEntry]:
            database = tmp / "root"
            database.mkdir()
            for path, _ in keys:
                ran = _rpmkeys(["--dbpath", str(database), "--import", path])
                if ran.returncode != 0:
                    raise SignatureError(f"the signing key {path} configured for {release} is not a key rpm can "
                                         f"import: {ran.stderr.strip()[:200]}")
            return []

        entry = cached_entry(directory / digest, directory / f"{digest}.lock", import_keys)
        return cls(release, entry.root)

    def verify(self, package_path: Path, name: str) -> None:
        """SignatureError unless ``package_path`` (shown as ``name``) is intact and signed by one of the keys."""
        self.verify_all([(package_path, name)])

    def verify_all(self, packages: Iterable[tuple[Path, str]]) -> None:
        """``verify`` for many ``(path, name)`` pairs with one rpm process (each start costs ~15 ms)."""
        if not packages:
            return
        names = {str(path): name for path, name in packages}
        try:
            ran = _rpmkeys(["--dbpath", str(self.dbpath), "--checksig", "--verbose", "--", *names])
        except subprocess.TimeoutExpired:
            raise SignatureError(f"checking the signatures of {', '.join(names.values())} took longer than "
                                 f"{_TIMEOUT} s") from None
        reports = _reports(ran.stdout)
        for path, name in names.items():
            lines = reports.get(path, [])
            signed = any("Signature" in line and line.endswith(": OK") for line in lines)
            problems = [line for line in lines if not line.endswith(": OK")]
            if signed and not problems:
                continue
            said = "; ".join(problems) or ("it carries no signature" if lines else ran.stderr.strip()[:200])
            raise SignatureError(f"{name} is refused: it is not intact and signed by a key configured for "
                                 f"{self.release} (rpm says: {said[:300]})")


def _reports(text: str) -> dict[str, list[str]]:
    """``{path: [its verbose lines]}`` of ``rpmkeys --checksig --verbose`` over several files."""
    reports: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            current = reports.setdefault(line[:-1], [])
        elif current is not None and line.strip():
            current.append(line.strip())
    return reports


def _rpmkeys(arguments: list[str]) -> subprocess.CompletedProcess[str]:
    """rpmkeys with ``arguments``; SignatureError with a sentence where rpm is not installed (a Debian server
    serving RPM releases needs the rpm package)."""
    try:
        return subprocess.run(["rpmkeys", *arguments], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=_TIMEOUT)
    except FileNotFoundError:
        raise SignatureError("the server cannot check RPM signatures: rpmkeys is not installed (the administrator "
                             "installs rpm, or sets RequireGPGCheck = 0)") from None
