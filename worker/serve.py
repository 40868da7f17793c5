"""``retrace-server-worker --serve``: a Celery worker host (``Dispatcher = celery``).

Each delivery is a task id.  It runs the same claim and pipeline as a
locally started worker, in the Celery child process, with this host's own
package cache (``CacheDir`` of this host's config).  A delivery for a task
that has finished, or that a live worker (here or on another host) holds,
does nothing; one for a task whose previous worker died starts it again
from its crash data.  A delivery from the dead-letter queue means the
delivery limit was reached: the task ends FINISHED_FAILURE with that reason.
"""
from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any

from retrace_server.errors import NotFound
from retrace_server.tasks.celeryapp import DEAD_QUEUE, TASK_NAME, make_app, worker_queues
from retrace_server.tasks.dispatch import end_failed
from retrace_server.tasks.task import Task

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from pathlib import Path

    from retrace_server.config import Config


def retrace_delivery(config: Config, task_id: str, host: str, dead_lettered: bool,
                     run_claimed: Callable[[Task, str], str]) -> str:
    """Handle one delivery of ``task_id``; what happened, for the host's log."""
    try:
        task = Task.open(config.SaveDir, task_id, config.TaskIdLength)
    except NotFound:
        return "gone (deleted)"
    status = task.status
    if status is not None and status.is_final:
        return "already finished (a repeated delivery)"
    if dead_lettered:
        end_failed(config, task, f"the retrace worker died {config.DeliveryLimit + 1} times on this task; "
                   "it is not tried again", "worker died repeatedly")
        return "failed: delivery limit reached"
    return run_claimed(task, host)


def serve(config: Config, config_path: Path, hostname: str | None, concurrency: int, arches: Iterable[str],
          run_claimed: Callable[[Task, str], str]) -> None:
    """Run the Celery worker until it is stopped; ``run_claimed(task, host)`` retraces one task."""
    app = make_app(config)
    host = hostname or socket.gethostname()

    def retrace(self: Any, task_id: str) -> str:
        dead = (self.request.delivery_info or {}).get("routing_key") == DEAD_QUEUE
        return retrace_delivery(config, task_id, host, dead, run_claimed)

    app.task(name=TASK_NAME, bind=True)(retrace)

    app.conf.task_queues = worker_queues(config, arches)
    os.environ.setdefault("RETRACE_SERVER_CONFIG_PATH", str(config_path))
    app.worker_main([
        "worker", "-n", f"{host}@retrace", "-c", str(concurrency), "-Q", ",".join(q.name for q in app.conf.task_queues),
        "--without-gossip", "--without-mingle", "-l", "info",
    ])

