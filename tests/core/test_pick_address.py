"""Racing a connection file's addresses: the first that answers wins, and the losers' failures are read,
so no "Task exception was never retrieved" traceback is printed when they fail in the same turn."""
from __future__ import annotations

import gc
import logging
import socket

from ipphpc.netutil import pick_address


def test_losers_failing_with_the_winner_leave_no_stray_traceback(caplog) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    port = srv.getsockname()[1]
    # 127.0.0.2..9 are loopback too, but nothing listens there on this port: refused at once, in the
    # same turn of the loop as the winner's connection
    addrs = ["127.0.0.1", *(f"127.0.0.{i}" for i in range(2, 10))]
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            for _ in range(30):
                assert pick_address(addrs, port, timeout=5) == "127.0.0.1"
                gc.collect()  # an exception nobody read is reported when its task is collected
        assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    finally:
        srv.close()
