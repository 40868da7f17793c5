"""Coreless reports and crash buckets through the real server: retrace-client unwinds real cores with eu-stack
where the crasher is installed, the server symbolizes from the release's debuginfo packages with elfutils."""

import json
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from testkit.cores import crash_installed, installed_tree, make_problem_dir, run_installed
from testkit.debuginfod import Debuginfod
from testkit.distro import BIGCRASH_PACKAGE, RELEASE_ID, build_bigcrash, build_rpms, publish_release
from testkit.helpers import abrt_archive, crashing_thread, submit, wait_final
from testkit.loopback import world_readable_dir
from testkit.reposync_admin import REPOSYNC
from testkit.server import write_config
from tests.integration.browser import chromium, screenshot, submit_and_wait
from tests.integration.manager_client import ENGINEER, ENGINEER_PASSWORD, Engineer
from tests.integration.test_cleanup import cleanup
from tests.integration.test_debuginfod import build_id_of
from tests.unit.test_report_kinds import oops_report, python_report

CLIENT = Path(sys.executable).with_name("retrace-client")
_GDB_LOCATION = re.compile(r"^#\d+\s+(?:0x[0-9a-f]+ in )?(?P<function>\S+) \(.*\) at (?P<file>\S+):(?P<line>\d+)$")


@pytest.fixture(scope="module")
def installed(work_dir, fixture_rpms):
    return installed_tree(fixture_rpms, work_dir)


@pytest.fixture(scope="module")
def reports_server(start_server, users):
    return start_server(AllowTaskManager="1", ManagerUserFile=str(users), AllowMetrics="1")


class Crashes:
    """Fresh crashes of the installed crasher, each a problem directory (a new address layout every time)."""

    def __init__(self, fixture_rpms, work_dir, installed):
        self.rpms, self.work_dir, self.installed, self.made = fixture_rpms, work_dir, installed, 0

    def __call__(self, mode):
        self.made += 1
        core = crash_installed(self.rpms, self.work_dir, mode, staged=self.installed)
        return make_problem_dir(self.work_dir / f"report-{mode}-{self.made}", core)


@pytest.fixture(scope="module")
def crashes(fixture_rpms, work_dir, installed):
    return Crashes(fixture_rpms, work_dir, installed)


def report(server, installed, problem_dir, *options):
    """``retrace-client report`` run where the crasher is installed: ``(its JSON answer, its stderr)``."""
    given = ["--dir", str(problem_dir)] if problem_dir else []
    ran = run_installed(installed, str(CLIENT), "report", "--uri", server.url, "--cafile", str(server.cert),
                        *given, "--json", "--status-delay", "0.2", *options, timeout=300)
    assert ran.returncode == 0, ran.stderr + ran.stdout
    return json.loads(ran.stdout), ran.stderr


def located(frames):
    """``(function, file name, line)`` of every symbolized location of the crash thread, innermost first."""
    crash = next(thread for thread in frames if thread["crash_thread"])
    return [(location["function"], Path(location["file"]).name, location["line"])
            for frame in crash["frames"] for location in frame["locations"] if location["file"]]


def gdb_located(backtrace):
    found = []
    for line in crashing_thread(backtrace):
        match = _GDB_LOCATION.match(line.replace("ADDR", "0x0"))
        if match:
            found.append((match["function"], Path(match["file"]).name, int(match["line"])))
    return found


@pytest.mark.parametrize("mode, given", [("simple", "dir"), ("threads", "dir"), ("inlined", "core")])
def test_a_coreless_report_gives_the_functions_and_lines_of_the_full_retrace(reports_server, installed, crashes,
                                                                             mode, given):
    problem = crashes(mode)
    task_id, auth = submit(reports_server, problem)
    assert wait_final(reports_server, task_id, auth).headers["X-Task-Status"] == "FINISHED_SUCCESS"
    full = reports_server.get(f"/{task_id}/backtrace", headers=auth).text
    if given == "dir":
        answer, _ = report(reports_server, installed, problem, "--no-core")
    else:
        answer, _ = report(reports_server, installed, None, "--no-core", "--core", str(problem / "coredump"),
                           "--executable", "/usr/bin/crasher", "--package", "crasher-1.0-1.fc41",
                           "--os-release", "Fedora release 41 (Forty One)")
    assert located(answer["frames"]) == gdb_located(full) != []
    assert answer["result"] is True, "the full retrace already put the crash in its bucket"
    if mode == "inlined":
        first = answer["frames"][0]["frames"][0]["locations"]
        assert [location["function"] for location in first] == ["store_inline", "crash_inlined"]
        assert "crash_inlined () at" in answer["backtrace"] and "store_inline () at" in answer["backtrace"]


def test_a_release_served_by_debuginfod_alone_symbolizes_a_report_as_its_mirror_does(
        start_server, reports_server, installed, crashes, release_dir):
    """No mirror and no index: the report's build-ids go to the release's debuginfod servers (a real
    elfutils debuginfod over the fixture's RPMs), and the frames are the mirrored release's."""
    problem = crashes("simple")
    debuginfod = Debuginfod([release_dir / "Packages"], build_id_of(problem, "/crasher"))
    try:
        alone = start_server(repository=False, DebuginfodURLs=debuginfod.url, DebuginfodReleases=RELEASE_ID)
        answer, _ = report(alone, installed, problem, "--no-core")
    finally:
        debuginfod.stop()
    mirrored, _ = report(reports_server, installed, problem, "--no-core")
    assert located(answer["frames"]) == located(mirrored["frames"]) != []
    assert answer["missing_build_ids"] == mirrored["missing_build_ids"]


def test_one_crash_run_five_times_under_aslr_is_one_bucket_and_another_site_is_another(reports_server, installed,
                                                                                       crashes):
    answers = [report(reports_server, installed, crashes("simple"), "--no-core")[0] for _ in range(5)]
    assert len({answer["bthash"] for answer in answers}) == 1
    assert [answer["count"] for answer in answers] == list(range(answers[0]["count"], answers[0]["count"] + 5))
    offsets = {frame["offset"] for answer in answers for frame in answer["frames"][0]["frames"]}
    assert offsets, "same offsets in the modules whatever the addresses"
    other = report(reports_server, installed, crashes("abort"), "--no-core")[0]
    assert other["bthash"] != answers[0]["bthash"]
    signature = json.loads(reports_server.get("/problems?format=json").text)
    assert {bucket["bthash"] for bucket in signature["buckets"]} >= {other["bthash"], answers[0]["bthash"]}


def test_a_new_crash_asks_for_its_core_and_a_known_one_sends_only_its_report(start_server, installed, crashes):
    server = start_server()
    first, log = report(server, installed, crashes("simple"))
    assert "Please send its core" in log and "Uploading" in log, log
    assert "crash_in_library" in first["backtrace"] and first["status"] == "FINISHED_SUCCESS"
    problem = crashes("simple")
    second, log = report(server, installed, problem)
    assert second["result"] is True and second["core_wanted"] is False
    assert "Uploading" not in log and "This crash is known" in log
    compressed = len(abrt_archive(problem))
    assert second["bytes_sent"] < compressed / 4, (second["bytes_sent"], compressed)
    bucket = json.loads(Engineer(server, None, None).get("/problems?format=json").text)["buckets"][0]
    assert (bucket["count"], bucket["full_task"] is not None) == (3, True)  # report, retrace, report


def ureport_of(problem, installed, server):
    """The uReport retrace-client would send (its own code, run where the crasher is installed)."""
    code = ("import json, sys; from pathlib import Path; from retrace_server.client import crash, unwind; "
            "c = crash.from_problem_dir(sys.argv[1]); print(json.dumps(unwind.ureport(c, '/usr/bin/crasher', 't')))")
    ran = run_installed(installed, sys.executable, "-c", code, str(problem), timeout=120)
    assert ran.returncode == 0, ran.stderr
    return json.loads(ran.stdout)


def post_report(server, data):
    return Engineer(server, None, None).post("/reports/new/", files={"file": ("ureport.json", data, "application/json")})


def test_reports_the_server_cannot_read_are_refused_with_a_sentence_and_nothing_is_stored(reports_server, installed,
                                                                                           crashes):
    good = ureport_of(crashes("simple"), installed, reports_server)
    before = reports_server.get("/problems?format=json").json()

    def changed(**problem):
        document = json.loads(json.dumps(good))
        document["problem"].update(problem)
        return json.dumps(document).encode()

    crash_frames = good["problem"]["stacktrace"][0]["frames"]
    past = [dict(frame, build_id_offset=frame["build_id_offset"] + 10 ** 9) for frame in crash_frames]
    unknown = [dict(frame, build_id="00" * 20) for frame in crash_frames]
    huge = [{"crash_thread": True, "frames": [crash_frames[0]] * 100_000}]
    cases = [
        (b"{not json", 400, "The report is not JSON (Expecting property name enclosed in double quotes: line 1 column "
                            "2 (char 1))"),
        (json.dumps(dict(good, ureport_version=1)).encode(), 400,
         "This server reads uReport version 2; this report is version 1"),
        (changed(stacktrace=[{"crash_thread": True, "frames": past}]), 400,
         f"The crash thread's frame 0 is not in its module: offset {hex(past[0]['build_id_offset'])} is past the end "
         "of libcrash.so.1"),
        (changed(stacktrace=[{"crash_thread": True, "frames": unknown}]), 400,
         "None of the crash thread's modules is known to this server (no debuginfo in fedora-41-x86_64 for build-ids "
         + "00" * 20 + ")"),
        (changed(stacktrace=huge), 413, "The report is too large: this server reads reports of at most 2 MiB (send "
                                        "fewer frames)"),
        (changed(stacktrace=[{"crash_thread": True, "frames": [crash_frames[0]] * 300}]), 400,
         "The report has too many frames: at most 256 per thread and 4096 in all are read"),
        (changed(type="java"), 400, "This server buckets crashed programs (core), Python exceptions (python) and "
                                    "kernel oopses (kerneloops), not Java exceptions ('java')"),
        (changed(type="python"), 400, "The report has no problem.exception_name"),
        (changed(signal="11"), 400, "The report's problem.signal is not a whole number"),
    ]
    for data, status, sentence in cases:
        answer = post_report(reports_server, data)
        assert answer.status_code == status, (answer.status_code, answer.text)
        # As libreport reads a refusal: JSON with the sentence under "error" (Apache's own 413 too).
        assert answer.json()["error"].startswith(sentence), (answer.text, sentence)
    assert reports_server.get("/problems?format=json").json() == before


def test_the_problems_pages_show_counts_to_everyone_and_details_in_the_manager(reports_server, installed, crashes):
    answer, _ = report(reports_server, installed, crashes("simple"), "--no-core")
    bthash = answer["bthash"]
    public = Engineer(reports_server, None, None)
    listing = public.get("/problems")
    assert listing.status_code == 200 and bthash[:12] in listing.text
    # The package's name as the release's index knows it, never the report's own words (its executable).
    assert "<td>crasher</td>" in listing.text and "/usr/bin/crasher" not in listing.text
    assert public.get(f"/problems/{bthash}").status_code == 403
    engineer = Engineer(reports_server, ENGINEER, ENGINEER_PASSWORD)
    details = engineer.get(f"/manager/problems/{bthash}")
    assert details.status_code == 200 and "crash_in_library" in details.text
    assert engineer.get(f"/manager/problems/{bthash}?format=json").json()["count"] >= 1
    metrics = reports_server.get("/metrics").text
    assert re.search(r"^retrace_reports_total \d+", metrics, re.M) and re.search(r"^retrace_buckets \d+", metrics, re.M)
    with chromium(basic_auth=(ENGINEER, ENGINEER_PASSWORD), height=1200) as driver:
        driver.get(reports_server.url + "/problems")
        assert driver.title == "Crash buckets"
        screenshot(driver, "problems.png")
        driver.get(f"{reports_server.url}/manager/problems/{bthash}")
        assert "crash_in_library" in driver.page_source
        screenshot(driver, "problem-bucket.png")


def test_a_program_updated_since_its_crash_is_not_unwound_here_its_core_goes_instead(
        reports_server, installed, crashes, tmp_path):
    """The crashed build is gone from the machine (a package update came between the crash and the report):
    eu-stack would unwind with the new build's call frame information, and the server would name the new
    build's functions at the old build's offsets. The client sees the build-ids differ and sends the core."""
    problem = crashes("simple")
    updated = Path(shutil.copytree(installed, tmp_path / "updated", symlinks=True))
    (updated / "usr/bin/crasher").unlink()
    shutil.copy("/usr/bin/true", updated / "usr/bin/crasher")
    ran = run_installed(updated, str(CLIENT), "report", "--uri", reports_server.url, "--cafile", str(reports_server.cert),
                        "--dir", str(problem), "--status-delay", "0.2", timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert ("No coreless report: /usr/bin/crasher on this machine is another build than the one that crashed "
            "(updated since?): unwound here, the report would name other functions; sending the core instead"
            in ran.stderr), ran.stderr
    assert "Retrace job finished successfully" in ran.stderr, ran.stderr
    assert "crash_in_library" in (problem / "backtrace").read_text(), "the full retrace's, saved beside the core"
    refused = run_installed(updated, str(CLIENT), "report", "--uri", reports_server.url, "--cafile",
                            str(reports_server.cert), "--dir", str(problem), "--no-core", timeout=300)
    assert refused.returncode == 2 and "retrace-client: No coreless report: /usr/bin/crasher" in refused.stderr
    answer, _ = report(reports_server, installed, problem, "--no-core")
    assert answer["result"] is True, "with the crashed build installed, the report goes, into the retrace's bucket"


def test_the_client_says_why_it_cannot_report(reports_server, tmp_path):
    vmcore = tmp_path / "vmcore"
    vmcore.write_bytes(b"KDUMP   " + bytes(8192))
    ran = subprocess.run([str(CLIENT), "report", "--uri", reports_server.url, "--cafile", str(reports_server.cert),
                          "--vmcore", str(vmcore)], capture_output=True, text=True, timeout=60)
    assert (ran.returncode, ran.stderr.strip()) == (
        2, "retrace-client: report takes a process crash (--dir, --core, --coredumpctl, --apport), not a vmcore")


def test_the_large_crash_reported_coreless_matches_its_full_retrace(start_server, work_dir, fixture_rpms):
    """bigcrash threads: ten modules with big debuginfo, nine threads thousands of frames deep."""
    rpms = fixture_rpms + build_bigcrash(work_dir / "bigcrash")
    server = start_server(repository=publish_release(work_dir / "repos-bigcrash", RELEASE_ID, rpms),
                          MaxPackedSize="64", MaxUnpackedSize="256")
    staged = installed_tree(rpms, work_dir)
    core = crash_installed(rpms, work_dir, "threads", program="/usr/bin/bigcrash", staged=staged)
    problem = make_problem_dir(work_dir / "problem-bigcrash", core, "/usr/bin/bigcrash", BIGCRASH_PACKAGE)
    task_id, auth = submit(server, problem)
    assert wait_final(server, task_id, auth, timeout=300).headers["X-Task-Status"] == "FINISHED_SUCCESS"
    full = gdb_located(server.get(f"/{task_id}/backtrace", headers=auth).text)
    answer, _ = report(server, staged, problem, "--no-core")
    reported = located(answer["frames"])
    assert len(answer["frames"]) == 9 and len(reported) == 64
    assert reported == full[:64]
    assert reported[0][0] == "big_f2499" and answer["result"] is True


def many_thread_report(good, name, threads=64):
    """``good`` as a crash of ``/usr/bin/<name>`` with ``threads`` threads: a new bucket of the largest shape
    the server reads."""
    document = json.loads(json.dumps(good))
    crash = document["problem"]["stacktrace"][0]
    others = [{"crash_thread": False, "frames": (crash["frames"] * 16)[:16]} for _ in range(threads - 1)]
    document["problem"].update(executable=f"/usr/bin/{name}", component=name, stacktrace=[crash, *others])
    return json.dumps(document).encode()


def database_bytes(server):
    return sum(path.stat().st_size for path in server.save_dir.glob("problems.db*"))


def test_new_buckets_keep_what_a_bucket_needs_not_every_thread_of_their_first_report(start_server, installed,
                                                                                      crashes):
    """Before: 30 reports of 13 KB grew problems.db by 29 MB (each new bucket kept the text of all 64 threads)."""
    server = start_server()
    good = ureport_of(crashes("simple"), installed, server)
    assert post_report(server, many_thread_report(good, "warm-up")).status_code == 202
    before = database_bytes(server)
    reports = [many_thread_report(good, f"crasher{number}") for number in range(30)]
    for data in reports:
        answer = post_report(server, data)
        assert answer.status_code == 202 and answer.json()["result"] is False, answer.text
        assert len(answer.json()["frames"]) == 64, "the answer still carries every thread"
    grown = database_bytes(server) - before
    assert grown < sum(map(len, reports)), (grown, sum(map(len, reports)))
    bucket = Engineer(server, None, None).get("/problems?format=json").json()["buckets"][0]
    assert set(bucket) == {"bthash", "component", "count", "first_seen", "last_seen", "full_task", "releases",
                           "architectures", "versions", "bugs", "recent", "before", "type"}


def test_a_report_is_507_when_storing_it_would_go_below_min_storage_left(start_server, installed, crashes):
    spool_free = shutil.disk_usage("/var/tmp").free // (1024 * 1024)
    server = start_server(MinStorageLeft=str(spool_free + 1024))
    answer = post_report(server, json.dumps(ureport_of(crashes("simple"), installed, server)).encode())
    assert (answer.status_code, answer.json()) == (507, {"error": "There is not enough storage space on the server"})
    assert Engineer(server, None, None).get("/problems?format=json").json()["buckets"] == []


def test_a_report_naming_a_package_the_index_does_not_hold_shows_no_words_of_its_own(start_server, installed,
                                                                                     crashes):
    server = start_server()
    document = ureport_of(crashes("simple"), installed, server)
    for package in document["packages"]:
        package["version"] = "6.6.6"
    answer = post_report(server, json.dumps(document).encode())
    assert answer.status_code == 202, answer.text
    listing = Engineer(server, None, None).get("/problems").text
    assert "<td>unknown</td>" in listing and "6.6.6" not in listing
    document["problem"]["executable"] = "/usr/bin/crasher<img src=x onerror=alert(1)>"
    refused = post_report(server, json.dumps(document).encode())
    assert (refused.status_code, refused.json()["error"]) == (
        400, "The report's executable's file name 'crasher<img src=x onerror=alert(1)>' holds characters this server "
             "does not accept")


def test_cleanup_forgets_buckets_unseen_for_a_year_and_gives_their_space_back(start_server, installed, crashes):
    server = start_server()
    good = ureport_of(crashes("simple"), installed, server)
    for number in range(40):
        assert post_report(server, many_thread_report(good, f"old{number}")).status_code == 202
    assert post_report(server, many_thread_report(good, "recent")).status_code == 202
    with sqlite3.connect(server.save_dir / "problems.db") as db:  # a year passes for the old ones
        db.execute("UPDATE buckets SET last_seen = last_seen - 366 * 86400 WHERE executable LIKE 'old%'")
    before = database_bytes(server)
    result = cleanup(server)
    assert result.returncode == 0, result.stderr
    assert "40 buckets" in result.stdout + result.stderr, result.stdout
    buckets = Engineer(server, None, None).get("/problems?format=json").json()["buckets"]
    assert len(buckets) == 1 and database_bytes(server) < before


def attach(server, document):
    """``POST /reports/attach/`` as libreport's reporter-ureport -a sends it: the JSON in the form's ``file``."""
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    return Engineer(server, None, None).post("/reports/attach/", files={"file": ("attachment.json", data,
                                                                                  "application/json")})


def test_bugs_attached_to_a_bucket_come_back_in_reported_to_and_on_its_page(reports_server, installed, crashes):
    bthash = report(reports_server, installed, crashes("simple"), "--no-core")[0]["bthash"]
    for kind, data in (("RHBZ", 2345678), ("url", "https://gitlab.example.com/team/app/-/issues/7"),
                       ("email", "reporter@example.com"), ("comment", "It crashes when I press Save"),
                       ("RHBZ", "2345678")):
        answer = attach(reports_server, {"bthash": bthash, "type": kind, "data": data})
        assert (answer.status_code, answer.json()) == (202, {"result": True}), answer.text
    refusals = [
        ({"bthash": bthash, "type": "jira", "data": "X-1"}, 400,
         "Attachments of type 'jira' are not kept here; this server keeps RHBZ, url, email, comment"),
        ({"bthash": bthash, "type": "RHBZ", "data": "not a number"}, 400,
         "The data of a RHBZ attachment must be a Red Hat Bugzilla bug number"),
        ({"bthash": bthash, "type": "url", "data": "javascript:alert(1)"}, 400,
         "The data of a url attachment must be an http or https URL (no spaces)"),
        ({"bthash": "0" * 40, "type": "RHBZ", "data": "1"}, 404, f"There is no crash bucket {'0' * 40} on this server"),
        ({"bthash": "../etc", "type": "RHBZ", "data": "1"}, 400, "The attachment's bthash must be the 40 hexadecimal"),
        (b"[1, 2", 400, "The attachment is not JSON"),
    ]
    for document, status, sentence in refusals:
        answer = attach(reports_server, document)
        assert answer.status_code == status and answer.json()["error"].startswith(sentence), answer.text
    again = report(reports_server, installed, crashes("simple"), "--no-core")[0]
    assert again["bthash"] == bthash
    assert {"reporter": "Bugzilla", "type": "url", "value": "https://bugzilla.redhat.com/show_bug.cgi?id=2345678"} \
        in again["reported_to"]
    assert {"reporter": "gitlab.example.com", "type": "url",
            "value": "https://gitlab.example.com/team/app/-/issues/7"} in again["reported_to"]
    assert "reporter@example.com" not in json.dumps(again), "e-mail addresses are never handed out"
    stored = Engineer(reports_server, None, None).get(f"/reports/bthash/{bthash}/", allow_redirects=False)
    assert stored.status_code == 302 and stored.headers["Location"].endswith(f"/manager/problems/{bthash}")
    engineer = Engineer(reports_server, ENGINEER, ENGINEER_PASSWORD)
    page = engineer.get(f"/manager/problems/{bthash}").text
    assert 'href="https://bugzilla.redhat.com/show_bug.cgi?id=2345678"' in page
    assert "reporter@example.com" in page and "It crashes when I press Save" in page
    kinds = [item["type"] for item in engineer.get(f"/manager/problems/{bthash}?format=json").json()["attachments"]]
    assert kinds == ["RHBZ", "url", "email", "comment"], "the same bug attached twice is kept once"
    filed = engineer.post(f"/manager/problems/{bthash}/bugs", data={"bug": "https://jira.example.com/browse/APP-12"},
                          allow_redirects=False)
    assert filed.status_code == 303 and filed.headers["Location"].endswith(f"/manager/problems/{bthash}")
    shown = engineer.get(f"/manager/problems/{bthash}?format=json").json()["attachments"][-1]
    assert (shown["type"], shown["value"], shown["who"]) == ("url", "https://jira.example.com/browse/APP-12", ENGINEER)
    assert engineer.post(f"/manager/problems/{bthash}/bugs", data={"bug": "see my mail"}).status_code == 400
    with_bug = reports_server.get("/problems?bug=yes&format=json").json()["buckets"]
    assert bthash in [row["bthash"] for row in with_bug] and all(row["bugs"] > 0 for row in with_bug)
    assert bthash not in [row["bthash"] for row in reports_server.get("/problems?bug=no&format=json").json()["buckets"]]


def test_after_a_rule_change_a_rebucket_and_new_reports_agree_on_the_bucket(start_server, installed, crashes,
                                                                             work_dir):
    """A triage team edits SignatureRules: `retrace-server-cleanup --rebucket` moves the stored bucket, with its
    count, to the signature the new rules give, and the next report of the crash lands in it."""
    rules_file = work_dir / "signature-rules-rebucket.conf"  # where the service user can read it
    rules_file.unlink(missing_ok=True)
    server = start_server(SignatureRules=str(rules_file))  # no file yet: the built-in rules
    first = report(server, installed, crashes("simple"), "--no-core")[0]
    rules_file.write_text("[core]\nframes = 1\n")
    rules_file.chmod(0o644)
    ran = cleanup(server, "--rebucket", SignatureRules=str(rules_file))
    assert ran.returncode == 0 and "rebucketed 1 crash buckets" in ran.stdout, ran.stdout + ran.stderr
    (moved,) = server.get("/problems?format=json").json()["buckets"]
    assert moved["bthash"] != first["bthash"] and moved["count"] == 1
    again = report(server, installed, crashes("simple"), "--no-core")[0]
    assert (again["bthash"], again["result"], again["count"]) == (moved["bthash"], True, 2)
    rules_file.write_text("[core]\nframes = 0\n")
    refused = cleanup(server, "--rebucket", SignatureRules=str(rules_file))
    assert refused.returncode == 2 and "frames must be a whole number from 1 to 32, not '0'" in refused.stderr


def test_triage_views_of_the_problems_list(reports_server, installed, crashes):
    bthash = report(reports_server, installed, crashes("simple"), "--no-core")[0]["bthash"]

    def view(query):
        answer = reports_server.get(f"/problems?format=json&{query}")
        assert answer.status_code == 200, answer.text
        return answer.json()

    week = view(f"release={RELEASE_ID}&component=crasher&arch=x86_64&days=7&sort=window&version_from=1.0-1.fc41")
    assert week["view"] == {"release": RELEASE_ID, "component": "crasher", "arch": "x86_64", "days": 7,
                            "sort": "window", "version_from": "1.0-1.fc41", "version_to": None}
    row = next(row for row in week["buckets"] if row["bthash"] == bthash)
    assert row["recent"] >= 1 and row["recent"] - row["before"] >= 1
    assert view("release=debian-12-x86_64")["buckets"] == [] and view("component=nothing")["buckets"] == []
    assert view("version_from=1.0.1")["buckets"] == [] and bthash in [
        row["bthash"] for row in view("version_from=0.9&version_to=1.0-1.fc41")["buckets"]]
    assert bthash in [row["bthash"] for row in view("sort=growth&days=1")["buckets"]]
    for query, sentence in (("sort=loudest", "sort must be one of total, window, growth"),
                            ("days=0", "days must be a whole number from 1 to 366"),
                            ("release=%3Cscript%3E", "The release to show must be a name like fedora-41-x86_64"),
                            ("version_to=1.0%20or%201", "version_to must be a package version like 1.2-3.fc41 or "
                                                         "1:2.36-9+deb12u4")):
        refused = reports_server.get(f"/problems?{query}")
        assert (refused.status_code, refused.text) == (400, sentence + ("" if "must be a name" not in sentence else
                                                                         ", crasher or x86_64"))
    page = reports_server.get(f"/problems?release={RELEASE_ID}&sort=window").text
    assert '<form id="view"' in page and f'value="{RELEASE_ID}"' in page and "<th>Last 7 days</th>" in page


def test_python_exceptions_and_kernel_oopses_get_buckets_of_their_own(reports_server):
    """Documents written from FAF's format description, posted as reporter-ureport posts them."""
    answers = {}
    for name, document in (("python", python_report()), ("python again", python_report(line=5)),
                           ("other exception", python_report(exception="KeyError")), ("oops", oops_report()),
                           ("oops again", oops_report(offsets=(1, 2, 3)))):
        answer = post_report(reports_server, json.dumps(document).encode())
        assert answer.status_code == 202, answer.text
        answers[name] = answer.json()
    assert answers["python again"]["bthash"] == answers["python"]["bthash"] and answers["python again"]["result"]
    assert answers["other exception"]["bthash"] != answers["python"]["bthash"]
    assert answers["oops again"]["bthash"] == answers["oops"]["bthash"] and answers["oops again"]["count"] == 2
    assert not answers["oops"]["core_wanted"] and "sysrq_handle_crash" in answers["oops"]["backtrace"]
    listed = {row["bthash"]: row["type"] for row in reports_server.get("/problems?format=json").json()["buckets"]}
    assert listed[answers["python"]["bthash"]] == "python" and listed[answers["oops"]["bthash"]] == "kerneloops"
    refused = post_report(reports_server, json.dumps(dict(python_report(), problem={"type": "java"})).encode())
    assert refused.status_code == 400 and "not Java exceptions ('java')" in refused.json()["error"]


def test_a_report_symbolized_in_part_moves_to_its_bucket_once_reposync_brings_the_debuginfo(
        start_server, installed, crashes, fixture_rpms, work_dir):
    """libcrash's debuginfo is not on the mirror yet: the report is counted with what could be symbolized and
    kept; the reposync that brings the package symbolizes it again and it joins the whole crash's bucket (the
    partial one is gone)."""
    without = [rpm for rpm in fixture_rpms if not rpm.name.startswith("libcrash-debuginfo")]
    # world-readable, under the session's work directory: reposync reads a local mirror as the service user
    mirror = publish_release(world_readable_dir(work_dir / "mirror-without-libcrash-debuginfo"), "fedora", without)
    server = start_server(repository=False)
    (server.root / "plugins").mkdir()
    (server.root / "plugins" / "fixture.conf").write_text(f"[reposync fedora]\neverything = {mirror}\n")
    sync_config = write_config(server.root, name="reposync.conf", PluginDir=server.root / "plugins")

    def reposync():
        ran = subprocess.run([str(REPOSYNC), "--config", str(sync_config), "fedora", "41", "x86_64"],
                             capture_output=True, text=True, timeout=300)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        return ran.stdout

    reposync()
    partial = report(server, installed, crashes("simple"), "--no-core")[0]
    # libcrash's debuginfo is missing, and this machine's libc's (never in the fixture release)
    assert partial["symbolized"] == "in part" and len(partial["missing_build_ids"]) == 2, partial
    assert "Symbolized in part: this server has no debuginfo yet for build-id" in partial["message"]
    assert "crash_in_library" not in partial["backtrace"] and "main" in partial["backtrace"]
    unchanged = cleanup(server)
    assert "0 reports symbolized in part tried again, 0 moved" in unchanged.stdout + unchanged.stderr, (
        "the release did not change: nothing to try")
    publish_release(mirror.parent, mirror.name, fixture_rpms)
    assert f"{RELEASE_ID}: 1 reports symbolized in part tried again, 1 moved" in reposync()
    (moved,) = server.get("/problems?format=json").json()["buckets"]
    assert moved["bthash"] != partial["bthash"] and moved["count"] == 1
    whole = report(server, installed, crashes("simple"), "--no-core")[0]
    assert (whole["bthash"], whole["result"], whole["count"]) == (moved["bthash"], True, 2)
    assert "crash_in_library" in whole["backtrace"] and len(whole["missing_build_ids"]) == 1


def test_a_bucket_names_the_version_that_probably_fixed_it_and_each_release_s_newest(start_server, installed,
                                                                                     crashes, fixture_rpms, work_dir,
                                                                                     users):
    """crasher 1.0 crashes in the library; 1.1's reports come only from another crash: 1.1 probably fixed it."""
    newer = build_rpms(work_dir / "build-1.1-fixes", version="1.1")
    release = publish_release(work_dir / "repos-1.0-and-1.1", RELEASE_ID, [*fixture_rpms, *newer])
    server = start_server(repository=release, AllowTaskManager="1", ManagerUserFile=str(users))
    old = post_report(server, json.dumps(ureport_of(crashes("simple"), installed, server)).encode()).json()
    other = ureport_of(crashes("threads"), installed, server)
    for package in other["packages"]:
        if package["name"] == "crasher":
            package["version"] = "1.1"
    answer = post_report(server, json.dumps(other).encode()).json()
    assert answer["bthash"] != old["bthash"]
    engineer = Engineer(server, ENGINEER, ENGINEER_PASSWORD)
    fix = engineer.get(f"/manager/problems/{old['bthash']}?format=json").json()["probable_fix"]
    assert fix == {"crashed": {"1.0-1.fc41": 1}, "probably_fixed_in": "1.1-1.fc41",
                   "newest": {RELEASE_ID: "1.1-1.fc41"}}
    page = engineer.get(f"/manager/problems/{old['bthash']}").text
    assert "Probably fixed in crasher-1.1-1.fc41" in page and "Crashed in 1.0-1.fc41 (1)." in page
    assert engineer.get(f"/manager/problems/{answer['bthash']}?format=json").json()["probable_fix"][
        "probably_fixed_in"] is None, "its own version is the newest reported"
    with chromium(basic_auth=(ENGINEER, ENGINEER_PASSWORD), height=1400) as driver:
        # A triager: the week's top crashers of crasher 1.1 and later, then the 1.0 bucket, where a bug is filed.
        driver.get(server.url + "/problems")
        for name, value in (("release", RELEASE_ID), ("component", "crasher"), ("version_from", "1.1")):
            driver.find_element(By.NAME, name).send_keys(value)
        Select(driver.find_element(By.NAME, "sort")).select_by_visible_text("window")
        submit_and_wait(driver, driver.find_element(By.CSS_SELECTOR, "#view button"))
        assert "sort=window" in driver.current_url and "version_from=1.1" in driver.current_url
        listed = [link.text for link in driver.find_elements(By.CSS_SELECTOR, "#buckets a")]
        assert listed == [answer["bthash"][:12]], "only the bucket 1.1 crashed in"
        screenshot(driver, "problems-view.png")
        driver.get(f"{server.url}/manager/problems/{old['bthash']}")
        assert "Probably fixed in crasher-1.1-1.fc41" in driver.find_element(By.ID, "probable-fix").text
        driver.find_element(By.NAME, "bug").send_keys("https://bugzilla.example.com/show_bug.cgi?id=4242")
        submit_and_wait(driver, driver.find_element(By.CSS_SELECTOR, "#add-bug button"))
        assert "bugzilla.example.com: https://bugzilla.example.com/show_bug.cgi?id=4242" in driver.find_element(
            By.ID, "reported").text
        screenshot(driver, "problem-bucket-fix-and-bug.png")
        driver.get(server.url + "/problems?bug=yes")
        assert [link.text for link in driver.find_elements(By.CSS_SELECTOR, "#buckets a")] == [old["bthash"][:12]]


def test_a_report_while_the_signature_rules_are_broken_is_told_to_come_back_without_a_server_path(start_server,
                                                                                                  work_dir):
    rules_file = work_dir / "signature-rules-broken.conf"
    rules_file.write_text("[python]\nframes = many\n")
    rules_file.chmod(0o644)
    server = start_server(SignatureRules=str(rules_file))
    answer = post_report(server, json.dumps(python_report()).encode())
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "600", answer.text
    assert answer.json()["error"].startswith("This server cannot read its crash signature rules right now")
    assert str(work_dir) not in answer.text and "frames must be a whole number" in server.error_log()
