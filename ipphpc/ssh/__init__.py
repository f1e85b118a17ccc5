"""Across machines: SSH tunnels to a controller, and launchers that start processes over ssh.

Light to import (the engine imports it when asked to tunnel): pexpect is loaded only when a
password or host-key prompt has to be answered, and the launchers only when named.
"""
from .tunnel import SSHServer, SSHTunnelError, Tunnel, open_tunnel, tunnel_info

__all__ = ["SSHServer", "SSHTunnelError", "Tunnel", "open_tunnel", "tunnel_info"]
