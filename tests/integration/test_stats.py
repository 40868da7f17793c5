"""Statistics after real retraces: the database rows, /stats (JSON and in a real browser), /metrics."""

import shutil
import sqlite3

import pytest
from prometheus_client.parser import text_string_to_metric_families

from testkit.helpers import package_lock_held, submit, wait_final
from tests.integration.browser import chromium, screenshot


@pytest.fixture(scope="module")
def stats_server(start_server, problem_dir, tmp_path_factory):
    """A server after two successful retraces and one that failed (unsupported release)."""
    server = start_server(AllowMetrics="1")
    fedora40 = tmp_path_factory.mktemp("f40") / "problem"
    shutil.copytree(problem_dir, fedora40)
    (fedora40 / "os_release").write_text("Fedora release 40 (Forty)\n")
    for crash in (problem_dir, problem_dir, fedora40):
        wait_final(server, *submit(server, crash))
    return server


def rows(server, sql):
    with sqlite3.connect(server.save_dir / "stats.db") as db:
        return db.execute(sql).fetchall()


def test_every_finished_task_has_a_row_with_its_result_and_reason(stats_server):
    tasks = rows(stats_server, "SELECT status, package, release, failure_category FROM tasks ORDER BY id")
    assert tasks == [
        (6, "crasher", "fedora-41-x86_64", None),
        (6, "crasher", "fedora-41-x86_64", None),
        (7, "crasher", "fedora-40-x86_64", "unsupported release"),
    ]


def test_successful_rows_hold_phases_packages_and_missing_build_ids(stats_server):
    phases = {phase for (phase,) in rows(stats_server, "SELECT DISTINCT phase FROM phases")}
    assert {"analyze", "init", "backtrace", "cleanup"} <= phases
    used = rows(stats_server, "SELECT DISTINCT name FROM packages JOIN packages_tasks ON packages.id = pkgid")
    assert sorted(name for (name,) in used) == ["crasher", "crasher-debuginfo", "libcrash", "libcrash-debuginfo"]
    libraries = {soname for (soname,) in rows(stats_server, "SELECT soname FROM buildids")}
    assert any(soname.endswith("/libc.so.6") for soname in libraries)
    (queue_wait,) = rows(stats_server, "SELECT MIN(queue_wait) FROM tasks")[0]
    assert queue_wait is not None and queue_wait >= 0


def test_stats_json_gives_the_same_numbers(stats_server):
    summary = stats_server.get("/stats?format=json").json()
    assert (summary["total"], summary["successful"], summary["failed"]) == (3, 2, 1)
    assert summary["top_packages"] == [["crasher", 2]]  # the failed task named a package no repository gave
    assert summary["failure_categories"] == [["unsupported release", 1]]


def test_metrics_pass_the_prometheus_parser(stats_server):
    response = stats_server.get("/metrics")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    families = {(family.name, family.type): family for family in text_string_to_metric_families(response.text)}
    finished = {(s.labels["result"], s.labels["reason"]): s.value
                for s in families["retrace_tasks_finished", "counter"].samples if s.name.endswith("_total")}
    assert finished == {("success", ""): 2, ("fail", "unsupported release"): 1}
    upstream = {s.labels["result"]: s.value for s in families["retrace_tasks_finished", "unknown"].samples}
    assert upstream == {"success": 2, "fail": 1}, "upstream's dashboards read retrace_tasks_finished{result}"
    assert families["retrace_cache_bytes", "gauge"].samples[0].value > 0
    assert families["retrace_savedir_free_bytes", "gauge"].samples[0].value > 0
    phases = {s.labels.get("phase") for s in families["retrace_phase_duration_seconds", "histogram"].samples}
    assert {"backtrace", "init.packages", "init.environment", "backtrace.gdb", "stats.buckets"} <= phases, phases


def test_metrics_are_403_unless_enabled(server):
    response = server.get("/metrics")
    assert (response.status_code, response.text) == (403, "Metrics are not enabled for this server")


def test_refused_upload_is_counted(start_server, fixture_rpms, problem_dir):
    server = start_server(MaxParallelTasks="1", MaxQueuedTasks="0")
    crasher = next(rpm for rpm in fixture_rpms if rpm.name.startswith("crasher-1.0"))
    with package_lock_held(server, crasher):
        submit(server, problem_dir)
        refused = server.post("/create", data=b"x", headers={"Content-Type": "application/x-tar"})
        assert refused.status_code == 503
    assert server.get("/stats?format=json").json()["refused"] == 1


def test_stats_page_renders_in_a_real_browser(stats_server):
    from selenium.webdriver.common.by import By

    with chromium() as driver:
        driver.get(stats_server.url + "/stats")
        assert driver.title == "Retrace Server statistics"
        assert driver.find_element(By.ID, "total").text == "3"
        assert driver.find_element(By.ID, "success-rate").text == "66.7 %"
        bars = driver.find_elements(By.CSS_SELECTOR, "#packages rect.bar")
        assert len(bars) == 1 and bars[0].size["width"] > 100
        days = driver.find_elements(By.CSS_SELECTOR, "#per-day rect.day")
        assert len(days) == 30 and days[-1].size["height"] > 50
        assert "unsupported release" in driver.find_element(By.ID, "failures").text
        screenshot(driver, "stats.png")
