"""Benchmark: reposync's HTTP mirror (librepo, four downloads at once) against one download at a time.

Run as root after `make setup`:  .venv/bin/python -m bench.reposync

One repository of 24 packages of 2 MiB each (built by rpmbuild, stored uncompressed so that the bytes on
the wire are the sizes), served by Apache on loopback twice: as it is, and with mod_ratelimit capping
every connection at 4 MiB/s, as mirrors that share their bandwidth between clients do.  For each, in the
same run and alternating, median of 5 with an empty Packages/:
  - librepo: RepoMirror.sync(), what retrace-server-reposync runs (repomd.xml, primary, every package
    verified against its checksum);
  - baseline: the same metadata, then each package streamed with requests and its SHA256 checked, one
    after the other (what reposync did before librepo).
The ratio is librepo / baseline.
"""

import hashlib
import shutil
import statistics
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import requests

from retrace_server.packaging.repoindex import COMMON_NS, iter_elements
from retrace_server.reposync.mirrors import RepoMirror
from testkit.reposync_admin import ApacheMirror

PACKAGES = 24
PACKAGE_MIB = 2
RATE_KIB = 4096
RUNS = 5


def build_repository(top):
    """``top/repo``: PACKAGES noarch RPMs of PACKAGE_MIB random bytes each, with createrepo_c metadata."""
    spec = top / "bench.spec"
    parts = ["Name: bench\nVersion: 1\nRelease: 1\nSummary: bench\nLicense: MIT\nBuildArch: noarch\n"
             "%description\nbench\n"]
    for number in range(PACKAGES):
        parts.append(f"%package -n bench-{number}\nSummary: bench {number}\n%description -n bench-{number}\nb\n"
                     f"%files -n bench-{number}\n/usr/share/bench/{number}\n")
    parts.append("%install\nmkdir -p %{buildroot}/usr/share/bench\n"
                 f"for n in $(seq 0 {PACKAGES - 1}); do head -c {PACKAGE_MIB << 20} /dev/urandom "
                 "> %{buildroot}/usr/share/bench/$n; done\n")
    spec.write_text("".join(parts))
    subprocess.run(["rpmbuild", "-bb", "--define", f"_topdir {top / 'rpmbuild'}", "--define",
                    "_binary_payload w0.ufdio", str(spec)], check=True, capture_output=True)
    repository = top / "repo"
    (repository / "Packages").mkdir(parents=True)
    for rpm in (top / "rpmbuild" / "RPMS" / "noarch").glob("bench-*.rpm"):
        shutil.move(rpm, repository / "Packages" / rpm.name)
    subprocess.run(["createrepo_c", "--quiet", str(repository)], check=True)
    subprocess.run(["chmod", "-R", "a+rX", str(top)], check=True)
    return repository


def with_librepo(url, work):
    packages = work / "Packages"
    RepoMirror(url).sync(packages, work / "staging", lambda line: None)
    return len(list(packages.iterdir()))


def one_at_a_time(url, work):
    """repomd.xml and primary with requests, then each package streamed and checked in turn."""
    session, packages = requests.Session(), work / "Packages"
    repomd = ET.fromstring(session.get(f"{url}repodata/repomd.xml", timeout=60).content)
    href = next(data.find("{http://linux.duke.edu/metadata/repo}location").get("href")
                for data in repomd.iter("{http://linux.duke.edu/metadata/repo}data") if data.get("type") == "primary")
    primary = work / "primary.xml.gz"
    primary.write_bytes(session.get(url + href, timeout=60).content)
    for element in iter_elements(primary, f"{COMMON_NS}package"):
        location = element.find(f"{COMMON_NS}location").get("href")
        expected = element.find(f"{COMMON_NS}checksum").text
        digest = hashlib.sha256()
        with session.get(url + location, stream=True, timeout=60) as response, \
                open(packages / Path(location).name, "wb") as target:
            for chunk in response.iter_content(1 << 20):
                digest.update(chunk)
                target.write(chunk)
        assert digest.hexdigest() == expected
    return len(list(packages.iterdir()))


def timed(method, url, scratch):
    work = Path(tempfile.mkdtemp(dir=scratch))
    (work / "Packages").mkdir()
    started = time.monotonic()
    count = method(url, work)
    seconds = time.monotonic() - started
    shutil.rmtree(work)
    assert count == PACKAGES, count
    return seconds


def main():
    top = Path(tempfile.mkdtemp(prefix="retrace-bench-reposync-", dir="/var/tmp"))
    try:
        repository = build_repository(top)
        print(f"{PACKAGES} packages of {PACKAGE_MIB} MiB, Apache on loopback; median of {RUNS}, alternating")
        limited = [f'<Location "/Packages">\n    SetOutputFilter RATE_LIMIT\n    SetEnv rate-limit {RATE_KIB}\n'
                   "</Location>"]
        for number, (label, modules, extra) in enumerate((("as served", [], []),
                                                          (f"{RATE_KIB // 1024} MiB/s per connection", ["ratelimit", "env"],
                                                           limited))):
            mirror = ApacheMirror(repository, top / f"apache-{number}", modules=modules, extra_lines=extra)
            try:
                times = {"librepo": [], "baseline": []}
                for _ in range(RUNS):
                    times["librepo"].append(timed(with_librepo, mirror.url, top))
                    times["baseline"].append(timed(one_at_a_time, mirror.url, top))
            finally:
                mirror.stop()
            new, old = statistics.median(times["librepo"]), statistics.median(times["baseline"])
            print(f"{label:>24}: librepo {new:6.2f} s, one at a time {old:6.2f} s, ratio {new / old:.2f}")
    finally:
        shutil.rmtree(top)


if __name__ == "__main__":
    main()
