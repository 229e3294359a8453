#!/usr/bin/env python3
"""Issue 32's GPU-server cases against a realfill binary: an attacker on the server's port
before authenticating (the server runs with 300 open files at most), and servers that never
answer the client. Prints a markdown table:
case | what happened | server memory (VmRSS after / VmHWM peak) | did the legitimate client
still fill. Standard library only.

    python3 bench/hostile_server.py path/to/realfill [--silence 6]
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

BIN = os.path.abspath(sys.argv[1])
SILENCE = sys.argv[sys.argv.index("--silence") + 1] if "--silence" in sys.argv else "6"
WORK = tempfile.mkdtemp(prefix="hostile-server-")
TOKEN = os.path.join(WORK, "token")
open(TOKEN, "w").write("the-right-token\n")
ROWS = []


def mem(pid):
    fields = {}
    try:
        for line in open(f"/proc/{pid}/status"):
            k, _, v = line.partition(":")
            fields[k] = v.strip()
    except OSError:
        return "gone"
    return f"{int(fields['VmRSS'].split()[0]) // 1024} / {int(fields['VmHWM'].split()[0]) // 1024} MB"


def start_server():
    # 300 open files, as in the issue: idle connections must not starve the real client.
    p = subprocess.Popen(["sh", "-c", 'ulimit -n 300; exec "$0" "$@"', BIN, "serve", "--listen", "127.0.0.1:0",
                          "--backend", "cpu", "--token-file", TOKEN],
                         stdout=subprocess.PIPE, stderr=open(os.path.join(WORK, "serve.log"), "ab"), text=True)
    for line in p.stdout:
        if line.startswith("listening on ws://"):
            host, port = line.split("ws://")[1].strip().rsplit(":", 1)
            return p, (host, int(port))
    raise SystemExit("the server did not start")


def legit_fill(port, env=None, timeout=120):
    out = os.path.join(WORK, "o.png")
    t = time.time()
    try:
        r = subprocess.run([BIN, "fill", "--demo", "--out", out, "--backend", f"remote=ws://127.0.0.1:{port}",
                            "--token-file", TOKEN], capture_output=True, text=True, timeout=timeout,
                           env=dict(os.environ, **(env or {})))
    except subprocess.TimeoutExpired:
        return "none", time.time() - t, f"no answer in {timeout} s"
    return r.returncode, time.time() - t, (r.stderr.strip().splitlines() or [""])[-1]


def opening(path="/session"):
    return (f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def huge_header(n=1 << 30):
    return bytes([0x82, 0xFF]) + n.to_bytes(8, "big") + b"\x01\x02\x03\x04"


def conn(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    return s


def opened_with_huge_header(port):
    """A connection that opened a session and sent a frame header declaring 1 GiB."""
    s = conn(port)
    s.sendall(opening())
    s.recv(4096)
    s.sendall(huge_header())
    return s


def server_cases():
    server, (_, port) = start_server()
    pid = server.pid
    time.sleep(1)
    ROWS.append(("server idle", "", mem(pid), ""))

    # 1. Seven bare 14-byte headers declaring 1 GiB, after a valid opening (the issue: 7 abort it).
    socks = [opened_with_huge_header(port) for _ in range(7)]
    time.sleep(1)
    closed = 0
    for s in socks:
        try:
            s.settimeout(3)
            closed += s.recv(1) == b""
        except socket.timeout:
            pass  # still open, waiting for the 1 GiB
        except OSError:
            closed += 1  # reset
    ROWS.append(("7 openings, each a 14-byte header declaring a 1 GiB frame", f"{closed} of 7 closed by the server",
                 mem(pid), ""))

    # 2. The 1 GiB actually sent on three connections.
    sent_mb = []
    for _ in range(3):
        s = opened_with_huge_header(port)
        chunk = b"\0" * (1 << 20)
        n = 0
        try:
            for _ in range(1024):
                s.sendall(chunk)
                n += 1
        except OSError:
            pass
        sent_mb.append(n)
        s.close()
    ROWS.append(("3 connections sending the declared 1 GiB", f"the server took {sent_mb} MB before closing",
                 mem(pid), ""))

    # 3. Random bytes on burn's unauthenticated data route, and on the bare port.
    answers = []
    for payload in [opening("/data") + os.urandom(4096), os.urandom(4096)]:
        s = conn(port)
        s.sendall(payload)
        try:
            answers.append(s.recv(200).split(b"\r\n")[0].decode(errors="replace") or "closed")
        except OSError as e:
            answers.append(str(e))
        s.close()
    ROWS.append(("random bytes on /data, and on the bare port", "; ".join(answers), mem(pid), ""))

    # 4. 300 connections that send nothing, held open while the legitimate client fills.
    idle = []
    for _ in range(300):
        try:
            idle.append(conn(port))
        except OSError:
            break
    half = []
    for _ in range(20):  # slow openings: half a request, never finished
        s = conn(port)
        s.sendall(b"GET /session HTTP/1.1\r\nHost: x\r\n")
        half.append(s)
    rc, secs, last = legit_fill(port)
    ROWS.append((f"{len(idle)} idle + 20 half-opened connections held", "", mem(pid),
                 f"exit {rc} in {secs:.1f} s ({last[:60]})"))
    time.sleep(11)
    close_wait = subprocess.run(["sh", "-c", f"ss -tan state close-wait '( sport = :{port} )' | tail -n +2 | wc -l"],
                                capture_output=True, text=True).stdout.strip()
    established = subprocess.run(["sh", "-c", f"ss -tanp state established '( sport = :{port} )' | tail -n +2 | wc -l"],
                                 capture_output=True, text=True).stdout.strip()
    ROWS.append(("... 11 s later", f"server side: {established} established, {close_wait} in CLOSE-WAIT", mem(pid), ""))
    for s in idle + half:
        s.close()

    # 5. A wrong token.
    bad = os.path.join(WORK, "bad")
    open(bad, "w").write("wrong")
    try:
        r = subprocess.run([BIN, "fill", "--demo", "--out", os.path.join(WORK, "x.png"), "--backend",
                            f"remote=ws://127.0.0.1:{port}", "--token-file", bad], capture_output=True, text=True,
                           timeout=60)
        said = f"exit {r.returncode}: {(r.stderr.strip().splitlines() or [''])[-1][:110]}"
    except subprocess.TimeoutExpired:
        said = "no answer in 60 s"
    ROWS.append(("a client with a wrong token", said, mem(pid), ""))
    rc, secs, last = legit_fill(port)
    ROWS.append(("after all of the above", "", mem(pid), f"exit {rc} in {secs:.1f} s"))
    log = open(os.path.join(WORK, "serve.log"), errors="replace").read()
    ROWS.append(("server log", f"{log.count('refused')} 'refused' lines, {log.count('dropped')} 'dropped', "
                 f"{log.count('panicked')} panics, {log.count('WARN')} WARN", "", ""))
    server.send_signal(signal.SIGINT)
    server.wait(10)


def fake_server(behaviour):
    """A listener that misbehaves as asked; returns its port."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)

    def run():
        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                return
            threading.Thread(target=behaviour, args=(c,), daemon=True).start()

    threading.Thread(target=run, daemon=True).start()
    return ls.getsockname()[1]


def read_head(c):
    data = b""
    while b"\r\n\r\n" not in data:
        d = c.recv(4096)
        if not d:
            return data
        data += d
    return data


ACCEPT = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          "Sec-WebSocket-Accept: {}\r\n\r\n")


def accept_key(head):
    import base64
    import hashlib
    key = [l.split(":", 1)[1].strip() for l in head.decode().split("\r\n") if l.lower().startswith("sec-websocket-key")][0]
    return base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()


def client_cases():
    def silent(c):
        time.sleep(600)

    def upgrade_then_silent(c):
        h = read_head(c)
        c.sendall(ACCEPT.format(accept_key(h)).encode())
        time.sleep(600)

    def huge_frame(c):
        h = read_head(c)
        c.sendall(ACCEPT.format(accept_key(h)).encode())
        c.recv(4096)
        c.sendall(bytes([0x82, 0x7F]) + (1 << 40).to_bytes(8, "big"))
        time.sleep(600)

    def big_frame_never_sent(c):
        h = read_head(c)
        c.sendall(ACCEPT.format(accept_key(h)).encode())
        c.recv(4096)
        c.sendall(bytes([0x82, 0x7F]) + (512 << 20).to_bytes(8, "big") + b"\0" * 1000)
        time.sleep(600)

    env = {"REALFILL_SERVER_SILENCE": SILENCE}
    for name, b in [("accepts TCP, never answers the opening", silent),
                    ("answers the opening, never the greeting", upgrade_then_silent),
                    ("declares a 1 TiB frame", huge_frame),
                    ("declares 512 MiB, sends 1 KB, then nothing", big_frame_never_sent)]:
        port = fake_server(b)
        try:
            rc, secs, last = legit_fill(port, env, timeout=150)
            ROWS.append((f"client: a server that {name}", f"exit {rc} after {secs:.0f} s: {last[:120]}", "", ""))
        except subprocess.TimeoutExpired:
            ROWS.append((f"client: a server that {name}", "no answer in 150 s", "", ""))

    # A real server stopped (SIGSTOP) during a job.
    server, (_, port) = start_server()
    out = os.path.join(WORK, "stopped.png")
    t = time.time()
    client = subprocess.Popen([BIN, "fill", "--demo", "--engine", "scene", "--learn-steps", "100000", "--no-cache",
                               "--out", out, "--backend", f"remote=ws://127.0.0.1:{port}", "--token-file", TOKEN],
                              stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                              env=dict(os.environ, **env))
    time.sleep(8)
    server.send_signal(signal.SIGSTOP)
    stopped = time.time()
    try:
        _, err = client.communicate(timeout=150)
        ROWS.append(("client: the server is stopped (SIGSTOP) during a job",
                     f"exit {client.returncode}, {time.time() - stopped:.0f} s after the stop: {err.strip().splitlines()[-1][:140]}",
                     "", ""))
    except subprocess.TimeoutExpired:
        client.kill()
        ROWS.append(("client: the server is stopped (SIGSTOP) during a job", "no answer in 150 s", "", ""))
    server.send_signal(signal.SIGCONT)
    server.send_signal(signal.SIGINT)
    server.wait(10)


if __name__ == "__main__":
    which = [a for a in sys.argv[2:] if a in ("server", "client")] or ["server", "client"]
    if "server" in which:
        server_cases()
    if "client" in which:
        client_cases()
    print(f"binary: {BIN} (REALFILL_SERVER_SILENCE={SILENCE} for the client cases)\n")
    print("| case | what happened | server memory (now / peak) | legitimate client |")
    print("|---|---|---|---|")
    for r in ROWS:
        print("| " + " | ".join(x.replace("|", "/") for x in r) + " |")
    print(f"\nlogs in {WORK}")
