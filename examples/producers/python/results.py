"""The shop's consumer of octopods-worker result events.

    python results.py                 # handle events until Ctrl-C
    python results.py --idle-exit 5   # ... or until 5 s without an event

Declares a durable quorum queue (default `shop.delivery-events`) bound to the
`octopods.results` topic exchange (routing keys `<event>.<channel>`: `sent.#`
for sends only, `dead_lettered.#` for failures, `#` for all), takes up to
`--prefetch` events at a time, and acks each one only after `handle()` has
dealt with it: an event whose handling fails goes back to the queue
(requeued), so no event is acked unhandled. To wait for one job's event, use
`publish.py --wait`, which reads copies on a private queue.
"""
import argparse
import json
import os
import sys
import time

import pika


def handle(event: dict) -> None:
    """Record the event where the shop keeps delivery prompts (here: stdout)."""
    if event["event"] == "sent":
        print(f"{event['job_id']}: sent, message_id={event['message_id']} "
              f"channel_message_id={event.get('channel_message_id')}", file=sys.stderr)
    print(json.dumps(event), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prefix", default="octopods")
    p.add_argument("--queue", default="shop.delivery-events")
    p.add_argument("--binding", default="#")
    p.add_argument("--prefetch", type=int, default=50)
    p.add_argument("--idle-exit", type=float, metavar="SECONDS",
                   help="exit after this long without an event (default: run until Ctrl-C)")
    args = p.parse_args()

    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.queue_declare(queue=args.queue, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(queue=args.queue, exchange=f"{args.prefix}.results", routing_key=args.binding)
    channel.basic_qos(prefetch_count=args.prefetch)
    last = time.monotonic()
    try:
        # Consume with a timeout: the generator yields (None, None, None)
        # after a second without an event, so the loop can check the time.
        for method, _properties, body in channel.consume(args.queue, inactivity_timeout=1.0):
            if method is None:
                if args.idle_exit is not None and time.monotonic() - last > args.idle_exit:
                    break
                continue
            last = time.monotonic()
            try:
                handle(json.loads(body))
            except Exception as e:  # noqa: BLE001 - any failure: give the event back
                print(f"could not handle an event ({e}); it goes back to the queue", file=sys.stderr)
                channel.basic_nack(method.delivery_tag, requeue=True)
                time.sleep(1)
                continue
            channel.basic_ack(method.delivery_tag)
    except KeyboardInterrupt:
        pass
    finally:
        connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
