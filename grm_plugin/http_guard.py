"""Connection limits uvicorn lacks: a deadline for a request's headers, a cap on open sockets.

uvicorn (0.55, h11) holds a connection that never finishes its request headers forever, and
accepts connections until the process runs out of file descriptors: a few hundred slow clients
make the server unreachable. ``guarded_h11`` returns uvicorn's own h11 protocol with both limits:

- a connection must complete each request's headers within ``header_timeout`` seconds of
  opening (or of its previous response); otherwise it is closed;
- past ``max_connections`` open connections, a new one is closed as soon as it is accepted.

The token is checked by the app as soon as the headers are in, before the body is read; with
the header deadline, a client without the token holds a socket for at most ``header_timeout``.

Example:
    >>> import uvicorn
    >>> protocol = guarded_h11(header_timeout=10.0, max_connections=1000)
    >>> config = uvicorn.Config("app:app", http=protocol)  # what ``grm-plugin serve`` does
"""

from __future__ import annotations

import asyncio
import resource

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

#: file descriptors kept free for the judge's own connections, model files and logs
FD_RESERVE = 256


def default_max_connections() -> int:
    """Raise the soft open-file limit to the hard one (what most servers do) and leave
    ``FD_RESERVE`` of it for everything that is not a client connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return max(16, soft - FD_RESERVE)


def guarded_h11(*, header_timeout: float, max_connections: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a header deadline and a connection cap (see module doc)."""
    if header_timeout <= 0:
        raise ValueError(f"header_timeout must be > 0 seconds, got {header_timeout}")
    if max_connections < 1:
        raise ValueError(f"max_connections must be >= 1, got {max_connections}")

    class GuardedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                # closed before a byte is read: the socket's descriptor is freed at once
                transport.close()
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()  # headers complete: the app takes over (token, then body)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self._arm()  # keep-alive: the next request's headers get the same deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return GuardedH11Protocol
