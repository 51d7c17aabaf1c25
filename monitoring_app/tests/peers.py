"""Real network peers on loopback for notification tests: a webhook receiver and an SMTP
server, each answering from a script (fail first, then succeed), each in a thread."""

import json
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WebhookPeer:
    """An HTTP server that answers POSTs with the next status of `script` (the last one
    repeats) and keeps every body it received, whatever it answered."""

    def __init__(self, script=(200,)):
        self.script = list(script)
        self.received: list[dict] = []
        self.answered: list[int] = []
        self._lock = threading.Lock()
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with peer._lock:
                    status = peer.script.pop(0) if len(peer.script) > 1 else peer.script[0]
                    peer.received.append(body)
                    peer.answered.append(status)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def delivered(self) -> list[dict]:
        """Bodies the peer accepted (answered 2xx)."""
        return [body for body, status in zip(self.received, self.answered, strict=True) if status < 300]


class SmtpPeer:
    """A minimal SMTP server (enough for Django's SMTP backend). Each session takes the next
    verdict of `script`: "ok" accepts the message, "busy" answers 451 to the recipient
    (a temporary failure), "reject" answers 550 (a permanent one)."""

    def __init__(self, script=("ok",)):
        self.script = list(script)
        self.messages: list[dict] = []
        self._lock = threading.Lock()
        peer = self

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, line: str):
                self.wfile.write(f"{line}\r\n".encode())

            def handle(self):
                with peer._lock:
                    verdict = peer.script.pop(0) if len(peer.script) > 1 else peer.script[0]
                self.reply("220 peer ESMTP")
                sender, recipients = None, []
                while line := self.rfile.readline():
                    command = line.decode(errors="replace").strip()
                    verb = command.split(" ", 1)[0].upper()
                    if verb in ("EHLO", "HELO"):
                        self.reply("250 peer")
                    elif verb == "MAIL":
                        sender = command
                        self.reply("250 OK")
                    elif verb == "RCPT":
                        if verdict == "busy":
                            self.reply("451 4.3.0 try again later")
                        elif verdict == "reject":
                            self.reply("550 5.1.1 no such mailbox")
                        else:
                            recipients.append(command.split(":", 1)[1].strip(" <>"))
                            self.reply("250 OK")
                    elif verb == "DATA":
                        self.reply("354 go ahead")
                        data = []
                        while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                            data.append(chunk.decode(errors="replace"))
                        with peer._lock:
                            peer.messages.append({"from": sender, "to": recipients, "data": "".join(data)})
                        self.reply("250 queued")
                    elif verb == "QUIT":
                        self.reply("221 bye")
                        return
                    else:
                        self.reply("250 OK")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
