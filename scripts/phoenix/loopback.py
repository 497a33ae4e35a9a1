"""Runs Arize Phoenix with every listener on 127.0.0.1.

Phoenix binds its HTTP server to PHOENIX_HOST, but its OTLP/gRPC server always to [::] (all
interfaces) and offers no setting for it. This launcher rewrites that one address before
Phoenix starts, and refuses to start if a gRPC listener would still bind anything else (a new
Phoenix version that binds differently fails here instead of listening on the network).
"""

import sys

import grpc.aio._server as grpc_server

LOOPBACK = "127.0.0.1"


def _loopback(address: str) -> str:
    host, _, port = address.rpartition(":")
    if host in ("[::]", "0.0.0.0", "", "localhost", LOOPBACK):
        return f"{LOOPBACK}:{port}"
    raise SystemExit(f"phoenix/loopback.py: refusing to bind gRPC to {address}")


_insecure = grpc_server.Server.add_insecure_port
_secure = grpc_server.Server.add_secure_port
grpc_server.Server.add_insecure_port = lambda self, address: _insecure(self, _loopback(address))
grpc_server.Server.add_secure_port = lambda self, address, credentials: _secure(
    self, _loopback(address), credentials
)

from phoenix.server.main import main  # noqa: E402 (after the patch, on purpose)

sys.argv = ["phoenix", "serve"]
main()
