"""The Celery app. Tasks live in inference.tasks; settings come from Django's CELERY_* names."""

import logging
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
log = logging.getLogger(__name__)


def survive_a_lost_broker_connection() -> None:
    """Keep a worker alive through a Redis outage (kombu 5.7's Redis transport would stop it).

    When the connection drops while messages are unacknowledged (acks_late: one per running job), kombu closes
    the old channel by restoring them through that channel's connection, which is gone: AttributeError,
    "Unrecoverable error", and the worker shuts down; acking a message of the old channel later fails the same
    way. A message is only a wake-up here (the job table is the queue, inference/leases.py), so one that cannot
    be restored or acked now is left in Redis: its visibility timeout brings it back later, a worker that gets it
    finds nothing to claim, and `wake_queued` re-sends any job left queued without a message sooner.
    """
    from kombu.transport import redis as kombu_redis

    qos = kombu_redis.QoS
    if getattr(qos, "_hearth_tolerant", False):
        return
    restore_unacked, ack = qos.restore_unacked, qos.ack

    def tolerant_restore_unacked(self, client=None):
        try:
            return restore_unacked(self, client)
        except AttributeError:
            log.warning("broker connection lost: %d unacknowledged message(s) left for Redis to restore later",
                        len(self._delivered))
            self._delivered.clear()
            return None

    def tolerant_ack(self, delivery_tag):
        try:
            return ack(self, delivery_tag)
        except AttributeError:
            log.warning("broker connection lost: a message of the old connection stays unacknowledged")
            return None

    qos.restore_unacked, qos.ack, qos._hearth_tolerant = tolerant_restore_unacked, tolerant_ack, True


survive_a_lost_broker_connection()
app = Celery("hearth")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["inference"])
