"""kombu's in-memory transport for the embedded mode, waking its consumer when a message arrives.

kombu's own polls: its consumer looks at its queues every `polling_interval` and sleeps in between, so a job
waits up to that interval before the worker sees it, and an idle server wakes 1 / interval times a second to find
nothing (at 10 ms: 2-3 % of a core, all the time, on a laptop too). Here a put notifies a condition that the
consumer waits on; the polling interval (kombu's default second) is only a backstop.

Set with Celery's `broker_transport` (CELERY_BROKER_TRANSPORT in config/settings.py); the URL stays memory://.
"""

from __future__ import annotations

import threading
import time
from queue import Empty

from kombu.transport import memory

_arrivals = threading.Condition()
_arrived = 0  # messages put so far (a counter, not a flag: no consumer can take another's wake-up)


def _notify() -> None:
    global _arrived
    with _arrivals:
        _arrived += 1
        _arrivals.notify_all()


class Channel(memory.Channel):
    def _put(self, queue, message, **kwargs):
        super()._put(queue, message, **kwargs)
        _notify()

    def _put_fanout(self, exchange, message, routing_key=None, **kwargs):
        super()._put_fanout(exchange, message, routing_key, **kwargs)
        _notify()


class Transport(memory.Transport):
    Channel = Channel

    def drain_events(self, connection, timeout=None):
        """Deliver one message; wait for one to be put (at most `timeout`, then TimeoutError: socket.timeout, as kombu's)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with _arrivals:
                seen = _arrived
            try:
                self.cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                pass
            wait = self.polling_interval
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError  # socket.timeout, as kombu raises
                wait = left if wait is None else min(wait, left)
            with _arrivals:
                _arrivals.wait_for(lambda seen=seen: _arrived != seen, wait)
