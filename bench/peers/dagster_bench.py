"""Times a Dagster job of N no-op ops and prints one JSON line.

chain:  op i takes op i-1's output (N ops in a line).
fanout: N independent ops with no inputs.

Executed with `execute_in_process` (one process, ops run one after another,
no subprocess per op) against `DagsterInstance.local_temp()`, a SQLite-backed
instance in a temporary directory, so the run and its event log are
persisted as they would be by a deployed Dagster. A one-op warm-up job runs
first; the timed figure is the wall time of the measured
`execute_in_process` call only.
"""

import argparse
import json
import time

from dagster import DagsterInstance, job, op


@op
def root():
    return 0


@op
def step(x):
    return x + 1


def make_chain(n):
    @job(name=f"chain_{n}")
    def chain():
        x = root()
        for _ in range(n - 1):
            x = step(x)

    return chain


def make_fanout(n):
    @job(name=f"fanout_{n}")
    def fanout():
        for _ in range(n):
            root()

    return fanout


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", choices=["chain", "fanout"], required=True)
    p.add_argument("--steps", type=int, default=100)
    a = p.parse_args()
    with DagsterInstance.local_temp() as instance:
        assert make_chain(1).execute_in_process(instance=instance).success
        j = (make_chain if a.shape == "chain" else make_fanout)(a.steps)
        t = time.perf_counter()
        result = j.execute_in_process(instance=instance)
        wall_ms = (time.perf_counter() - t) * 1000
        assert result.success
    print(json.dumps({
        "peer": "dagster",
        "shape": a.shape,
        "steps": a.steps,
        "wall_ms": wall_ms,
        "ms_per_step": wall_ms / a.steps,
        "steps_per_second": a.steps / (wall_ms / 1000),
    }))


if __name__ == "__main__":
    main()
