"""``Dispatcher = celery``: tasks published to RabbitMQ, retraced by workers on many hosts.

The spool stays the single source of truth (``SaveDir`` is shared storage:
NFS v4.1+ or CephFS); the broker only carries task ids.  The settings are
the ones ../shared/docs/scale-out-feasibility.md measured to lose nothing:

* late acknowledgement, requeue when a worker process dies, one message
  per worker process at a time, and long tasks cancelled when a host loses
  the broker (the broker requeues them after the heartbeat);
* quorum queues (one per architecture, so an aarch64 host takes aarch64
  tasks) with a delivery limit: a task whose worker dies every time is
  dead-lettered to ``retrace.dead``, where it ends FINISHED_FAILURE;
* persistent messages and publisher confirms: a task whose publication
  failed (broker down) stays queued in the spool, unmarked, and the next
  upload or cleanup run publishes it.

At-least-once delivery is made safe by the task's worker lock and final
status: a delivery for a finished task, or one whose worker is alive
elsewhere, does nothing.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from retrace_server.arch import HOST_ARCH
from retrace_server.elf import core_arch
from retrace_server.errors import RetraceError
from retrace_server.files import write_atomically

if TYPE_CHECKING:
    from collections.abc import Iterable

    import celery
    import kombu

    from retrace_server.config import Config
    from retrace_server.tasks.task import Task

log = logging.getLogger(__name__)

TASK_NAME = "retrace.run"
DEAD_QUEUE = "retrace.dead"
PUBLISHED = "published"
_PUBLISH_TIMEOUT = 10


def queue_name(arch: str) -> str:
    return f"retrace.{arch}"


def _queue(name: str, config: Config, dead: bool = False) -> kombu.Queue:
    from kombu import Queue

    arguments: dict[str, str | int] = {"x-queue-type": "quorum"}
    if not dead:
        arguments.update({"x-delivery-limit": config.DeliveryLimit, "x-dead-letter-exchange": "",
                          "x-dead-letter-routing-key": DEAD_QUEUE})
    return Queue(name, routing_key=name, queue_arguments=arguments, durable=True)


def make_app(config: Config) -> celery.Celery:
    from celery import Celery

    app = Celery("retrace", broker=config.BrokerURL, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_heartbeat=config.BrokerHeartbeat,
        broker_connection_timeout=_PUBLISH_TIMEOUT,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"confirm_publish": True},
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
    )
    return app


def crash_arch(task: Task) -> str:
    """The architecture queue a task goes to: its core's, else this host's."""
    try:
        return core_arch(task.crash_dir / "coredump")
    except (RetraceError, OSError):
        return HOST_ARCH


def is_published(task: Task) -> bool:
    return (task.path / PUBLISHED).exists()


def publish(config: Config, task: Task) -> bool:
    """Put ``task`` on its architecture's queue; False (and the task stays unmarked) if the broker is away."""
    arch = crash_arch(task)
    app = make_app(config)
    from amqp.exceptions import AMQPError
    from kombu.exceptions import KombuError

    try:
        with app.connection_for_write() as connection:
            # Fail in ~2 s when the broker is away (send_task alone keeps retrying ~12 s).
            connection.ensure_connection(max_retries=1)
            app.send_task(TASK_NAME, args=[task.task_id], task_id=task.task_id, queue=_queue(queue_name(arch), config),
                          connection=connection, retry=False, declare=[_queue(queue_name(arch), config)])
    except (KombuError, AMQPError, OSError) as err:
        log.warning("task %s not published (it stays queued and is published later): %s", task.task_id, err)
        return False
    write_atomically(task.path / PUBLISHED, arch)
    return True


def worker_queues(config: Config, arches: Iterable[str]) -> list[kombu.Queue]:
    return [_queue(queue_name(arch), config) for arch in arches] + [_queue(DEAD_QUEUE, config, dead=True)]
