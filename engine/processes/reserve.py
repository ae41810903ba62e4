"""What the supervisor reserves before it starts a process: the ports the workers share, and
the rings to and from the challengers process (made only when the settings need one)."""

from __future__ import annotations

import socket

from engine.handoff.ring import Ring, SharedMemoryFull
from engine.settings import Settings


def needs_challengers(settings: Settings) -> bool:
    """Whether the server runs a challengers process: a route has challengers, or a rollout
    that keeps its old champion as one once promoted (a promotion needs no reload)."""
    return any(r.challengers or (r.rollout is not None and r.rollout.after_promotion == "challenger")
               for r in settings.routes)


def challenger_rings(size: int) -> tuple[Ring, Ring]:
    """The two rings between the observer and the challengers process (both, or neither:
    SharedMemoryFull)."""
    to = Ring.create(size, "the ring to the challengers")
    try:
        return to, Ring.create(size, "the ring from the challengers")
    except SharedMemoryFull:
        to.close()
        raise


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to the gRPC port with SO_REUSEPORT and never listening: it keeps the
    port for the workers (each binds it with SO_REUSEPORT; the kernel spreads connections over
    the listening ones). The port is first bound without SO_REUSEPORT, so a port another
    server holds is refused here instead of shared with it. Both set SO_REUSEADDR, as gRPC's own
    sockets do: connections of an earlier server still in TIME_WAIT on the port must not keep a
    new one from starting."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    address = (host.strip("[]"), port)
    probe = socket.socket(family, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind(address)
        port = probe.getsockname()[1]
    finally:
        probe.close()
    keeper = socket.socket(family, socket.SOCK_STREAM)
    keeper.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    keeper.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    keeper.bind((address[0], port))
    return keeper
