#!/usr/bin/env python3
"""Sends ARP requests for distinct IPs (10.200.0.0/16) from an interface at a given rate.

Usage: arpflood.py IFACE RATE SECONDS. Prints how many requests it sent. Used by
`cargo xtask bench` to measure how many ARP requests per second the agent turns into RPCs.
"""
import socket, struct, sys, time

iface, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
mac = s.getsockname()[4]
with open(f"/sys/class/net/{iface}/address") as f:
    mac = bytes.fromhex(f.read().strip().replace(":", ""))
sender_ip = socket.inet_aton("10.0.3.11")
total = int(rate * seconds)
start = time.monotonic()
for n in range(total):
    target = struct.pack("!BBH", 10, 200, n % 65536)
    frame = b"\xff" * 6 + mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + sender_ip + b"\x00" * 6 + target
    s.send(frame)
    # Pace: never ahead of the schedule.
    ahead = (n + 1) / rate - (time.monotonic() - start)
    if ahead > 0.001:
        time.sleep(ahead)
print(total)
