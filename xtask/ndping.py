#!/usr/bin/env python3
"""Times IPv6 neighbour solicitations: what arping is for ARP.

Usage: ndping.py IFACE SOURCE TARGET COUNT. Sends COUNT solicitations for TARGET from SOURCE
(an address of IFACE), one at a time, each to TARGET's solicited-node group with the source
link-layer option, and prints the microseconds until the matching advertisement arrives, one
line each ("timeout" after 1 s). Used by `cargo xtask bench` for its IPv6 rows.
"""
import ipaddress, socket, struct, sys, time

iface, source, target, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
src = ipaddress.IPv6Address(source).packed
tgt = ipaddress.IPv6Address(target).packed
group = bytes.fromhex("ff02" + "00" * 9 + "01ff") + tgt[13:]
with open(f"/sys/class/net/{iface}/address") as f:
    mac = bytes.fromhex(f.read().strip().replace(":", ""))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x86DD))
s.bind((iface, 0))


def checksum(data):
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


message = struct.pack("!BBHI", 135, 0, 0, 0) + tgt + bytes([1, 1]) + mac
pseudo = src + group + struct.pack("!I", len(message)) + b"\x00\x00\x00\x3a"
message = message[:2] + struct.pack("!H", checksum(pseudo + message)) + message[4:]
ip6 = struct.pack("!IHBB", 0x60000000, len(message), 58, 255) + src + group
frame = b"\x33\x33" + group[12:] + mac + b"\x86\xdd" + ip6 + message

s.setblocking(False)


def drain():
    try:
        while True:
            s.recv(2048)
    except BlockingIOError:
        pass


# Spins on a non-blocking socket: a wakeup would cost more than what is measured.
for _ in range(count):
    drain()
    start = time.perf_counter_ns()
    s.send(frame)
    deadline = start + 1_000_000_000
    answer = None
    while answer is None and time.perf_counter_ns() < deadline:
        try:
            got = s.recv(2048)
        except BlockingIOError:
            continue
        if len(got) >= 78 and got[20] == 58 and got[54] == 136 and got[62:78] == tgt:
            answer = (time.perf_counter_ns() - start) / 1000
    print(f"{answer:.1f}" if answer is not None else "timeout", flush=True)
    time.sleep(0.05)
