"""A backend built on Python's own http.server (HTTP/1.1), for the proxy's
end-to-end tests: it behaves as that server does, nobody here wrote its
HTTP handling. It listens on 127.0.0.1:$PORT (a free port when PORT is
unset, as the process runtime always sets it), prints its port, then one
line per notable event.

  PUT /...       reads the body (http.server answers `100 Continue` first
                 when the request asks for it), answers "<length> <sum>".
  GET /hold      answers nothing; prints "holding", then "dropped /hold"
                 once the proxy closes the connection.
  PUT /hold      reads the body, then does as GET /hold.
  GET /big/N     answers N bytes; prints "sent /big" or "aborted /big".
  GET /cookies   answers the Cookie fields it got, one per line.
"""
import http.server
import os
import select
import socket
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def say(self, line):
        print(line, flush=True)

    def reply(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def hold(self):
        self.say("holding")
        ready, _, _ = select.select([self.connection], [], [], 60)
        try:
            gone = bool(ready) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            gone = True
        if gone:
            self.say("dropped /hold")
        self.close_connection = True

    def do_PUT(self):
        n = int(self.headers.get("Content-Length", "0"))
        data = self.rfile.read(n)
        if self.path == "/hold":
            self.hold()
            return
        self.reply(f"{len(data)} {sum(data) % (1 << 32)}\n".encode())

    def do_GET(self):
        if self.path == "/hold":
            self.hold()
        elif self.path.startswith("/big/"):
            n = int(self.path[len("/big/"):])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            chunk = b"x" * 65536
            sent = 0
            try:
                while sent < n:
                    part = chunk[: min(len(chunk), n - sent)]
                    self.wfile.write(part)
                    sent += len(part)
                self.wfile.flush()
                self.say("sent /big")
            except OSError:
                self.say("aborted /big")
                self.close_connection = True
        elif self.path == "/cookies":
            self.reply("".join(v + "\n" for v in self.headers.get_all("Cookie", [])).encode())
        else:
            self.reply(b"ok\n")


server = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "0"))), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
