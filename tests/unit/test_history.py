"""History sources: how a crash's package name is read, what a snapshot answer may say, where Koji keeps a build."""

import json

import pytest

from retrace_server.config import ConfigError, parse_config
from retrace_server.packaging.download import DownloadError
from retrace_server.packaging.history import Koji, Snapshot, Wanted, sources_for, wanted_of


def test_a_debian_package_name_is_read_at_every_dash_before_a_digit():
    assert wanted_of("libgtk-3-0-3.24.38-2~deb12u1.amd64", "x86_64", "deb") == [
        Wanted("libgtk", "3-0-3.24.38-2~deb12u1", "x86_64"), Wanted("libgtk-3", "0-3.24.38-2~deb12u1", "x86_64"),
        Wanted("libgtk-3-0", "3.24.38-2~deb12u1", "x86_64"), Wanted("libgtk-3-0-3.24.38", "2~deb12u1", "x86_64")]
    assert wanted_of("zlib1g-1:1.2.13.dfsg-1", "x86_64", "deb") == [Wanted("zlib1g", "1:1.2.13.dfsg-1", "x86_64")]


def test_an_rpm_package_name_is_name_version_release():
    assert wanted_of("crasher-1.0-1.fc41.x86_64", "x86_64", "rpm") == [Wanted("crasher", "1.0-1.fc41", "x86_64")]
    assert wanted_of("crasher-1.0", "x86_64", "rpm") == []


def parse(text):
    return parse_config("[retrace]\n" + text, "f.conf")[0]


def test_history_sources_are_read_per_release_version_or_distribution_in_order():
    config = parse("KojiRoot = /mnt/koji\n[history]\ndebian = snapshot https://snapshot.debian.org/\n"
                   "debian-13 = snapshot http://a koji http://b\n")
    assert config.history_sources("debian-12-x86_64") == [("snapshot", "https://snapshot.debian.org")]
    assert config.history_sources("debian-13-x86_64") == [("snapshot", "http://a"), ("koji", "http://b")]
    assert config.history_sources("fedora-41-x86_64") == [("koji", "/mnt/koji")], "KojiRoot: RPM releases"
    assert [str(source) for source in sources_for(config, "debian-13-x86_64")] == ["snapshot http://a", "koji http://b"]


@pytest.mark.parametrize("line", ["debian = ftp://x", "debian = snapshot", "debian = mirror http://x",
                                  "debian = snapshot /local/dir"])
def test_a_history_line_that_is_not_kind_url_pairs_is_refused(line):
    with pytest.raises(ConfigError, match=r"\[history\] debian must list history sources as KIND URL pairs"):
        parse(f"[history]\n{line}\n")


class Answers:
    """A requests session answering JSON documents by path."""

    def __init__(self, documents):
        self.documents, self.asked = documents, []

    def get(self, url, **kwargs):
        path = url.split("127.0.0.1", 1)[1]
        self.asked.append(path)
        return Response(self.documents.get(path))

    def head(self, url, **kwargs):
        return Response(self.documents.get(url.split("127.0.0.1", 1)[1]))


class Response:
    def __init__(self, document):
        self.status_code = 404 if document is None else 200
        self.body = document if isinstance(document, bytes) else json.dumps(document).encode()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def iter_content(self, size):
        yield from (self.body[i:i + size] for i in range(0, len(self.body), size))


SHA1 = "a" * 40
BINFILES = "/mr/binary/libfoo1/1.0-1/binfiles?fileinfo=1"


def snapshot(documents):
    return Snapshot("http://127.0.0.1", 5.0, Answers(documents))


def test_snapshot_gives_the_file_of_the_releases_architecture_by_its_sha1():
    found = snapshot({BINFILES: {"result": [{"architecture": "arm64", "hash": "b" * 40},
                                            {"architecture": "amd64", "hash": SHA1}],
                                 "fileinfo": {SHA1: [{"name": "libfoo1_1.0-1_amd64.deb", "size": 1234}]}}}
                     ).binary(Wanted("libfoo1", "1.0-1", "x86_64"))
    assert (found.url, found.sha1, found.size, found.file_name) == (
        f"http://127.0.0.1/file/{SHA1}", SHA1, 1234, "libfoo1_1.0-1_amd64.deb")


@pytest.mark.parametrize("answer", [
    {"result": [{"architecture": "amd64", "hash": "../../etc/passwd"}], "fileinfo": {}},
    {"result": [{"architecture": "amd64", "hash": SHA1}], "fileinfo": {SHA1: [{"name": "../x.deb"}]}},
    {"result": "nonsense"}, ["a", "list"], None,
    {"result": [{"architecture": "amd64", "hash": SHA1}], "fileinfo": ["not", "a", "mapping"]},
    {"result": [{"architecture": "amd64", "hash": SHA1}], "fileinfo": {SHA1: "not a list"}}])
def test_a_snapshot_answer_that_names_nothing_usable_gives_nothing(answer):
    assert snapshot({BINFILES: answer}).binary(Wanted("libfoo1", "1.0-1", "x86_64")) is None


def test_a_snapshot_answer_larger_than_a_mebibyte_is_not_read():
    with pytest.raises(DownloadError, match="answered more than 1024 KiB"):
        snapshot({BINFILES: b"[" + b"0," * (1 << 20) + b"0]"}).binary(Wanted("libfoo1", "1.0-1", "x86_64"))


def test_snapshot_looks_for_the_dbgsym_then_the_sources_dbg_packages_closest_in_name_first():
    source = snapshot({
        "/mr/binary/python3.11-minimal/": {"result": [{"binary_version": "3.11.2-6", "source": "python3.11",
                                                        "version": "3.11.2-6"}]},
        "/mr/package/python3.11/3.11.2-6/binpackages": {"result": [
            {"name": "libpython3.11-dbg"}, {"name": "python3.11-dbg"}, {"name": "python3.11-doc"}]},
        **{f"/mr/binary/{name}/3.11.2-6/binfiles?fileinfo=1": {
            "result": [{"architecture": "amd64", "hash": SHA1}],
            "fileinfo": {SHA1: [{"name": f"{name}_3.11.2-6_amd64.deb", "size": 1}]}}
           for name in ("python3.11-dbg", "libpython3.11-dbg")}})
    found = list(source.debug(Wanted("python3.11-minimal", "3.11.2-6", "x86_64")))
    assert [located.name for located in found] == ["python3.11-dbg", "libpython3.11-dbg"]
    assert source.session.asked[0] == "/mr/binary/python3.11-minimal-dbgsym/3.11.2-6/binfiles?fileinfo=1"


def test_koji_keeps_a_build_under_its_source_version_release_and_architecture(tmp_path):
    place = tmp_path / "packages" / "crasher" / "1.0" / "1.fc41" / "x86_64"
    place.mkdir(parents=True)
    for name in ("libcrash-1.0-1.fc41.x86_64.rpm", "libcrash-debuginfo-1.0-1.fc41.x86_64.rpm"):
        (place / name).write_bytes(b"rpm")
    koji = Koji(str(tmp_path), 5.0)
    wanted = Wanted("libcrash", "1.0-1.fc41", "x86_64", source="crasher")
    assert koji.binary(wanted).url == str(place / "libcrash-1.0-1.fc41.x86_64.rpm")
    assert [located.file_name for located in list(koji.debug(wanted))] == ["libcrash-debuginfo-1.0-1.fc41.x86_64.rpm"]
    assert koji.binary(Wanted("libcrash", "1.0-2.fc41", "x86_64", source="crasher")) is None


@pytest.mark.parametrize("versions, binpackages", [(["a list"], None), ({"result": "text"}, None),
                                                    ({"result": [{"binary_version": "1.0-1", "source": "foo",
                                                                  "version": "1.0-1"}]}, {"result": {"x": 1}})])
def test_snapshot_answers_of_the_wrong_shape_name_no_debug_package(versions, binpackages):
    source = snapshot({"/mr/binary/libfoo1/": versions, "/mr/package/foo/1.0-1/binpackages": binpackages})
    assert list(source.debug(Wanted("libfoo1", "1.0-1", "x86_64"))) == []
