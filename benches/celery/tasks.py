"""The same job as octopods-worker's, the Celery way: a task per send job that
POSTs the interactive message (X-Octopods-Auth), builds the `sent` event and
publishes it persistent, with a publisher confirm, to a quorum results queue;
the task is acked after it returns (acks_late). Run by run.py."""

import datetime
import json
import os

import requests
from celery import Celery
from kombu import Connection, Exchange, Queue

BROKER = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
PEER = os.environ.get("PEER", "http://127.0.0.1:18099")
PREFIX = os.environ.get("CELERY_BENCH_PREFIX", "celery-bench")

app = Celery("tasks", broker=BROKER)
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=64,
    task_default_queue=f"{PREFIX}.jobs",
    task_queues=[Queue(f"{PREFIX}.jobs", queue_arguments={"x-queue-type": "quorum"})],
    broker_transport_options={"confirm_publish": True},
    worker_hijack_root_logger=False,
    task_serializer="json",
    accept_content=["json"],
)

_session = requests.Session()
_results = None


def results():
    """One confirming producer per worker process."""
    global _results
    if _results is None:
        conn = Connection(BROKER, transport_options={"confirm_publish": True})
        queue = Queue(f"{PREFIX}.results", Exchange(""), routing_key=f"{PREFIX}.results",
                      queue_arguments={"x-queue-type": "quorum"})
        _results = (conn.Producer(), queue)
    return _results


@app.task(name="send", bind=True, max_retries=8)
def send(self, job):
    body = {"phone_number": job["destination_phone"], **job["waba_interactive_message"]}
    r = _session.post(f"{PEER}/api/v1/whatsapp/interactive", json=body,
                      headers={"X-Octopods-Auth": "bench-key"}, timeout=10)
    r.raise_for_status()
    answer = r.json()
    event = {
        "event": "sent", "job_id": job["job_id"], "channel": "fast",
        "message_id": answer["message_id"], "channel_message_id": answer["channel_message_id"],
        "request_id": answer["request_id"], "message_status_url": answer["message_status_url"],
        "phone_number": answer["phone_number"], "attempts": self.request.retries + 1,
        "sent_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
        "via": "interactive", "metadata": job.get("metadata"),
    }
    producer, queue = results()
    producer.publish(json.dumps(event), exchange="", routing_key=queue.name, declare=[queue],
                     delivery_mode=2, content_type="application/json", retry=True)
