#!/usr/bin/env python3
"""The worst legal control-channel client, for bench/control_memory.sh: from
each source address, UDPREACH udpreach sessions, each asking for every
allowed port (8,192 per request), and LEGACY legacy (seed JSON) sessions,
each asking for its own slice of the allowed ports. Holds everything until
stdin closes, then closes it all. Prints one JSON line with what it got.

Usage: control_load.py SERVER CONTROL_PORT PORTSPEC UDPREACH LEGACY SRC...
"""
import json
import socket
import struct
import sys
import threading

server, control, spec = sys.argv[1], int(sys.argv[2]), sys.argv[3]
n_udpreach, n_legacy = int(sys.argv[4]), int(sys.argv[5])
sources = sys.argv[6:]
ports = []
for part in spec.split(","):
    lo, _, hi = part.partition("-")
    ports.extend(range(int(lo), int(hi or lo) + 1))


def frame(msg):
    body = json.dumps(msg).encode()
    return struct.pack(">I", len(body)) + body


def recv_frame(s, buf):
    while True:
        if len(buf) >= 4:
            n = struct.unpack(">I", bytes(buf[:4]))[0]
            if len(buf) >= 4 + n:
                msg = json.loads(bytes(buf[4:4 + n]))
                del buf[:4 + n]
                return msg
        chunk = s.recv(65536)
        if not chunk:
            return None
        buf.extend(chunk)


def connect(src):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((src, 0))
    s.settimeout(20)
    s.connect((server, control))
    return s


held, sessions, refused, opened, legacy_available = [], 0, 0, 0, 0
for src in sources:
    for _ in range(n_udpreach):
        s = connect(src)
        s.sendall(b"UDPREACH" + frame({"type": "hello", "version": 1, "capabilities": [], "software": "bench"}))
        buf = bytearray()
        pre = s.recv(8, socket.MSG_WAITALL)
        msg = recv_frame(s, buf) if pre == b"UDPREACH" else None
        if not msg or msg.get("type") != "welcome":
            refused += 1
            s.close()
            continue
        sessions += 1
        for i in range(0, len(ports), 8192):
            s.sendall(frame({"type": "open", "ports": ports[i:i + 8192]}))
            ans = recv_frame(s, buf)
            opened += len((ans or {}).get("opened", []))
        held.append(s)
    # Legacy sessions, each asking for its own slice of the ports.
    total = max(1, n_legacy * len(sources))
    chunk = max(1, min(len(ports) // total, 2048))
    for k in range(n_legacy):
        first = (sources.index(src) * n_legacy + k) * chunk
        mine = ports[first:first + chunk]
        s = connect(src)
        reqs = b"".join(json.dumps({"proto": "udpping", "server": server, "port": p, "available": False}).encode() for p in mine)
        # Send while reading: the server stops reading while its answers are not taken.
        sender = threading.Thread(target=s.sendall, args=(reqs,))
        sender.start()
        got = bytearray()
        while got.count(b"udpping") < len(mine):
            data = s.recv(65536)
            if not data:
                break
            got.extend(data)
        sender.join()
        legacy_available += got.count(b'"available":true')
        held.append(s)
print(json.dumps({"sessions": sessions, "refused": refused, "ports_opened": opened,
                  "legacy_available": legacy_available}), flush=True)
sys.stdin.read()
for s in held:
    s.close()
