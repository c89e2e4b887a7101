#!/usr/bin/env python3
"""A wired M-Bus slave for the agent's tests, on a serial port (one end of a socat pty
pair). Request frames are parsed with pymeterbus (short frames) and checked by hand (the
long SND_UD selection frame, which pymeterbus does not parse); answers are the configured
telegrams, each checked with pymeterbus before it is served.

usage: mbus_slave.py PORT METERS.json

METERS.json: {"meters": [{"primary": 5, "secondary": "12345678", "corrupt": false,
                          "telegrams": ["72 78 56 34 12 ..."]}]}
A telegram is the user data from the CI field on; the slave frames it as RSP_UD
(68 L L 68 08 A ... CS 16). Successive REQ_UD2 get successive telegrams (multi-telegram
answers), SND_NKE starts over. A corrupt meter's frames go out with a wrong checksum.
An address no meter has gets no answer. Prints "ready" once the port is open.
"""

import json
import sys

import meterbus
import serial


def rsp_ud(address, user_data):
    body = bytes([0x08, address]) + user_data
    return (
        bytes([0x68, len(body), len(body), 0x68])
        + body
        + bytes([sum(body) & 0xFF, 0x16])
    )


def read_frame(port):
    """One request frame, or None on a stray byte."""
    first = port.read(1)
    if not first:
        return None
    if first[0] == 0x10:
        return first + port.read(4)
    if first[0] == 0x68:
        head = port.read(3)
        length = head[0]
        return first + head + port.read(length + 2)
    return None


def main():
    path, config = sys.argv[1], sys.argv[2]
    with open(config) as f:
        meters = json.load(f)["meters"]
    for m in meters:
        m["telegrams"] = [bytes.fromhex(t) for t in m["telegrams"]]
        m["next"] = 0
        for t in m["telegrams"]:
            meterbus.load(rsp_ud(m.get("primary") or 0xFD, t))  # a valid RSP_UD
    port = serial.Serial(path, 2400, parity=serial.PARITY_NONE, timeout=None)
    print("ready", flush=True)
    selected = None
    while True:
        frame = read_frame(port)
        if frame is None:
            continue
        if frame[0] == 0x10:
            t = meterbus.load(frame)
            c, a = t.header.cField.parts[0], t.header.aField.parts[0]
            meter = selected if a == 0xFD else next(
                (m for m in meters if m.get("primary") == a), None
            )
            if meter is None:
                continue
            if c == 0x40:  # SND_NKE
                meter["next"] = 0
                port.write(b"\xe5")
            elif c in (0x5B, 0x7B):  # REQ_UD2
                t = meter["telegrams"][meter["next"] % len(meter["telegrams"])]
                meter["next"] += 1
                out = bytearray(rsp_ud(a, t))
                if meter.get("corrupt"):
                    out[-2] ^= 0xFF
                port.write(bytes(out))
        elif len(frame) >= 17 and frame[4] in (0x53, 0x73) and frame[5] == 0xFD and frame[6] == 0x52:
            body = frame[4:-2]
            if sum(body) & 0xFF != frame[-2]:
                continue
            digits = "".join(f"{b:02X}" for b in reversed(frame[7:11]))
            selected = next((m for m in meters if m.get("secondary") == digits), None)
            if selected is not None:
                selected["next"] = 0
                port.write(b"\xe5")


if __name__ == "__main__":
    main()
