"""Publish a delivery-confirmation job to octopods-worker.

    pip install -r requirements.txt
    python publish.py --channel store-eu --order 1234 --phone +15551234567

The job goes to the `octopods.jobs` exchange with the channel as routing key,
persistent, with publisher confirms: when this script prints the job id, the
broker has the job on disk. AMQP_URL overrides the broker address.
"""
import argparse
import json
import os
import secrets
import sys
import time

import pika


def delivery_confirmation(order_id: str, phone: str, channel: str) -> dict:
    return {
        "job_id": f"order-{order_id}/delivery-confirm",
        "destination_phone": phone,
        "waba_interactive_message": {
            "type": "button",
            "body": {"text": f"Did your order #{order_id} arrive today?"},
            "action": {"buttons": [
                {"type": "reply", "reply": {"id": "yes", "title": "Yes, received"}},
                {"type": "reply", "reply": {"id": "not-yet", "title": "Not yet"}},
                {"type": "reply", "reply": {"id": "problem", "title": "There's a problem"}},
            ]},
        },
        "open_intercom_conversation": True,
        "channel": channel,
        "metadata": {"order_id": order_id},
    }


def traceparent() -> str:
    """The order service's trace context: TRACEPARENT if set, else a new trace."""
    return os.environ.get("TRACEPARENT") or f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--channel", default="store-eu")
    p.add_argument("--order", default="1234")
    p.add_argument("--phone", default="+15551234567")
    p.add_argument("--prefix", default="octopods")
    p.add_argument("--wait", type=float, metavar="SECONDS",
                   help="then wait this long for the job's result event and print it (exit 1 if none)")
    args = p.parse_args()

    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    job = delivery_confirmation(args.order, args.phone, args.channel)
    if args.wait:
        # A private queue (exclusive, gone when we disconnect), bound before
        # publishing: it gets copies of the channel's events, so acking other
        # jobs' events here takes nothing from the shop's results queue.
        private = channel.queue_declare(queue="", exclusive=True, auto_delete=True).method.queue
        channel.queue_bind(queue=private, exchange=f"{args.prefix}.results", routing_key=f"*.{args.channel}")
    channel.confirm_delivery()  # basic_publish now raises unless the broker confirms
    try:
        channel.basic_publish(
            exchange=f"{args.prefix}.jobs",
            routing_key=args.channel,  # routing key = channel name
            body=json.dumps(job).encode(),
            properties=pika.BasicProperties(
                content_type="application/json",
                delivery_mode=pika.DeliveryMode.Persistent,
                correlation_id=job["job_id"],
                # The worker measures queue wait (octopods_job_queue_wait_seconds)
                # from the timestamp; message_id identifies the message in tools.
                message_id=job["job_id"],
                timestamp=int(time.time()),
                # W3C trace context: the worker continues this trace (with
                # OpenTelemetry, `opentelemetry.propagate.inject(headers)` fills it).
                headers={"traceparent": traceparent()},
            ),
            mandatory=True,
        )
    except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as e:
        print(f"the broker did not take the job: {e}", file=sys.stderr)
        connection.close()
        return 1
    print(job["job_id"])
    if not args.wait:
        connection.close()
        return 0
    channel.basic_qos(prefetch_count=50)
    deadline = time.monotonic() + args.wait
    # Consume with a timeout: no polling loop around basic_get.
    for method, _properties, body in channel.consume(private, inactivity_timeout=1.0):
        if method is not None:
            event = json.loads(body)
            channel.basic_ack(method.delivery_tag)
            if event.get("job_id") == job["job_id"]:
                print(json.dumps(event))
                connection.close()
                return 0
        if time.monotonic() > deadline:
            break
    connection.close()
    print(f"no event for {job['job_id']} within {args.wait} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
