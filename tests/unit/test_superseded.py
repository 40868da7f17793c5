"""An apt release keeps what its mirror stopped listing, for a while: machines one update behind still crash."""

import lzma
import shutil

from retrace_server.compression import open_compressed
from retrace_server.packaging import apt
from retrace_server.reposync.apt import keep_superseded


def stanza(name, version):
    return (f"Package: {name}\nVersion: {version}\nArchitecture: amd64\nFilename: pool/{name}_{version}.deb\n"
            f"Size: 1\nSHA256: {'a' * 64}\n")


def dists(root, *entries):
    binary = root / "dists" / "bookworm" / "main" / "binary-amd64"
    binary.mkdir(parents=True)
    (binary / "Packages.xz").write_bytes(lzma.compress("\n".join(stanza(*entry) for entry in entries).encode()))


def superseded(root):
    path = root / "dists" / "superseded" / "Packages.xz"
    if not path.is_file():
        return {}
    with open_compressed(path) as stream:
        return {(fields["Package"], fields["Version"]): int(fields["Superseded-Since"])
                for fields in apt.stanzas(stream)}


def synced(release, staging):
    shutil.rmtree(release / "dists", ignore_errors=True)
    shutil.move(staging / "dists", release / "dists")


def test_what_leaves_the_index_is_kept_with_the_time_it_left_until_it_is_older_than_the_limit(tmp_path):
    release, staging = tmp_path / "release", tmp_path / "staging"
    dists(release, ("libfoo1", "1.0-1"), ("bar", "2.0-1"))
    dists(staging, ("libfoo1", "1.0-2"), ("bar", "2.0-1"))
    assert keep_superseded(release, staging, keep_seconds=100, now=1000.7) == 1
    assert superseded(staging) == {("libfoo1", "1.0-1"): 1000}
    synced(release, staging)
    dists(staging, ("libfoo1", "1.0-3"), ("bar", "2.0-1"))
    assert keep_superseded(release, staging, keep_seconds=100, now=1050) == 2
    assert superseded(staging) == {("libfoo1", "1.0-1"): 1000, ("libfoo1", "1.0-2"): 1050}, "the first time stays"
    synced(release, staging)
    dists(staging, ("libfoo1", "1.0-3"), ("bar", "2.0-1"))
    assert keep_superseded(release, staging, keep_seconds=100, now=1120) == 1
    assert superseded(staging) == {("libfoo1", "1.0-2"): 1050}


def test_a_version_the_mirror_lists_again_is_not_superseded_and_zero_days_keeps_nothing(tmp_path):
    release, staging = tmp_path / "release", tmp_path / "staging"
    dists(release, ("libfoo1", "1.0-1"))
    dists(staging, ("libfoo1", "1.0-1"), ("libfoo1", "1.0-2"))
    assert keep_superseded(release, staging, keep_seconds=100, now=1000) == 0
    synced(release, staging)
    dists(staging, ("libfoo1", "1.0-2"))
    assert keep_superseded(release, staging, keep_seconds=0, now=1000) == 0
    assert superseded(staging) == {}
