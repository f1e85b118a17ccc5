"""Estimate pi on the engines of the newest running cluster (`ipphpc submit -n 4` starts one).

Shows the three things most programs do: run something on every engine (DirectView),
spread many small tasks over whichever engine is free (LoadBalancedView.map), and read
where each result came from.
"""
import os
import random
import socket
import time

import ipphpc


def darts(n: int) -> int:
    """Throw n darts at the unit square; count those inside the quarter circle."""
    rng = random.Random()
    return sum(1 for _ in range(n) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)


def main() -> None:
    rc = ipphpc.Client()
    rc.wait_for_engines(1, timeout=60)
    print(f"{len(rc.ids)} engines:", rc[:].apply_sync(lambda: f"{socket.gethostname()}:{os.getpid()}"))

    batches, per_batch = 400, 25_000
    start = time.perf_counter()
    hits = rc.load_balanced_view().map_sync(darts, [per_batch] * batches)
    elapsed = time.perf_counter() - start
    pi = 4 * sum(hits) / (batches * per_batch)
    print(f"pi ~ {pi:.5f} from {batches * per_batch:,} darts in {batches} tasks, {elapsed:.2f} s")

    ar = rc[0].apply_async(darts, 1000)
    ar.get(timeout=30)
    print(f"one task on engine {ar.engine_id}: queued {ar.metadata.submitted:%H:%M:%S.%f}, "
          f"ran {(ar.metadata.completed - ar.metadata.started).total_seconds() * 1e3:.2f} ms")
    rc.close()


if __name__ == "__main__":
    main()
