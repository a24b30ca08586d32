"""The embedded mode's in-memory broker (config/memory_broker.py): the worker's consumer sleeps until a message
arrives instead of polling, and still hands each message to one consumer, in order."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue

BACKSTOP_SECONDS = 30  # the polling interval: a consumer that relied on it would wait this long


@pytest.fixture
def queue():
    name = f"test-{time.monotonic_ns()}"
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def connection() -> Connection:
    return Connection("memory://", transport="config.memory_broker:Transport",
                      transport_options={"polling_interval": BACKSTOP_SECONDS})


def test_it_wakes_a_waiting_consumer_as_soon_as_a_message_is_put(queue):
    received: list = []
    def put_later(producing: Connection):
        time.sleep(0.3)
        Producer(producing).publish({"job": 1}, exchange=queue.exchange, routing_key=queue.routing_key,
                                    declare=[queue])

    with (connection() as consuming, connection() as producing,
          Consumer(consuming, [queue], callbacks=[lambda body, message: (received.append(body), message.ack())])):
        threading.Thread(target=put_later, args=(producing,), daemon=True).start()
        began = time.monotonic()
        consuming.drain_events(timeout=BACKSTOP_SECONDS - 5)
        waited = time.monotonic() - began
    assert received == [{"job": 1}]
    assert waited < 10  # woken by the put, not by the backstop poll 30 s later


def test_it_times_out_like_kombus_own_when_nothing_comes(queue):
    with connection() as consuming, Consumer(consuming, [queue], callbacks=[]), pytest.raises(socket.timeout):
        consuming.drain_events(timeout=0.2)


def test_it_delivers_messages_put_before_the_wait_in_order(queue):
    received: list = []
    with connection() as consuming, connection() as producing:
        for n in range(3):
            Producer(producing).publish({"job": n}, exchange=queue.exchange, routing_key=queue.routing_key,
                                        declare=[queue])
        with Consumer(consuming, [queue], callbacks=[lambda body, message: (received.append(body), message.ack())]):
            for _ in range(3):
                consuming.drain_events(timeout=5)
    assert received == [{"job": 0}, {"job": 1}, {"job": 2}]
