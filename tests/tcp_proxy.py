"""A loopback TCP proxy that tests can cut, to play a database going down and back.

The shared database servers are never stopped: a test talks to them through a
:class:`TCPProxy` and cuts the proxy instead; :class:`SlowReplies` holds the
server's replies back, for a client's timeout or a command still under way.
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Self


class TCPProxy:
    """Forward ``127.0.0.1:<port>`` to *target* until :meth:`cut`.

    :meth:`cut` drops every open connection and closes each new one at once, as a
    server that went away would; :meth:`restore` forwards again.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        # accept() wakes up regularly to notice close(); closing a socket another
        # thread is blocked on does not wake it on Linux.
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._pumps: list[threading.Thread] = []
        self._down = False
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)
        self._acceptor.start()

    def cut(self) -> None:
        """Drop every connection and refuse new ones until :meth:`restore`."""
        with self._lock:
            self._down = True
        self._drop_all()

    def restore(self) -> None:
        """Forward new connections again."""
        with self._lock:
            self._down = False

    def close(self) -> None:
        """Stop accepting, drop every connection and wait for the threads."""
        with self._lock:
            self._closed = True
        self._acceptor.join()
        self._listener.close()
        self._drop_all()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _accept(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            client.settimeout(None)
            with self._lock:
                down = self._down
            if down:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            pumps = [
                threading.Thread(target=self._pump, args=(client, upstream), daemon=True),
                threading.Thread(target=self._pump, args=(upstream, client), daemon=True),
            ]
            with self._lock:
                # Checked under the lock, so a cut() racing this accept either
                # sees the pair or makes us drop it.
                refuse = self._down or self._closed
                if not refuse:
                    self._pairs.append((client, upstream))
                    self._pumps.extend(pumps)
            if refuse:
                client.close()
                upstream.close()
                continue
            for pump in pumps:
                pump.start()

    def forwards(self, data: bytes, from_target: bool) -> bool:
        """Whether to pass *data* on; ``False`` ends the connection instead. A subclass
        may drop what it likes (a reply, say); this proxy passes everything."""
        return True

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            from_target = source.getpeername()[1] == self.target[1]
            while data := source.recv(65536):
                if not self.forwards(data, from_target):
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            # One side ending ends the pair, as a TCP connection through a real
            # middlebox would.
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _drop_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
            pumps, self._pumps = self._pumps, []
        for pair in pairs:
            for sock in pair:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for pump in pumps:
            pump.join()
        for pair in pairs:
            for sock in pair:
                sock.close()


class SlowReplies(TCPProxy):
    """Forwards everything, holding the server's replies back while :attr:`delay`."""

    delay = 0.0

    def __init__(self, target: tuple[str, int]) -> None:
        #: Set once a reply is being held back: its command reached the server.
        self.holding = threading.Event()
        super().__init__(target)

    def forwards(self, data: bytes, from_target: bool) -> bool:
        if from_target and self.delay:
            self.holding.set()
            time.sleep(self.delay)
        return True
