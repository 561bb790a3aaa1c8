"""Celery 5 on the job octopods-worker does, for the throughput comparison of
docs/performance.md: `python3 benches/celery/run.py target/release/octopods-worker`.

Starts the constant sandbox as the HTTP peer (as `cargo bench --bench
throughput` does), queues N send jobs (CELERY_BENCH_N, default 5000), starts
`celery worker` (prefork, CELERY_BENCH_CONCURRENCY processes, default 4), and
measures jobs/s from 10 % of the results to all of them, and the CPU of every
Celery process (rusage of the process tree after it exits) per 1,000 jobs."""

import os
import resource
import signal
import subprocess
import sys
import time

from kombu import Connection

here = os.path.dirname(os.path.abspath(__file__))
binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/octopods-worker"
n = int(os.environ.get("CELERY_BENCH_N", "5000"))
conc = os.environ.get("CELERY_BENCH_CONCURRENCY", "4")
prefix = f"celery-bench-{os.getpid()}"
env = dict(os.environ, CELERY_BENCH_PREFIX=prefix, PEER="http://127.0.0.1:18099", PYTHONPATH=here)
os.environ.update(env)
sys.path.insert(0, here)
import tasks  # noqa: E402

peer = subprocess.Popen([binary, "sandbox", "--constant", "--listen", "127.0.0.1:18099"],
                        stderr=subprocess.DEVNULL)
job = {"job_id": "", "destination_phone": "+15551234567",
       "waba_interactive_message": {"type": "button", "body": {"text": "Did your order arrive today?"},
                                    "action": {"buttons": [{"type": "reply", "reply": {"id": "yes", "title": "Yes"}}]}},
       "metadata": {"order_id": "1234"}}
t = time.time()
for i in range(n):
    tasks.send.apply_async(args=[dict(job, job_id=f"job-{i}")])
print(f"queued {n} jobs in {time.time() - t:.1f} s", file=sys.stderr)

with Connection(tasks.BROKER) as conn:
    ch = conn.channel()
    ch.queue_declare(f"{prefix}.results", durable=True, auto_delete=False, arguments={"x-queue-type": "quorum"})

    def done():
        return ch.queue_declare(f"{prefix}.results", passive=True).message_count

    # The Celery of the interpreter running this script (a venv's), not whatever is on PATH.
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tasks", "worker", "--pool", "prefork", "-c", conc,
                               "--without-gossip", "--without-mingle", "--without-heartbeat",
                               "-l", "warning"], cwd=here, env=env)
    t10 = None
    deadline = time.time() + 600
    while time.time() < deadline:
        k = done()
        if t10 is None and k >= n // 10:
            t10, k10 = time.time(), k
        if k >= n:
            break
        time.sleep(0.05)
    t_end = time.time()
    worker.send_signal(signal.SIGTERM)
    worker.wait()
    got = done()
    for q in ("jobs", "results"):
        ch.queue_delete(f"{prefix}.{q}")
peer.terminate()
peer.wait()
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = usage.ru_utime + usage.ru_stime  # the tree: celery and its pool (the peer is tiny)
rate = (got - k10) / (t_end - t10) if t10 and t_end > t10 else 0.0
print(f"celery prefork x{conc}: {got}/{n} results, {rate:.0f} jobs/s (10 % → all), "
      f"CPU {cpu / max(got, 1) * 1000:.3f} s per 1,000 jobs (celery + the constant peer)")
