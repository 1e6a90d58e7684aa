"""Times a Prefect 3 flow of N no-op tasks and prints one JSON line.

chain:  task i takes task i-1's result (called directly inside the flow, so
        each task run is tracked and its result passed on, one after another).
fanout: N independent tasks submitted to the flow's default task runner
        (ThreadPoolTaskRunner), then all results awaited.

Runs offline: with PREFECT_API_URL unset Prefect starts a temporary local
API server backed by SQLite under PREFECT_HOME. A one-task warm-up flow runs
first so server start-up is not counted; the timed figure is the wall time
of the measured flow call only.
"""

import argparse
import json
import time

from prefect import flow, task


@task
def noop(i, prev=None):
    return i


@flow
def warmup():
    return noop(0)


@flow
def chain(n: int):
    prev = None
    for i in range(n):
        prev = noop(i, prev)
    return prev


@flow
def fanout(n: int):
    futures = [noop.submit(i) for i in range(n)]
    return [f.result() for f in futures]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", choices=["chain", "fanout"], required=True)
    p.add_argument("--steps", type=int, default=100)
    a = p.parse_args()
    warmup()
    t = time.perf_counter()
    (chain if a.shape == "chain" else fanout)(a.steps)
    wall_ms = (time.perf_counter() - t) * 1000
    print(json.dumps({
        "peer": "prefect",
        "shape": a.shape,
        "steps": a.steps,
        "wall_ms": wall_ms,
        "ms_per_step": wall_ms / a.steps,
        "steps_per_second": a.steps / (wall_ms / 1000),
    }))


if __name__ == "__main__":
    main()
