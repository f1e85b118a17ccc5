"""Publish data from a running task to its client: `ar.data` there is updated as it arrives.

    from ipphpc.datapub import publish_data
    publish_data({"step": i, "energy": e})   # inside a task, as often as you like
"""
from .engine.control import publish_data

__all__ = ["publish_data"]
