"""E-mail when a manager task ends (``EmailNotify``), to the addresses kept on the task.

Support engineers start a vmcore retrace that runs for an hour and go on
with their day; the mail tells them it ended, how, and where to look.  It
goes through ``SMTPServer`` (a local MTA by default) without
authentication; a dead or refusing server costs a line in the task log and
the admin's log, never the task.
"""
from __future__ import annotations

import smtplib
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import TYPE_CHECKING

from retrace_server.tasks.casedata import CaseData

if TYPE_CHECKING:
    from logging import Logger

    from retrace_server.config import Config
    from retrace_server.tasks.task import Task

_TIMEOUT = 30


def compose(config: Config, task: Task, succeeded: bool, reason: str | None) -> EmailMessage | None:
    """The message for the task's end, or None when nobody is to be told."""
    data = CaseData.read(task)
    if not config.EmailNotify or not data.notify:
        return None
    outcome = "finished successfully" if succeeded else "failed"
    message = EmailMessage()
    message["Subject"] = f"Retrace Server task #{task.task_id} {outcome}" + (
        f" (case {data.caseno})" if data.caseno else "")
    message["From"] = config.EmailNotifyFrom
    message["To"] = ", ".join(data.notify)
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain=config.EmailNotifyFrom.rpartition("@")[2] or None)
    lines = [f"Retrace Server task #{task.task_id} {outcome}."]
    if reason:
        lines += ["", f"Why it failed: {reason}"]
    if data.caseno:
        lines += ["", f"Case number: {data.caseno}"]
    if data.url:
        lines += ["", f"Task: {data.url}", f"Log: {data.url}/log"]
        if succeeded:
            lines.append(f"Backtrace: {data.url}/backtrace")
    message.set_content("\n".join(lines) + "\n")
    return message


def send_end_mail(config: Config, task: Task, succeeded: bool, reason: str | None, log: Logger,
                  admin_log: Logger) -> None:
    """Mail the task's addresses that it ended; failures to send are logged only."""
    message = compose(config, task, succeeded, reason)
    if message is None:
        return
    host, port = config.smtp_address
    try:
        with smtplib.SMTP(host, port, timeout=_TIMEOUT) as smtp:
            smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as err:
        log.warning("The e-mail to %s was not sent: the mail server %s:%d %s", message["To"], host, port,
                    _why(err))
        admin_log.error("task %s: e-mail to %s not sent through %s:%d: %s", task.task_id, message["To"], host,
                        port, err)
        return
    log.info("E-mail sent to %s", message["To"])


def _why(err: Exception) -> str:
    if isinstance(err, ConnectionRefusedError):
        return "refused the connection"
    if isinstance(err, smtplib.SMTPRecipientsRefused):
        return "refused the recipients"
    if isinstance(err, TimeoutError):
        return "did not answer in time"
    return f"failed ({type(err).__name__})"
