#!/usr/bin/env python3
"""A plain UDP flow through a TURN relay, for `cargo xtask bench` (coturn's own capacity beside
ipop's relayed link).

  turnflood.py send SERVER USER PASSWORD PEER_IP PEER_PORT SECONDS SIZE
      allocates on SERVER (port 3478, long-term credentials), permits and binds a channel to
      the peer, then sends SIZE-byte ChannelData messages as fast as it can for SECONDS;
      prints the datagrams sent.
  turnflood.py sink PORT SECONDS
      counts what arrives on UDP PORT for SECONDS after the first datagram; prints the bytes.

Only the standard library: STUN messages are built by hand (RFC 8489/8656), nothing else.
"""
import hashlib
import hmac
import os
import socket
import struct
import sys
import time

COOKIE = 0x2112A442


def attr(kind, value):
    pad = b"\0" * (-len(value) % 4)
    return struct.pack("!HH", kind, len(value)) + value + pad


def xor_addr(ip, port):
    x_port = port ^ (COOKIE >> 16)
    x_ip = struct.unpack("!I", socket.inet_aton(ip))[0] ^ COOKIE
    return struct.pack("!BBHI", 0, 1, x_port, x_ip)


def message(method, attrs, key=None):
    tid = os.urandom(12)
    body = b"".join(attrs)
    if key is not None:
        # MESSAGE-INTEGRITY covers the header with a length that already counts it.
        head = struct.pack("!HHI", method, len(body) + 24, COOKIE) + tid
        mac = hmac.new(key, head + body, hashlib.sha1).digest()
        body += attr(0x0008, mac)
    return struct.pack("!HHI", method, len(body), COOKIE) + tid + body


def attributes(msg):
    out, i = {}, 20
    while i + 4 <= len(msg):
        kind, n = struct.unpack("!HH", msg[i:i + 4])
        out[kind] = msg[i + 4:i + 4 + n]
        i += 4 + n + (-n % 4)
    return out


def ask(sock, msg):
    sock.send(msg)
    sock.settimeout(3)
    reply = sock.recv(2048)
    kind = struct.unpack("!H", reply[:2])[0]
    return kind, attributes(reply)


def send(server, user, password, peer_ip, peer_port, seconds, size):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((server, 3478))
    transport = attr(0x0019, struct.pack("!I", 17 << 24))
    _, a = ask(sock, message(0x0003, [transport]))
    realm, nonce = a[0x0014], a[0x0015]
    key = hashlib.md5(f"{user}:{realm.decode()}:{password}".encode()).digest()
    auth = [attr(0x0006, user.encode()), attr(0x0014, realm), attr(0x0015, nonce)]
    for method, extra in [
        (0x0003, [transport]),
        (0x0008, [attr(0x0012, xor_addr(peer_ip, peer_port))]),
        (0x0009, [attr(0x000C, struct.pack("!HH", 0x4000, 0)), attr(0x0012, xor_addr(peer_ip, peer_port))]),
    ]:
        kind, _ = ask(sock, message(method, extra + auth, key))
        if kind & 0x0110 != 0x0100:
            sys.exit(f"TURN request {method:#06x} failed: {kind:#06x}")
    data = struct.pack("!HH", 0x4000, size - 4) + b"\0" * (size - 4)
    sock.setblocking(True)
    sent, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(256):
            try:
                sock.send(data)
                sent += 1
            except OSError:
                pass
    print(sent)


def sink(port, seconds):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind(("0.0.0.0", port))
    sock.settimeout(30)
    total = len(sock.recv(65536))
    deadline = time.monotonic() + seconds
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            total += len(sock.recv(65536))
        except socket.timeout:
            pass
    print(total)


if __name__ == "__main__":
    if sys.argv[1] == "send":
        s = sys.argv[2:]
        send(s[0], s[1], s[2], s[3], int(s[4]), float(s[5]), int(s[6]))
    elif sys.argv[1] == "sink":
        sink(int(sys.argv[2]), float(sys.argv[3]))
    else:
        sys.exit(__doc__)
