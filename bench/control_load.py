#!/usr/bin/env python3
"""The worst legal control-channel client, for bench/control_memory.sh: from
each source address, as many udpreach sessions as the server gives it, each
asking for every allowed port (8,192 per request), plus one legacy (seed
JSON) session asking for every allowed port too. Holds everything until
stdin closes, then closes it all. Prints one JSON line with what it got.

Usage: control_load.py SERVER CONTROL_PORT PORTSPEC SESSIONS_PER_SOURCE SRC...
"""
import json
import socket
import struct
import sys

server, control, spec = sys.argv[1], int(sys.argv[2]), sys.argv[3]
per_source = int(sys.argv[4])
sources = sys.argv[5:]
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
    for _ in range(per_source - 1):  # the last slot is for the legacy session
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
    # One legacy session per source, asking for every port.
    s = connect(src)
    reqs = b"".join(json.dumps({"proto": "udpping", "server": server, "port": p, "available": False}).encode() for p in ports)
    s.sendall(reqs)
    got = bytearray()
    while got.count(b"udpping") < len(ports):
        chunk = s.recv(65536)
        if not chunk:
            break
        got.extend(chunk)
    legacy_available += got.count(b'"available":true')
    held.append(s)
print(json.dumps({"sessions": sessions, "refused": refused, "ports_opened": opened,
                  "legacy_available": legacy_available}), flush=True)
sys.stdin.read()
for s in held:
    s.close()
