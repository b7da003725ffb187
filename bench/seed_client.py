#!/usr/bin/env python3
"""The seed's part-two client algorithm, rebuilt from its description in
shared/notes (not its code): one TCP control connection; per port, one JSON
object with no delimiter, wait for the answer, then a 64-byte random payload
to the port, retransmitted up to 3 times at 0.5 s; serial. Used only by
bench/ports_sweep.sh to compare against in the same run.

Usage: seed_client.py SERVER CONTROL_PORT START-END
"""
import json
import random
import socket
import string
import sys

server, control, spec = sys.argv[1], int(sys.argv[2]), sys.argv[3]
start, end = map(int, spec.split("-"))
tcp = socket.create_connection((server, control), timeout=5)
for port in range(start, end + 1):
    tcp.sendall(json.dumps({"proto": "udpping", "server": server, "port": port, "available": False}).encode())
    answer = json.loads(tcp.recv(65535).decode())
    if not answer.get("available"):
        print(f"port {port} unavailable on server")
        continue
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.settimeout(0.5)
    payload = "".join(random.choice(string.ascii_letters + string.digits) for _ in range(64)).encode()
    ok = False
    for _ in range(3):
        udp.sendto(payload, (server, port))
        try:
            data, addr = udp.recvfrom(65535)
            if data == payload and addr[1] == port:
                ok = True
                break
        except socket.timeout:
            pass
    udp.close()
    print(f"port {port} {'reachable' if ok else 'unreachable'}")
