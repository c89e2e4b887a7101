#!/usr/bin/env python3
"""Load generator for bench/fleet: COUNT simulated meters, 1 reading/s each, published as the
wire format's JSON (QoS 1, mTLS) on gridmeter/v1/{device}/readings, one message per reading as
a live agent sends it. One MQTT 3.1.1 connection carries a shard of the fleet (the broker runs
without the per-device ACL for this; see run.py).

A minimal MQTT client is written out here rather than using paho: paho's per-message
overhead capped a Python process at ~2,000 QoS 1 messages/s, far below the 10,000/s the
benchmark offers. Here each tenth of a second's messages go out in one TLS write and PUBACKs
are counted by the same thread between slices (an ssl socket is not shared across threads).

    loadgen.py --port P --pki DIR --cert loadgen --first 0 --count 5000 --seconds 120 --out s.json
"""

import argparse
import json
import select
import signal
import socket
import ssl
import struct
import time
from datetime import datetime, timezone


def rlen(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s16(b):
    return struct.pack("!H", len(b)) + b


class Conn:
    def __init__(self, port, pki, cert, client_id):
        ctx = ssl.create_default_context(cafile=f"{pki}/ca.crt")
        ctx.load_cert_chain(f"{pki}/{cert}.crt", f"{pki}/{cert}.key")
        raw = socket.create_connection(("127.0.0.1", port))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        var = s16(b"MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0)  # clean session, no keepalive
        body = var + s16(client_id.encode())
        self.s.sendall(b"\x10" + rlen(len(body)) + body)
        self.buf = b""
        self.acked = 0
        while len(self.buf) < 4:
            self.buf += self.s.recv(4096)
        if self.buf[0] != 0x20 or self.buf[3] != 0:
            raise RuntimeError(f"CONNACK refused: {self.buf[:4]!r}")
        self.buf = self.buf[4:]
        self.pid = 0

    def publish_packet(self, topic, payload):
        self.pid = self.pid % 65535 + 1
        body = s16(topic) + struct.pack("!H", self.pid) + payload
        return b"\x32" + rlen(len(body)) + body

    def pump(self, timeout):
        """Reads and counts PUBACKs for up to `timeout` seconds."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if self.s.pending() == 0:
                r, _, _ = select.select([self.s], [], [], max(left, 0))
                if not r:
                    return
            data = self.s.recv(65536)
            if not data:
                raise RuntimeError("broker closed the connection")
            self.buf += data
            # PUBACKs are 4 bytes each (0x40 0x02 id id); nothing else is expected.
            n = len(self.buf) // 4
            self.acked += sum(1 for i in range(n) if self.buf[4 * i] == 0x40)
            self.buf = self.buf[4 * n:]
            if time.monotonic() >= end:
                return


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pki", required=True)
    ap.add_argument("--cert", default="loadgen")
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    c = Conn(a.port, a.pki, a.cert, f"{a.cert}-{a.first}")
    devices = [(f"fleet-{i:06d}", 1_000_000 + i * 37) for i in range(a.first, a.first + a.count)]
    topics = {d: f"gridmeter/v1/{d}/readings".encode() for d, _ in devices}
    slices = 10
    per_slice = [devices[k::slices] for k in range(slices)]
    published, max_lag, tick = 0, 0.0, 0
    t0 = time.monotonic()
    while not stop[0] and tick < a.seconds:
        for k in range(slices):
            due = t0 + tick + k / slices
            now = time.monotonic()
            if due > now:
                c.pump(due - now)
            else:
                max_lag = max(max_lag, now - due)
            # Never more than ~60k unacknowledged (packet ids are 16 bit).
            while published - c.acked > 60000 - len(per_slice[k]):
                c.pump(0.05)
            ts = datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
            out = bytearray()
            for d, base in per_slice[k]:
                payload = ('{"device_id":"%s","readings":[{"seq":%d,"ts":"%s","channel":"energy_import",'
                           '"kind":"counter","unit":"Wh","value":"%d.5"}]}') % (d, tick + 1, ts, base + tick * 3)
                out += c.publish_packet(topics[d], payload.encode())
            c.s.sendall(out)
            published += len(per_slice[k])
        tick += 1
    elapsed = time.monotonic() - t0
    deadline = time.monotonic() + 120
    while c.acked < published and time.monotonic() < deadline:
        c.pump(0.2)
    c.s.sendall(b"\xe0\x00")
    c.s.close()
    with open(a.out, "w") as f:
        json.dump({"published": published, "acked": c.acked, "seconds": elapsed, "ticks": tick,
                   "max_schedule_lag_s": max_lag}, f)


if __name__ == "__main__":
    main()
