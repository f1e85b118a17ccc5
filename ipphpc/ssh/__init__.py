"""Across machines: SSH tunnels to a controller, and the ssh command lines they and launchers use.

The transport only: clients and engines import it to reach a controller through a tunnel, so
it stays below them and imports nothing of the cluster. Starting processes over ssh is
:mod:`ipphpc.launch.ssh`. Light to import: pexpect is loaded only when a password or host-key
prompt has to be answered.
"""
from .tunnel import SSHServer, SSHTunnelError, Tunnel, open_tunnel, tunnel_info

__all__ = ["SSHServer", "SSHTunnelError", "Tunnel", "open_tunnel", "tunnel_info"]
