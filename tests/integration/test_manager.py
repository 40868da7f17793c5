"""The task manager through the real Apache: what support engineers and upstream's retrace-server-task do.

Tasks are started from a real HTTP server, a directory under ImportDirs and
a real FTP server on loopback, run by the real worker and gdb, and mail a
real SMTP server; the pages are read with the line rules of upstream's CLI
(``manager_client``).
"""

import hashlib
import html
import os
import shutil
import subprocess
import time
import types
from pathlib import Path

from testkit.helpers import add_debian_repository, submit, wait_final
from testkit.loopback import world_readable_dir
from testkit.server import free_port
from testkit.vmcore import kernel_debs
from tests.integration.browser import chromium, screenshot, submit_and_wait
from tests.integration.manager_client import (
    DROP_USER,
    ENGINEER,
    ENGINEER_PASSWORD,
    FINAL,
    READER,
    READER_PASSWORD,
    Engineer,
    created,
    manager_settings,
    page_field,
    page_md5,
    page_status,
    page_task_id,
    refused,
)
from tests.integration.test_cleanup import cleanup

# -- access --------------------------------------------------------------------------------


def test_apache_asks_for_credentials_and_refuses_wrong_ones(manager):
    assert Engineer(manager, None, None).get("/manager").status_code == 401
    assert Engineer(manager, ENGINEER, "wrong").get("/manager").status_code == 401
    page = Engineer(manager, READER, READER_PASSWORD).get("/manager")
    assert page.status_code == 200 and "Signed in as reader" in page.text
    # The rest of the server stays public, as upstream's CLI expects when it first probes "/".
    assert Engineer(manager, None, None).get("/").status_code == 200


def test_the_manager_is_off_unless_allowed_and_never_open_without_authentication(start_server):
    off = start_server()
    refused(off.get("/manager"), 403, "Task manager was disabled by the server administrator")
    unauthenticated = start_server(AllowTaskManager="1")
    refused(unauthenticated.get("/manager"), 403,
            "The task manager needs authentication, and none is configured: the administrator sets ManagerUserFile "
            "(or another Apache authentication, see httpd/retrace.conf)")
    assert unauthenticated.task_dirs() == []


# -- tasks from a URL, a server path, the FTP drop ---------------------------------------


def test_a_url_import_is_retraced_and_its_page_reads_as_upstreams_cli_reads_it(engineer, loopback, exports):
    answer = engineer.create(f"{loopback.http.url}/problem.tar.xz", caseno="4242", notify="eng@example.com")
    task_id = created(answer)
    assert answer.url.endswith(f"/manager/{task_id}")
    assert engineer.wait_final(task_id) == "Retrace job finished successfully"
    page = engineer.page(task_id)
    assert page_md5(page) == exports.md5
    assert page_field(page, "Update case no.") == "4242"
    assert page_field(page, "Update e-mail(s)") == "eng@example.com"
    assert page_field(page, "Update bugzilla no.") is None
    assert 'href="https://crm.example.com/case/4242"' in page
    backtrace = engineer.get(f"/manager/{task_id}/backtrace")
    assert backtrace.status_code == 200 and "crash_in_library (depth=0" in backtrace.text
    log = engineer.get(f"/manager/{task_id}/log").text
    assert "Downloading http://127.0.0.1" in log and f"md5sum of problem.tar.xz: {exports.md5}" in log


def test_case_data_is_set_as_the_cli_sets_it_and_refused_with_a_sentence_when_wrong(engineer, loopback):
    task_id = created(engineer.create(f"{loopback.http.url}/problem.tar.xz"))
    page = engineer.page(task_id)
    assert [page_field(page, button) for button in ("Update case no.", "Update e-mail(s)", "Update bugzilla no.")] \
        == [None, None, None]
    for field, value in (("caseno", "777"), ("notify", "a@example.com; b@example.com"), ("bugzillano", "123, 456")):
        assert engineer.set_field(task_id, field, value).status_code == 200
    page = engineer.page(task_id)
    assert page_field(page, "Update case no.") == "777"
    assert page_field(page, "Update e-mail(s)") == "a@example.com, b@example.com"
    assert page_field(page, "Update bugzilla no.") == "123, 456"
    refused(engineer.set_field(task_id, "caseno", " "), 400,
            "The case number is empty; give the support case's number (digits only)")
    refused(engineer.set_field(task_id, "caseno", "12ab"), 400, "'12ab' is not a case number: use digits only (at most 12)")
    refused(engineer.set_field(task_id, "notify", "a@example.com, <script>"), 400,
            "'<script>' is not an e-mail address this server sends to (name@domain)")
    assert page_field(engineer.page(task_id), "Update case no.") == "777"
    engineer.wait_final(task_id)


def test_a_file_under_import_dirs_is_retraced(engineer, exports):
    task_id = created(engineer.create(str(exports.import_ / "problem.tar.xz")))
    assert engineer.wait_final(task_id) == "Retrace job finished successfully"
    task_id = created(engineer.create((exports.import_ / "problem.tar.xz").as_uri(), md5=False))
    assert engineer.wait_final(task_id) == "Retrace job finished successfully"
    assert page_md5(engineer.page(task_id)) is None


def test_sources_that_cannot_be_read_are_refused_at_once_and_create_nothing(engineer, manager, exports, loopback):
    before = manager.task_dirs()
    closed = free_port()
    # Missing, outside, behind an escaping symlink, or the server's own files: one sentence, which tells
    # nothing of what exists outside ImportDirs.
    import_refusals = [(path, 400, f"There is no file {path} this server may import (ImportDirs: {exports.import_})")
                       for path in (str(exports.outside / "problem.tar.xz"), str(exports.import_ / "escape.tar.xz"),
                                    str(exports.import_ / ".." / "outside" / "problem.tar.xz"),
                                    str(exports.import_ / "missing.vmcore"), "/etc/hostname", "/nonexistent/vmcore")]
    cases = [
        *import_refusals,
        (f"http://127.0.0.1:{closed}/vmcore", 400,
         f"Cannot reach 127.0.0.1:{closed}: the connection was refused (nothing listens on that port)"),
        (f"{loopback.http.url}/nothing-here", 400, f"{loopback.http.url}/nothing-here answered HTTP 404; check the URL"),
        (f"{loopback.http.url}/notes.txt", 400,
         "The file is empty, or not a coredump, nor a tar archive or a compressed coredump this server reads"),
        (f"ftp://{loopback.ftp.host}/a%0d%0aDELE%20problem.tar.xz", 400,
         "The URL holds encoded control characters (such as %0d%0a); give the file's plain URL"),
        (f"ftp://{DROP_USER}:wrong@{loopback.ftp.host}/problem.tar.xz", 400,
         f"The FTP server 127.0.0.1:{loopback.ftp.port} refused the login as 'customer': 530 Authentication failed."),
        ("gopher://example.com/core", 400,
         "'gopher://example.com/core' is neither an http, https or ftp URL nor an absolute path on the server"),
        ("", 400, "Give the URL or the server path of the core or vmcore to retrace"),
    ]
    too_big = exports.http / "huge.core"
    with open(too_big, "wb") as sparse:
        sparse.truncate(40 * 1024 * 1024)
    cases.append((f"{loopback.http.url}/huge.core", 413,
                  f"{loopback.http.url}/huge.core is 41943040 bytes; this server accepts at most 33554432 bytes for this "
                  "task type"))
    for url, status, sentence in cases:
        refused(engineer.create(url), status, sentence)
    refused(engineer.create(f"{loopback.http.url}/problem.tar.xz", task_type="vmcore", kernelver="../../etc"), 400,
            "The kernel version '../../etc' is not a kernel release string (what uname -r prints, like 6.1.0-26-amd64 "
            "or 5.14.0-427.el9.x86_64)")
    refused(engineer.create(f"{loopback.http.url}/problem.tar.xz", package="bash; rm -rf /"), 400,
            "The package 'bash; rm -rf /' is not a package name-version-release such as 'bash-5.2.26-3.fc41' or "
            "'bash-5.2.15-2+b7'")
    assert manager.task_dirs() == before


def test_the_ftp_drop_is_listed_and_a_task_starts_from_its_file(engineer, exports):
    listing = engineer.get("/manager").text
    assert "problem.tar.xz" in listing
    assert "&lt;b&gt;odd.tar.xz" in listing and "<b>odd" not in listing
    answer = engineer.start_from_drop("problem.tar.xz", caseno="99")
    task_id = created(answer)
    assert engineer.wait_final(task_id) == "Retrace job finished successfully"
    page = engineer.page(task_id)
    assert page_md5(page) == exports.md5 and page_field(page, "Update case no.") == "99"
    assert "problem.tar.xz on the FTP drop" in page
    refused(engineer.start_from_drop("absent.vmcore"), 400, "There is no file absent.vmcore on the FTP drop")


def test_a_task_that_ends_mails_its_addresses(engineer, loopback):
    task_id = created(engineer.create(f"{loopback.http.url}/problem.tar.xz", caseno="31337",
                                      notify="one@example.com, two@example.com"))
    engineer.wait_final(task_id)
    deadline = time.monotonic() + 30  # the worker mails after it marked the task ended
    while not (mails := [mail for mail in loopback.mail.messages if f"#{task_id}" in mail["Subject"]]):
        assert time.monotonic() < deadline, [mail["Subject"] for mail in loopback.mail.messages]
        time.sleep(0.1)
    time.sleep(0.5)
    assert len([mail for mail in loopback.mail.messages if f"#{task_id}" in mail["Subject"]]) == 1
    mail = mails[0]
    assert mail["Subject"] == f"Retrace Server task #{task_id} finished successfully (case 31337)"
    assert (mail["From"], mail["To"]) == ("retrace@example.com", "one@example.com, two@example.com")
    body = mail.get_payload(decode=True).decode()
    assert f"/manager/{task_id}/backtrace" in body and "Case number: 31337" in body


def test_a_broken_drop_login_and_a_dead_mail_server_are_sentences_not_failures(start_server, users, exports,
                                                                                loopback):
    server = start_server(**manager_settings(users, exports, loopback, FTPPass="wrong",
                                             SMTPServer=f"127.0.0.1:{free_port()}"))
    engineer = Engineer(server, ENGINEER, ENGINEER_PASSWORD)
    sentence = f"The FTP server 127.0.0.1:{loopback.ftp.port} refused the login as 'customer': 530 Authentication failed."
    assert html.escape(sentence) in engineer.get("/manager").text
    refused(engineer.start_from_drop("problem.tar.xz"), 400, sentence)
    task_id = created(engineer.create(str(exports.import_ / "problem.tar.xz"), notify="eng@example.com"))
    assert engineer.wait_final(task_id) == "Retrace job finished successfully"
    deadline = time.monotonic() + 60  # the worker mails after it marked the task ended
    while "The e-mail to eng@example.com was not sent: the mail server 127.0.0.1:" not in \
            (log := engineer.get(f"/manager/{task_id}/log").text):
        assert time.monotonic() < deadline, log
        time.sleep(0.2)
    assert page_status(engineer.page(task_id)) == "Retrace job finished successfully"


# -- restart, delete, retention ------------------------------------------------------------


def test_restart_runs_the_task_again_with_new_case_data(engineer, exports):
    task_id = created(engineer.create(str(exports.import_ / "problem.tar.xz")))
    engineer.wait_final(task_id)
    refused(engineer.restart(task_id, kernelver="6.1.0-26-amd64"), 400,
            "The kernel version is for vmcore tasks; a coredump's release is forced with --release")
    answer = engineer.restart(task_id, caseno="555", notify="late@example.com", debug="on")
    assert answer.status_code == 200 and page_task_id(answer.text) == task_id
    assert engineer.wait_final(task_id) == "Retrace job finished successfully"
    page = engineer.page(task_id)
    assert page_field(page, "Update case no.") == "555" and page_field(page, "Update e-mail(s)") == "late@example.com"
    assert "[D] Mapped /usr/bin/crasher, build-id " in engineer.get(f"/manager/{task_id}/log").text


def test_only_the_named_users_may_delete(manager, engineer, exports):
    task_id = created(engineer.create(str(exports.import_ / "problem.tar.xz")))
    engineer.wait_final(task_id)
    reader = Engineer(manager, READER, READER_PASSWORD)
    assert "Delete task" not in reader.page(task_id) and "Delete task" in engineer.page(task_id)
    refused(reader.post(f"/manager/{task_id}/delete"), 403,
            "User 'reader' may not delete tasks on this server (TaskManagerDeleteUsers)")
    answer = engineer.post(f"/manager/{task_id}/delete")
    assert answer.status_code == 200 and answer.url == f"{manager.url}/manager"
    assert task_id not in manager.task_dirs()
    refused(engineer.get(f"/manager/{task_id}"), 404, "There is no such task")


def test_a_task_kept_for_its_case_outlives_its_age_in_cleanup(manager, engineer, exports):
    kept, expiring = (created(engineer.create(str(exports.import_ / "problem.tar.xz"))) for _ in range(2))
    for task_id in (kept, expiring):
        engineer.wait_final(task_id)
    assert "(DeleteTaskAfter)" in engineer.page(kept)
    assert engineer.post(f"/manager/{kept}/keep", data={"days": "200"}).status_code == 200
    assert "(kept for its case)" in engineer.page(kept)
    refused(engineer.post(f"/manager/{kept}/keep", data={"days": "9999"}), 400,
            "Keep the task for 1 to 365 days, not '9999'")
    old = time.time() - 1000 * 3600
    for task_id in (kept, expiring):
        os.utime(manager.save_dir / task_id, (old, old))
    ran = cleanup(manager, DeleteTaskAfter="120")
    assert ran.returncode == 0, ran.stderr
    assert kept in manager.task_dirs() and expiring not in manager.task_dirs()


# -- the forms' safety ---------------------------------------------------------------------


def test_cross_site_changes_are_refused_and_scripts_without_origin_pass(engineer, exports, manager):
    task_id = created(engineer.create(str(exports.import_ / "problem.tar.xz")))
    sentence = "This change was sent from another web site and is refused; make it from the task manager's own pages"
    for headers in ({"Origin": "https://evil.example"}, {"Referer": "https://evil.example/page"},
                    {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
        refused(engineer.post(f"/manager/{task_id}/caseno", data={"caseno": "1"}, headers=headers), 403, sentence)
    refused(engineer.get("/manager/problem.tar.xz/start", headers={"Sec-Fetch-Site": "cross-site"}), 403, sentence)
    same_site = engineer.post(f"/manager/{task_id}/caseno", data={"caseno": "2"}, headers={"Origin": manager.url})
    assert same_site.status_code == 200 and page_field(same_site.text, "Update case no.") == "2"
    engineer.wait_final(task_id)


def test_what_came_from_a_task_is_escaped_and_pages_carry_the_security_headers(engineer, exports):
    task_id = created(engineer.create(str(exports.import_ / "problem.tar.xz")))
    assert engineer.post(f"/manager/{task_id}/savenotes",
                         data={"notes": "</textarea><script>alert(1)</script>"}).status_code == 200
    answer = engineer.get(f"/manager/{task_id}")
    assert "<script>" not in answer.text and "&lt;/textarea&gt;&lt;script&gt;" in answer.text
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
    # The manager's forms send their Origin (checked above); elsewhere nothing leaks a referrer.
    assert answer.headers["Referrer-Policy"] == "same-origin"
    assert engineer.get("/stats").headers["Referrer-Policy"] == "no-referrer"
    engineer.wait_final(task_id)


def test_the_list_filters_by_status_case_and_text(engineer, exports):
    task_id = created(engineer.create(str(exports.import_ / "problem.tar.xz"), caseno="8675309"))
    engineer.wait_final(task_id)
    by_case = engineer.get("/manager", params={"case": "8675309"}).text
    assert f'href="/manager/{task_id}"' in by_case and "Tasks (1)" in by_case
    assert f'href="/manager/{task_id}"' in engineer.get("/manager", params={"q": task_id[2:7]}).text
    assert f'href="/manager/{task_id}"' not in engineer.get("/manager", params={"status": "failed"}).text
    assert f'href="/manager/{task_id}"' in engineer.get("/manager", params={"status": "finished"}).text
    refused(engineer.get("/manager", params={"case": "x1"}), 400, "'x1' is not a case number: use digits only")


# -- browser upload --------------------------------------------------------------------------


def test_a_browser_upload_streams_into_a_task(engineer, exports, problem_dir):
    with open(exports.import_ / "problem.tar.xz", "rb") as archive:
        answer = engineer.post("/manager/__upload__", data={"task_type": "coredump", "caseno": "12", "md5sum": "on"},
                               files={"file": ("problem.tar.xz", archive, "application/octet-stream")})
    task_id = created(answer)
    assert engineer.wait_final(task_id) == "Retrace job finished successfully"
    assert page_md5(engineer.page(task_id)) == exports.md5
    with open(problem_dir / "coredump", "rb") as core:
        answer = engineer.post("/manager/__upload__", data={"task_type": "coredump"},
                               files={"file": ("core", core, "application/octet-stream")})
    refused(answer, 403, "Required file 'executable' is missing")
    bare = {name: (problem_dir / name).read_text().strip() for name in ("executable", "package")}
    with open(problem_dir / "coredump", "rb") as core:
        answer = engineer.post("/manager/__upload__", data={"task_type": "coredump", **bare},
                               files={"file": ("core", core, "application/octet-stream")})
    assert engineer.wait_final(created(answer)) == "Retrace job finished successfully"
    refused(engineer.post("/manager/__upload__", data={"task_type": "coredump"}), 400,
            "Send the form as multipart/form-data (a browser form with enctype=\"multipart/form-data\")")



# -- a kernel vmcore ---------------------------------------------------------------------------


def test_a_bare_vmcore_on_the_server_is_retraced_with_crash(start_server, warm_kernels, vmcores, users, loopback,
                                                           work_dir):
    """A support engineer's day: the customer's kdump lies on a share; the manager retraces it in place."""
    share = world_readable_dir(work_dir / "manager-share")
    vmcore = share / "vmcore-customer-42"
    if not vmcore.exists():
        shutil.copyfile(vmcores.kdump, vmcore)
        vmcore.chmod(0o644)
    exports = types.SimpleNamespace(import_=share)
    server = start_server(repository=False, kernels_from=warm_kernels,
                          **manager_settings(users, exports, loopback, UseFTPTasks="0"))
    add_debian_repository(server, kernel_debs().dbg)
    engineer = Engineer(server, ENGINEER, ENGINEER_PASSWORD)
    task_id = created(engineer.create(str(vmcore), task_type="vmcore", caseno="42"))
    assert engineer.wait_final(task_id, timeout=600) == "Retrace job finished successfully"
    page = engineer.page(task_id)
    assert page_md5(page) == hashlib.md5(vmcore.read_bytes()).hexdigest()
    assert "<tr><th>Kernel:</th><td>6." in page and "VMcore retrace - interactive" in page
    for name in ("sys", "bt", "mod"):
        assert f'href="/manager/{task_id}/results/{name}"' in page
    assert "PANIC" in engineer.get(f"/manager/{task_id}/results/sys").text
    assert vmcore.exists(), "the customer's file stays where it was"


# -- in a browser ------------------------------------------------------------------------------


def test_an_engineer_works_a_task_in_chromium(manager, loopback):
    """Create from a URL, edit the case number, restart, delete: by hand, in headless Chromium, no JavaScript."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    with chromium(basic_auth=(ENGINEER, ENGINEER_PASSWORD)) as driver:
        def wait_final():
            deadline = time.monotonic() + 120
            while page_status(driver.page_source.replace("\r\n", "\n")) not in FINAL:
                assert time.monotonic() < deadline, driver.page_source
                time.sleep(0.3)
                driver.refresh()

        driver.get(manager.url + "/manager")
        assert driver.title.strip() == "Retrace Server task manager"
        form = driver.find_element(By.ID, "create-url")
        form.find_element(By.NAME, "custom_url").send_keys(f"{loopback.http.url}/problem.tar.xz")
        Select(form.find_element(By.NAME, "task_type")).select_by_value("coredump")
        form.find_element(By.NAME, "caseno").send_keys("2024")
        screenshot(driver, "manager-create.png")
        submit_and_wait(driver, form.find_element(By.CSS_SELECTOR, "button[type=submit]"))
        task_id = page_task_id(driver.page_source)
        assert driver.current_url == f"{manager.url}/manager/{task_id}", driver.page_source
        wait_final()
        field = driver.find_element(By.NAME, "caseno")
        assert field.get_attribute("value") == "2024"
        field.clear()
        field.send_keys("2025")
        submit_and_wait(driver, driver.find_element(By.CSS_SELECTOR, "input[value='Update case no.']"))
        assert driver.find_element(By.NAME, "caseno").get_attribute("value") == "2025"
        screenshot(driver, "manager-task.png")
        submit_and_wait(driver, driver.find_element(By.CSS_SELECTOR, "#restart button"))
        wait_final()
        assert page_status(driver.page_source) == "Retrace job finished successfully"
        driver.find_element(By.CSS_SELECTOR, "#delete input[name=sure]").click()
        submit_and_wait(driver, driver.find_element(By.CSS_SELECTOR, "#delete button"))
        assert driver.current_url == f"{manager.url}/manager"
        assert f'href="/manager/{task_id}"' not in driver.page_source
        screenshot(driver, "manager-list.png")
    assert task_id not in manager.task_dirs()


# -- the task index --------------------------------------------------------------------------

def test_the_list_follows_the_spool_through_a_lost_and_a_corrupt_index_and_tasks_made_by_hand(manager, engineer,
                                                                                            problem_dir):
    """The index is this host's memory of the spool: lost, it is read again; unreadable, it is set aside with a
    line in the server's log and read again (never a 500); a task an admin makes with mkdir is listed once
    cleanup's pass (or `retrace-server-cleanup --reindex`) has found it."""
    task_id, auth = submit(manager, problem_dir)
    assert wait_final(manager, task_id, auth).headers["X-Task-Status"] == "FINISHED_SUCCESS"
    assert f"/manager/{task_id}" in engineer.get(f"/manager?q={task_id}").text
    index = manager.root / "cache" / "tasks.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{index}{suffix}").unlink(missing_ok=True)
    assert f"/manager/{task_id}" in engineer.get(f"/manager?q={task_id}").text
    for suffix in ("-wal", "-shm"):
        Path(f"{index}{suffix}").unlink(missing_ok=True)
    index.write_bytes(b"not SQLite" * 1000)
    listed = engineer.get(f"/manager?q={task_id}")
    assert listed.status_code == 200 and f"/manager/{task_id}" in listed.text
    assert "the task index" in manager.error_log() and "is unreadable" in manager.error_log()
    by_hand = manager.save_dir / "987654321"
    shutil.copytree(manager.save_dir / task_id, by_hand)
    (by_hand / "status").unlink()  # queued, as upstream's tools leave a task they made
    owner = (manager.save_dir / task_id).stat()
    subprocess.run(["chown", "-R", f"{owner.st_uid}:{owner.st_gid}", str(by_hand)], check=True)  # the service user
    reindexed = cleanup(manager, "--reindex")
    assert reindexed.returncode == 0 and "tasks not yet ended: 1 markers added" in reindexed.stdout + reindexed.stderr
    assert "/manager/987654321" in engineer.get("/manager?status=queued&q=987654321").text


def test_what_customers_send_a_problem_tar_in_a_7z_in_a_zip_and_a_bzip2_core_are_imported(engineer, loopback, exports,
                                                                                           problem_dir, tmp_path):
    """Made by the real 7z, zip and bzip2, served by the loopback web server, imported through the manager."""
    work = world_readable_dir(tmp_path / "customer")
    (work / "problem.tar.xz").write_bytes((exports.http / "problem.tar.xz").read_bytes())
    subprocess.run(["7z", "a", "-bd", "case.7z", "problem.tar.xz"], cwd=work, check=True, capture_output=True)
    subprocess.run(["zip", "-q", "case-4242.zip", "case.7z"], cwd=work, check=True)
    shutil.copy(work / "case-4242.zip", exports.http / "case-4242.zip")
    (exports.http / "case-4242.zip").chmod(0o644)
    task_id = created(engineer.create(f"{loopback.http.url}/case-4242.zip"))
    assert engineer.wait_final(task_id) == "Retrace job finished successfully"
    assert "crash_in_library (depth=0" in engineer.get(f"/manager/{task_id}/backtrace").text
    core = work / "coredump"
    shutil.copy(problem_dir / "coredump", core)
    subprocess.run(["bzip2", str(core)], check=True)
    shutil.copy(work / "coredump.bz2", exports.http / "core.bz2")
    (exports.http / "core.bz2").chmod(0o644)
    bare = {name: (problem_dir / name).read_text().strip() for name in ("executable", "package")}
    task_id = created(engineer.create(f"{loopback.http.url}/core.bz2", **bare))
    assert engineer.wait_final(task_id) == "Retrace job finished successfully"
    (exports.http / "notes.zip").write_bytes((work / "case-4242.zip").read_bytes()[:200])  # cut short
    (exports.http / "notes.zip").chmod(0o644)
    task_id = created(engineer.create(f"{loopback.http.url}/notes.zip"))
    assert engineer.wait_final(task_id) == "Retrace job failed"
    said = engineer.get(f"/manager/{task_id}/log").text
    assert "The zip file could not be read" in said and str(engineer.server.save_dir) not in said
