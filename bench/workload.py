"""Functions executed on engines/workers during the benchmarks.

They live in their own small module so that every system can import them by
name on the remote side: ``run.py`` puts this directory on ``PYTHONPATH`` for
the benchmark process and everything it starts.
"""


def noop(*args, **kwargs):
    """Do nothing; the cost measured is the system's own overhead."""
    return None


def inc(x):
    """Trivial per-item function for the ``map`` figure."""
    return x + 1


def echo(x):
    """Return the argument unchanged (for the large-array round trip)."""
    return x


def fresh(x):
    """A new array equal to the argument (the large-array round trip when the result is not the input)."""
    return x.copy()


def checksum(x):
    """A cheap digest of an array an engine holds, to check a push arrived whole."""
    import numpy as np

    return int(x.reshape(-1).view(np.uint8)[::4093].sum(dtype=np.uint64)), x.nbytes  # integers: exact anywhere


def mark_sleep(n, seconds, directory):
    """Task `n` of the walltime benchmark: leave a marker of this run (a task run twice leaves two), sleep."""
    import os
    import time

    with open(os.path.join(directory, f"{n}.{os.getpid()}.{time.time_ns()}"), "w"):
        pass
    time.sleep(seconds)
    return n
