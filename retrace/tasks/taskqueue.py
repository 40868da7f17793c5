"""Task slots: how many tasks run, how many wait, and who may upload now.

The server holds at most ``MaxParallelTasks`` running plus ``MaxQueuedTasks``
waiting tasks; an upload in flight already holds a slot (as upstream, where
the task directory existed during the upload).  ``/settings`` reports the
same numbers, so an ABRT client refuses exactly when ``/create`` would
answer 503 (see README, "Capacity").
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING

from retrace_server import locking
from retrace_server.errors import QueueFull, TooManyUploads
from retrace_server.tasks.task import WORKER_HOST, IncomingTask, Task, active_tasks, count_live_uploads, worker_alive

if TYPE_CHECKING:
    from collections.abc import Iterator

    from retrace_server.config import Config

_ADMISSION_LOCK = ".admission.lock"
# What a client told to wait is asked to wait (Retry-After): about one short retrace.
RETRY_AFTER_SECONDS = 30


@dataclasses.dataclass(frozen=True)
class Occupancy:
    running: int
    queued: int
    uploading: int

    @property
    def total(self) -> int:
        return self.running + self.queued + self.uploading


def occupancy(config: Config) -> Occupancy:
    """Count the spool's running, queued and uploading tasks right now (from the tasks not yet ended: the
    cost follows the work in progress, not the tasks kept).

    Uploads are counted before tasks: an upload that is committed (renamed
    from ``.incoming/`` into the spool) between the two scans is then
    counted twice, never zero times, so admission can err only on the safe
    side.  A started task counts as running only while its worker holds its
    lock: after a power loss the dead ones free their slots at once, before
    anyone has ended them (with Celery a dead worker's task waits for its
    redelivery and keeps its slot).
    """
    uploading = count_live_uploads(config.SaveDir)
    running = queued = 0
    for task in active_tasks(config.SaveDir, config.TaskIdLength):
        status = task.status
        if status is None:
            queued += 1
        elif not status.is_final and (config.Dispatcher == "celery" or worker_alive(task)):
            running += 1
    return Occupancy(running, queued, uploading)


def running_by_host(config: Config) -> dict[str, int]:
    """``{host: running tasks}`` (Dispatcher = celery: the host whose worker holds each task).

    A started task whose worker lock is free is not counted: its worker died
    and the broker is about to deliver it again, perhaps to another host.
    """
    hosts: dict[str, int] = {}
    for task in active_tasks(config.SaveDir, config.TaskIdLength):
        status = task.status
        if status is not None and not status.is_final and worker_alive(task):
            host = task.read_text(WORKER_HOST, 256) or "local"
            hosts[host.strip()] = hosts.get(host.strip(), 0) + 1
    return hosts


def queued_tasks(config: Config) -> list[Task]:
    """Tasks waiting for a worker, oldest first."""
    waiting = [task for task in active_tasks(config.SaveDir, config.TaskIdLength) if task.status is None]
    return sorted(waiting, key=lambda task: (task.timestamp("queued_time") or 0, task.task_id))


def queue_position(task: Task, config: Config) -> int | None:
    """1-based place of ``task`` among the waiting tasks (None if not waiting)."""
    for position, waiting in enumerate(queued_tasks(config), start=1):
        if waiting.task_id == task.task_id:
            return position
    return None


def waiting_from(config: Config, client: str | None) -> int:
    """Tasks from ``client`` (an address) that wait for a worker or are being uploaded."""
    queued = sum(1 for task in active_tasks(config.SaveDir, config.TaskIdLength)
                 if task.status is None and task.client_address == client)
    return queued + count_live_uploads(config.SaveDir, client)


@contextlib.contextmanager
def admitted_upload(config: Config, client: str | None, limit_queued: bool = False) -> Iterator[IncomingTask]:
    """An IncomingTask holding a free slot, or QueueFull (TooManyUploads when ``client`` has its share).

    Counting and reserving happen under one lock, so concurrent uploads
    cannot together take more slots than there are, nor one client (an
    address) more than MaxUploadsPerClient of them: slow uploads from one
    place cannot hold every slot.  With ``limit_queued`` (anonymous
    uploads) one address may also have at most MaxQueuedPerClient tasks
    waiting, so that it cannot fill the queue in seconds.
    """
    with locking.exclusive(config.SaveDir / _ADMISSION_LOCK):
        if occupancy(config).total >= config.task_slots:
            raise QueueFull("Retrace server is fully loaded at the moment; try again in a few minutes")
        own = count_live_uploads(config.SaveDir, client)
        if own >= config.MaxUploadsPerClient:
            raise TooManyUploads(f"You have {own} uploads in progress; this server takes at most "
                                 f"{config.MaxUploadsPerClient} at once from one address, try again when one ends")
        if limit_queued and (waiting := waiting_from(config, client)) >= config.MaxQueuedPerClient:
            raise TooManyUploads(f"You have {waiting} tasks waiting for a worker; this server queues at most "
                                 f"{config.MaxQueuedPerClient} from one address, try again when one has started",
                                 retry_after=RETRY_AFTER_SECONDS)
        incoming = IncomingTask(config.SaveDir, client)
    with incoming:
        yield incoming
