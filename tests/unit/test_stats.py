import multiprocessing
import sqlite3
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from retrace_server.config import Config
from retrace_server.stats import FAILURE, SCHEMA_VERSION, SUCCESS, StatsDB, TaskRecord
from retrace_server.wsgi import statspage
from retrace_server.wsgi.metrics import exposition

NOW = 1795600000.0
UPSTREAM_SCHEMA = """
CREATE TABLE tasks (id INTEGER PRIMARY KEY AUTOINCREMENT, taskid, package, version, arch,
    starttime NOT NULL, duration NOT NULL, coresize, status NOT NULL);
CREATE TABLE success (taskid REFERENCES tasks(id), pre NOT NULL, post NOT NULL, rootsize NOT NULL);
CREATE TABLE packages (id INTEGER PRIMARY KEY AUTOINCREMENT, name NOT NULL, version NOT NULL);
CREATE TABLE packages_tasks (pkgid REFERENCES packages(id), taskid REFERENCES tasks(id));
CREATE TABLE buildids (taskid REFERENCES tasks(id), soname, buildid NOT NULL);
CREATE TABLE reportfull (requesttime NOT NULL, ip NOT NULL);
INSERT INTO tasks (taskid, package, version, arch, starttime, duration, coresize, status)
    VALUES ('123456789', 'bash', '5.2-1.fc36', 'x86_64', 1650000000, 80, 1000, 6);
INSERT INTO packages (name, version) VALUES ('bash', '5.2-1.fc36');
INSERT INTO packages_tasks VALUES (1, 1);
"""


def success(task_id, package="crasher-1.0-1.fc41", packages=("crasher-1.0-1.fc41.x86_64",), **fields):
    return TaskRecord(task_id, SUCCESS, NOW, 0.2, package=package, arch="x86_64", release="fedora-41-x86_64",
                      phases={"analyze": 0.01, "backtrace": 0.1}, packages=list(packages),
                      queue_wait=0.05, cache_hits=3, cache_misses=1, **fields)


def failure(task_id, category="unsupported release"):
    return TaskRecord(task_id, FAILURE, NOW, 0.1, package="crasher-1.0-1.fc40", arch="x86_64",
                      release="fedora-40-x86_64", failure="release fedora-40-x86_64 is not supported",
                      failure_category=category, missing=[("/usr/lib64/libc.so.6", "93ac61ec")])


@pytest.fixture
def db(tmp_path):
    with StatsDB(tmp_path / "stats.db") as opened:
        yield opened


def test_upstream_database_is_migrated_in_place_keeping_its_rows(tmp_path):
    path = tmp_path / "stats.db"
    with sqlite3.connect(path) as old:
        old.executescript(UPSTREAM_SCHEMA)
    with StatsDB(path) as stats:
        assert stats.schema_version == SCHEMA_VERSION
        assert stats.summary(now=NOW)["top_packages"] == [["bash", 1]]
        stats.record_task(success("000000001"))
        assert stats.summary(now=NOW)["total"] == 2


def test_a_kernel_is_counted_as_kernel_with_its_release_as_the_version(db):
    db.record_task(success("000000002", package="kernel", package_version="6.1.0-56-cloud-amd64",
                           packages=[]))
    assert db.summary(now=NOW)["top_packages"] == [["kernel", 1]]
    assert db.db.execute("SELECT version FROM tasks").fetchone()[0] == "6.1.0-56-cloud-amd64"


def test_new_database_opens_at_the_current_schema(db):
    assert db.schema_version == SCHEMA_VERSION


def test_summary_counts_results_categories_packages_and_missing_build_ids(db):
    db.record_task(success("1"))
    db.record_task(success("2"))
    db.record_task(failure("3"))
    summary = db.summary(now=NOW)
    assert (summary["total"], summary["successful"], summary["failed"]) == (3, 2, 1)
    assert summary["success_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert summary["top_packages"] == [["crasher", 2]]
    assert summary["failure_categories"] == [["unsupported release", 1]]
    assert summary["missing_buildids"] == [{"buildid": "93ac61ec", "library": "libc.so.6", "count": 1}]
    assert summary["releases"] == [["fedora-41-x86_64", 2], ["fedora-40-x86_64", 1]]
    assert summary["per_day"][-1] == [time.strftime("%Y-%m-%d", time.gmtime(NOW)), 3]
    assert summary["phases"]["backtrace"] == {"count": 2, "p50": 0.1, "p95": 0.1}


def test_refused_clients_addresses_are_blanked_after_the_retention(db):
    db.record_refusal("192.0.2.1", retention_hours=24, now=NOW - 25 * 3600)
    db.record_refusal("192.0.2.2", retention_hours=24, now=NOW)
    addresses = [row[0] for row in db.db.execute("SELECT ip FROM reportfull ORDER BY requesttime")]
    assert addresses == ["", "192.0.2.2"] and db.refusals() == 2


def _write_many(path, worker):
    with StatsDB(path) as stats:
        for number in range(25):
            stats.record_task(success(f"{worker}{number:08d}"))


def test_concurrent_workers_all_get_their_rows_in(tmp_path):
    path = tmp_path / "stats.db"
    StatsDB(path).close()
    processes = [multiprocessing.Process(target=_write_many, args=(path, worker)) for worker in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [process.exitcode for process in processes] == [0] * 4
    with StatsDB(path) as stats:
        assert stats.summary(now=NOW)["total"] == 100


def test_metrics_are_valid_prometheus_exposition(tmp_path):
    config = Config(SaveDir=tmp_path, CacheDir=tmp_path / "cache", AllowMetrics=True)
    with StatsDB.for_config(config) as stats:
        stats.record_task(success("1"))
        stats.record_task(failure("2", "gdb timeout"))
    body, content_type = exposition(config)
    assert content_type.startswith("text/plain")
    families = {(family.name, family.type): family for family in text_string_to_metric_families(body.decode())}
    finished = {(s.labels["result"], s.labels["reason"]): s.value
                for s in families["retrace_tasks_finished", "counter"].samples if s.name == "retrace_tasks_finished_total"}
    assert finished == {("success", ""): 1, ("fail", "gdb timeout"): 1}
    assert families["retrace_cache_hit_ratio", "gauge"].samples[0].value == pytest.approx(0.75)
    buckets = [s for s in families["retrace_phase_duration_seconds", "histogram"].samples
               if s.name.endswith("_bucket") and s.labels["phase"] == "backtrace"]
    assert [s.value for s in buckets if s.labels["le"] in ("0.05", "0.1", "+Inf")] == [0, 1, 1]


def test_metrics_keep_upstreams_sample_names_for_its_dashboards(tmp_path):
    config = Config(SaveDir=tmp_path, CacheDir=tmp_path / "cache", AllowMetrics=True)
    with StatsDB.for_config(config) as stats:
        stats.record_task(success("1"))
        stats.record_task(failure("2", "gdb timeout"))
        stats.record_task(failure("3", "missing package"))
    body = exposition(config)[0].decode()
    lines = body.splitlines()
    assert 'retrace_tasks_finished{result="fail"} 2.0' in lines
    assert 'retrace_tasks_finished{result="success"} 1.0' in lines
    assert "retrace_tasks_overload 0.0" in lines
    assert "retrace_tasks_running 0.0" in lines and any(line.startswith("retrace_savedir_free_bytes ") for line in lines)
    assert list(text_string_to_metric_families(body))  # still one valid exposition


def test_stats_page_draws_one_bar_per_top_package(db):
    for number, package in enumerate(["a-1-1", "a-1-1", "b-2-1"]):
        db.record_task(success(str(number), package=package, packages=[f"{package}.x86_64"]))
    page = statspage.render(db.summary(now=NOW), type("Now", (), {"running": 1, "queued": 2})(), now=NOW)
    assert page.count('<rect class="bar"') == 2
    assert '<td class="n big" id="total">3</td>' in page and "<script" not in page and "http://" not in page


def test_public_summary_holds_no_path_nor_package_text_an_upload_made_up(db):
    db.record_task(success("1"))
    made_up = TaskRecord("2", FAILURE, NOW, 0.1, package="secret-project-alice-1-1", arch="x86_64",
                         failure="x", failure_category="bad core",
                         missing=[("/home/alice/secret-project/libacme.so", "77aa")])
    db.record_task(made_up)
    summary = db.summary(now=NOW)
    assert summary["top_packages"] == [["crasher", 1]]
    assert {"buildid": "77aa", "library": "(outside the system directories)", "count": 1} in summary["missing_buildids"]
    assert "alice" not in repr(summary) and "acme" not in repr(summary)
