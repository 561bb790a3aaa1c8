"""Read octopods-worker result events from your own queue.

    python results.py --setup                   # declare and bind the queue once
    python results.py --job-id order-1234/delivery-confirm --timeout 30

Binds a durable queue (default `shop.delivery-confirmations`) to the
`octopods.results` topic exchange. Routing keys are `<event>.<channel>`:
`sent.#` for sends only, `dead_lettered.#` for failures, `#` for all.
Exits 0 when the event for --job-id arrived (printing it), 1 on timeout.
"""
import argparse
import json
import os
import sys
import time

import pika


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prefix", default="octopods")
    p.add_argument("--queue", default="shop.delivery-confirmations")
    p.add_argument("--binding", default="#")
    p.add_argument("--setup", action="store_true", help="declare and bind the queue, then exit")
    p.add_argument("--job-id")
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args()

    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.queue_declare(queue=args.queue, durable=True)
    channel.queue_bind(queue=args.queue, exchange=f"{args.prefix}.results", routing_key=args.binding)
    if args.setup:
        connection.close()
        return 0

    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        method, properties, body = channel.basic_get(queue=args.queue, auto_ack=False)
        if method is None:
            time.sleep(0.1)
            continue
        event = json.loads(body)
        channel.basic_ack(method.delivery_tag)  # handled: take it off the queue
        print(json.dumps(event))
        if args.job_id is None or event.get("job_id") == args.job_id:
            if event.get("event") == "sent":
                print(f"sent: message_id={event['message_id']} "
                      f"channel_message_id={event.get('channel_message_id')}", file=sys.stderr)
            connection.close()
            return 0
    connection.close()
    print(f"no event for {args.job_id} within {args.timeout} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
