import time

from retrace_server.config import Config
from retrace_server.tasks.celeryapp import DEAD_QUEUE, is_published, publish, queue_name, worker_queues
from retrace_server.tasks.dispatch import fail_if_worker_died
from retrace_server.tasks.task import IncomingTask, TaskStatus, TaskType
from testkit.synthetic_core import synthetic_core


def test_each_architecture_has_a_quorum_queue_with_a_delivery_limit_into_the_dead_letter_queue():
    queues = {queue.name: queue for queue in worker_queues(Config(DeliveryLimit=5), ["x86_64", "aarch64"])}
    assert set(queues) == {queue_name("x86_64"), queue_name("aarch64"), DEAD_QUEUE}
    assert queues["retrace.aarch64"].queue_arguments == {
        "x-queue-type": "quorum", "x-delivery-limit": 5, "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": DEAD_QUEUE,
    }
    assert queues[DEAD_QUEUE].queue_arguments == {"x-queue-type": "quorum"}


def queued_task(tmp_path):
    with IncomingTask(tmp_path) as incoming:
        (incoming.crash_dir / "coredump").write_bytes(synthetic_core())
        task, _ = incoming.commit(TaskType.COREDUMP, id_length=9, password_length=32)
    return task


def test_publishing_while_the_broker_is_down_fails_fast_and_leaves_the_task_unmarked(tmp_path):
    config = Config(SaveDir=tmp_path, Dispatcher="celery", BrokerURL="amqp://retrace:x@127.0.0.1:1/retrace")
    task = queued_task(tmp_path)
    started = time.monotonic()
    assert publish(config, task) is False
    assert time.monotonic() - started < 15
    assert not is_published(task) and task.status is None


def test_with_celery_the_broker_not_the_status_poll_handles_a_dead_worker(tmp_path):
    task = queued_task(tmp_path)
    task.set_status(TaskStatus.BACKTRACE)
    assert not fail_if_worker_died(task, Config(SaveDir=tmp_path, Dispatcher="celery"))
    assert task.status == TaskStatus.BACKTRACE
