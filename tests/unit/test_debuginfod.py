import pytest

from retrace_server.packaging.debuginfod import BuildIdCache, Settings, fetch_one

SETTINGS = Settings(urls=(), deadline=1, timeout=1, retries=0, max_bytes=1024, miss_ttl=60)


def test_cache_refuses_build_ids_that_are_not_plain_hex(tmp_path):
    with pytest.raises(ValueError):
        BuildIdCache(tmp_path).path("../../etc", "debuginfo")


def test_cached_file_is_used_without_asking_any_server(tmp_path):
    cache = BuildIdCache(tmp_path)
    path = cache.path("ab12", "debuginfo")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x7fELF")
    result = fetch_one(None, cache, SETTINGS, "ab12", "debuginfo", deadline=0)
    assert (result.path, result.source) == (path, "cache")


def test_recent_miss_is_remembered_without_asking_any_server(tmp_path):
    cache = BuildIdCache(tmp_path)
    cache.remember_miss("cd34", "executable")
    result = fetch_one(None, cache, SETTINGS, "cd34", "executable", deadline=0)
    assert result.path is None and "remembered" in result.source
