"""The debugger session a job writes down for retrace-server-interact."""

from retrace_server.environments.session import SESSION_FILE, Session


class _Task:
    def __init__(self, path):
        self.path = path


def test_a_session_is_read_back_as_the_job_wrote_it(tmp_path):
    session = Session("gdb", ("/usr/bin/gdb", "-q", "-nx"), ("/cache/rpms", "/spool/1/crash/coredump"),
                      (("/spool/1/crash/coredump", "the coredump"),), None)
    session.save(_Task(tmp_path))
    assert Session.load(_Task(tmp_path)) == session


def test_a_task_without_or_with_a_damaged_session_file_has_none(tmp_path):
    assert Session.load(_Task(tmp_path)) is None
    (tmp_path / SESSION_FILE).write_text('{"debugger": "gdb"')
    assert Session.load(_Task(tmp_path)) is None
