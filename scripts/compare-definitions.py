"""Compares the topology of a definitions file with a broker export.

    compare-definitions.py FILE EXPORT VHOST

Exchanges, queues (with their arguments) and bindings of FILE must be those of
VHOST in EXPORT (`rabbitmqctl export_definitions`): nothing missing, nothing
extra. Prints what differs and exits 1 if anything does."""
import json
import sys


def topology(defs, vhost=None):
    def mine(x):
        return vhost is None or x.get("vhost") == vhost

    exchanges = {
        x["name"]: (x["type"], json.dumps(x.get("arguments", {}), sort_keys=True))
        for x in defs.get("exchanges", [])
        if mine(x)
    }
    queues = {
        x["name"]: json.dumps(x.get("arguments", {}), sort_keys=True)
        for x in defs.get("queues", [])
        if mine(x)
    }
    bindings = {
        (x["source"], x["destination"], x["routing_key"], json.dumps(x.get("arguments", {}), sort_keys=True))
        for x in defs.get("bindings", [])
        if mine(x)
    }
    return {"exchange": exchanges, "queue": queues, "binding": {b: True for b in bindings}}


def main():
    path, export, vhost = sys.argv[1:4]
    want = topology(json.load(open(path)))
    have = topology(json.load(open(export)), vhost)
    problems = []
    for kind in ("exchange", "queue", "binding"):
        for name in sorted(set(want[kind]) - set(have[kind]), key=str):
            problems.append(f"{kind} {name} is in {path} but the worker does not declare it")
        for name in sorted(set(have[kind]) - set(want[kind]), key=str):
            problems.append(f"{kind} {name} is declared by the worker but missing from {path}")
        for name in sorted(set(want[kind]) & set(have[kind]), key=str):
            if want[kind][name] != have[kind][name]:
                problems.append(f"{kind} {name}: {path} has {want[kind][name]}, the broker {have[kind][name]}")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)
    n = {k: len(v) for k, v in want.items()}
    print(f"{path}: the worker declares exactly its {n['exchange']} exchanges, {n['queue']} queues and {n['binding']} bindings")


main()
