"""Sources a support engineer types, and server paths checked where they really lead."""

import shutil

import pytest

from retrace_server.intake import remote
from retrace_server.intake.remote import Source, SourceError


@pytest.mark.parametrize("text, source", [
    ("https://files.example.com/case 1/vmcore", Source("url", "https://files.example.com/case 1/vmcore")),
    ("  ftp://drop.example.com/vmcore.xz ", Source("url", "ftp://drop.example.com/vmcore.xz")),
    ("/srv/cores/vmcore", Source("path", "/srv/cores/vmcore")),
    ("file:///srv/cores/a%20b", Source("path", "/srv/cores/a b")),
])
def test_urls_and_paths_are_told_apart(text, source):
    assert remote.parse_source(text) == source


@pytest.mark.parametrize("text, sentence", [
    ("", "Give the URL or the server path of the core or vmcore to retrace"),
    ("vmcore", "'vmcore' is neither an http, https or ftp URL nor an absolute path on the server"),
    ("file://relative", "'' is neither"),
    ("https://x.example.com:http/", "The URL's port is not a number: 'x.example.com:http'"),
    ("https://x.example.com/\r\nHost: evil", "The URL or path holds control characters"),
])
def test_what_is_no_source_is_a_sentence(text, sentence):
    with pytest.raises(SourceError) as refused:
        remote.parse_source(text)
    assert str(refused.value).startswith(sentence)


def test_a_urls_password_is_never_shown_and_a_drop_file_reads_as_such():
    source = Source("url", "ftp://customer:s3cret@drop.example.com:2121/in/vmcore.xz")
    assert source.shown == "ftp://customer:***@drop.example.com:2121/in/vmcore.xz"
    assert source.name == "vmcore.xz"
    drop = Source.from_line("FTP vmcore-42")
    assert (drop.kind, drop.shown, drop.line()) == ("drop", "vmcore-42 on the FTP drop", "FTP vmcore-42")


def test_drop_names_from_the_ftp_server_are_plain_names():
    assert remote.is_drop_name("vmcore-2024-01-01.tar.xz")
    for name in ("", ".", "..", "a/b", "line\nbreak", "x" * 256, "del\x7f"):
        assert not remote.is_drop_name(name)


def test_only_files_really_inside_the_import_directories_open(tmp_path):
    imports, outside = tmp_path / "imports", tmp_path / "outside"
    (imports / "case").mkdir(parents=True)
    outside.mkdir()
    (imports / "case" / "vmcore").write_bytes(b"KDUMP")
    (outside / "secret").write_text("not yours")
    (imports / "inside-link").symlink_to(imports / "case" / "vmcore")
    (imports / "escape").symlink_to(outside / "secret")
    (imports / "dir-escape").symlink_to(outside)
    with remote.open_import(str(imports / "inside-link"), [imports]) as handle:
        assert handle.read() == b"KDUMP"
    for path in (outside / "secret", imports / "escape", imports / "dir-escape" / "secret",
                 imports / ".." / "outside" / "secret", imports / "missing", outside / "missing"):
        with pytest.raises(SourceError) as refused, remote.open_import(str(path), [imports]):
            pass
        assert str(refused.value) == f"There is no file {path} this server may import (ImportDirs: {imports})"
    with pytest.raises(SourceError, match="is not a regular file"):
        with remote.open_import(str(imports / "case"), [imports]):
            pass
    with pytest.raises(SourceError, match="ImportDirs is empty"):
        with remote.open_import(str(imports / "case" / "vmcore"), []):
            pass


def test_a_fetch_is_capped_digested_and_reports_progress(tmp_path, monkeypatch):
    import hashlib

    from retrace_server.config import Config
    from retrace_server.errors import UploadTooLarge

    imports = tmp_path / "imports"
    imports.mkdir()
    data = bytes(range(256)) * 20000
    (imports / "vmcore").write_bytes(data)
    config = Config(ImportDirs=str(imports), SaveDir=tmp_path, MinStorageLeft=0)
    monkeypatch.setattr(remote, "_PROGRESS_SECONDS", 0)
    monkeypatch.setattr(remote, "_CHUNK", 1024 * 1024)
    reports, digest = [], hashlib.md5()
    size = remote.fetch(Source("path", str(imports / "vmcore")), tmp_path / "got", config, len(data),
                        lambda done, total: reports.append((done, total)), digest)
    assert size == len(data) and (tmp_path / "got").read_bytes() == data
    assert digest.hexdigest() == hashlib.md5(data).hexdigest()
    assert reports == [(min(step * 1024 * 1024, len(data)), len(data)) for step in range(1, 6)]
    with pytest.raises(UploadTooLarge, match=f"vmcore is {len(data)} bytes; this server accepts at most 1000"):
        remote.fetch(Source("path", str(imports / "vmcore")), tmp_path / "again", config, 1000, lambda *_: None)


def test_a_fetch_without_room_above_min_storage_left_stops_with_a_sentence(tmp_path):
    from retrace_server.config import Config
    from retrace_server.errors import NotEnoughStorage

    imports = tmp_path / "imports"
    imports.mkdir()
    (imports / "vmcore").write_bytes(b"KDUMP" * 1000)
    free_mib = shutil.disk_usage(tmp_path).free // (1024 * 1024)
    config = Config(ImportDirs=str(imports), SaveDir=tmp_path, MinStorageLeft=free_mib)
    with pytest.raises(NotEnoughStorage, match="There is not enough storage space on the server"):
        remote.fetch(Source("path", str(imports / "vmcore")), tmp_path / "got", config, 10 ** 6, lambda *_: None)


@pytest.mark.parametrize("text", ["ftp://host/a%0d%0aDELE%20b", "http://host/x%00y", "http://us%0aer:pw@host/x",
                                  "https://host/x?q=%0d"])
def test_encoded_control_characters_are_refused_in_every_part_of_a_url(text):
    with pytest.raises(SourceError, match="The URL holds encoded control characters"):
        remote.parse_source(text)


@pytest.mark.parametrize("target, same", [("http://host/other", True), ("http://host:80/x", True),
                                          ("https://host/x", False), ("http://host:8080/x", False),
                                          ("http://elsewhere/x", False), ("ftp://host/x", False)])
def test_a_redirect_may_move_within_the_named_server_only(target, same):
    assert remote._same_server("http://host/file", target) is same
