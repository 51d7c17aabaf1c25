"""A TCP proxy on loopback that a test (or bench/bench_outage.py) can cut and restore, to play
a dependency outage without stopping the shared server behind it.

    with TcpProxy("127.0.0.1", 5432) as proxy:   # listens on 127.0.0.1:proxy.port
        ...point the process under test at proxy.port...
        proxy.cut()       # every open connection is closed; new ones are closed on arrival
        proxy.restore()   # new connections reach the server again
        proxy.hold_replies()     # connections stay open, but the server's answers are dropped
        proxy.release_replies()

A cut closes both ends of every connection, as a server that goes away does: the client's
socket reads EOF. New connections are accepted and closed at once (not refused at the TCP
level) so the listening port stays ours across the cut.
"""

import contextlib
import socket
import threading


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int):
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut = False
        self._holding = False
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept_loop, name="tcp-proxy-accept", daemon=True)

    def __enter__(self) -> "TcpProxy":
        self._acceptor.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def cut(self) -> None:
        """Close every open connection and every new one from now on, until restore()."""
        with self._lock:
            self._cut = True
            doomed, self._open = self._open, set()
        for sock in doomed:
            _close(sock)

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def hold_replies(self) -> None:
        """From now on the server's bytes are dropped (a server that hangs): the client waits
        for answers that never come, on a connection that looks alive."""
        self._holding = True

    def release_replies(self) -> None:
        self._holding = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        _close(self._listener)
        self._acceptor.join(timeout=5)

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed
            with self._lock:
                refuse = self._cut
            if refuse:
                _close(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                if self._cut:  # cut while we were connecting
                    _close(client)
                    _close(server)
                    continue
                self._open.update((client, server))
            for source, sink, replies in ((client, server, False), (server, client, True)):
                threading.Thread(target=self._pump, args=(source, sink, replies), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        try:
            while data := source.recv(65536):
                if not (replies and self._holding):
                    sink.sendall(data)
        except OSError:
            pass  # one side closed (by its owner or by cut())
        finally:
            with self._lock:
                self._open.discard(source)
                self._open.discard(sink)
            _close(source)
            _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
