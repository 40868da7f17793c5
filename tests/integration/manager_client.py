"""The requests upstream's ``retrace-server-task`` sends to ``/manager``, and how it reads the answers.

Written from watching that CLI run against this server (see the README's
"Support teams"): form posts whose answers it follows to the task page,
then line rules on that page.  The tests use this to hold the pages to
what the CLI parses.
"""

import time

import requests

FINAL = ("Retrace job finished successfully", "Retrace job failed")
# The htpasswd users of the `users` fixture (tests/integration/conftest.py).
ENGINEER, ENGINEER_PASSWORD = "engineer", "correct_horse_battery"
READER, READER_PASSWORD = "reader", "staple"
# The FTP drop's customer account (the `loopback` fixture).
DROP_USER, DROP_PASSWORD = "customer", "drop-secret"


def manager_settings(users, exports, loopback, **settings):
    """A server's settings for the task manager over the `exports` and `loopback` fixtures."""
    return {"AllowTaskManager": "1", "ManagerUserFile": str(users), "ImportDirs": str(exports.import_),
            "UseFTPTasks": "1", "FTPHost": loopback.ftp.host, "FTPUser": DROP_USER, "FTPPass": DROP_PASSWORD,
            "EmailNotify": "1", "SMTPServer": loopback.mail.address, "EmailNotifyFrom": "retrace@example.com",
            "TaskManagerAuthDelete": "1", "TaskManagerDeleteUsers": ENGINEER,
            "CaseNumberURL": "https://crm.example.com/case/{caseno}", **settings}


def created(answer):
    """The task id of a create whose answer (after the redirect) is the new task's page."""
    assert answer.status_code == 200, answer.text
    assert answer.history and answer.history[0].status_code == 303
    task_id = page_task_id(answer.text)
    assert task_id.isdigit(), answer.text[:300]
    return task_id


def refused(answer, status, sentence):
    assert (answer.status_code, answer.text) == (status, sentence), (answer.status_code, answer.text)


class Engineer:
    """A support engineer's session: Basic authentication as the CLI gets it from ~/.netrc."""

    def __init__(self, server, user, password):
        self.server = server
        self.session = requests.Session()
        self.session.auth = (user, password) if user else None

    def get(self, path, **kwargs):
        return self.session.get(self.server.url + path, verify=str(self.server.cert), timeout=60, **kwargs)

    def post(self, path, **kwargs):
        return self.session.post(self.server.url + path, verify=str(self.server.cert), timeout=120, **kwargs)

    # -- what the CLI sends --------------------------------------------------------

    def create(self, url, task_type="coredump", md5=True, **fields):
        """``create -m``: the URL or server path in ``custom_url``; the answer is the new task's page."""
        form = {"custom_url": url, "md5sum": "on" if md5 else "off", "task_type": task_type, **fields}
        return self.post("/manager/__custom__", data=form)

    def start_from_drop(self, name, task_type="coredump", md5=True, **fields):
        """``create -f``: a GET of the drop file's ``start`` URL with the options as query parameters."""
        params = {"md5sum": "on" if md5 else "off", "task_type": task_type, **fields}
        return self.get(f"/manager/{name}/start", params=params)

    def set_field(self, task_id, field, value):
        """``set -c`` / ``-e`` / ``-bz``: posts to ``caseno``, ``notify`` or ``bugzillano``."""
        return self.post(f"/manager/{task_id}/{field}", data={field: value})

    def restart(self, task_id, **fields):
        return self.post(f"/manager/{task_id}/restart", data=fields)

    def page(self, task_id):
        answer = self.get(f"/manager/{task_id}")
        assert answer.status_code == 200, answer.text
        return answer.text

    def wait_final(self, task_id, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = page_status(self.page(task_id))
            if status in FINAL:
                return status
            time.sleep(0.2)
        raise AssertionError(f"task {task_id} did not end: {status}")


# -- how the CLI reads the page ----------------------------------------------------------


def page_task_id(text):
    """The second word of the line holding ``<title>Task #``, without its ``#``."""
    for line in text.split("\n"):
        if "<title>Task #" in line:
            return line.split()[1][1:]
    return "unknown"


def page_status(text):
    """The line after the one holding ``<th>Status:</th>``, stripped, less its first 4 and last 5 characters."""
    lines = text.split("\n")
    for number, line in enumerate(lines):
        if "<th>Status:</th>" in line:
            return lines[number + 1].strip()[4:-5]
    return "unknown"


def page_md5(text):
    """Everything after ``<td>`` on the line holding ``<th>Md5sum:</th>``."""
    for line in text.split("\n"):
        if "<th>Md5sum:</th>" in line:
            return line[line.find("<td>") + 4:]
    return None


def page_field(text, button):
    """The first ``value="..."`` on the line holding ``button`` (e.g. ``Update case no.``); None when it is the
    button's own label, which is how the CLI learns that nothing is set."""
    for line in text.split("\n"):
        if button in line:
            start = line.find("value=") + 7
            value = line[start:line.find('"', start)]
            return None if value == button else value
    raise AssertionError(f"no line with {button!r} in the page")
