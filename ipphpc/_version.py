__version__ = "0.1.0"
# the wire protocol version: peers with a different major refuse each other with a clear message
PROTOCOL_VERSION = (6, 0)
# (major, minor, micro, extra), as IPython Parallel exposes it
version_info = tuple(int(p) for p in __version__.split(".")[:3]) + ("",)
