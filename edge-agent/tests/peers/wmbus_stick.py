#!/usr/bin/env python3
"""A wireless M-Bus receiver stick for the agent's tests: writes telegrams, one hex line
each (as culfw sticks print them, with a leading "b"), to one end of a socat pty pair.

usage: wmbus_stick.py PORT TELEGRAMS.json

TELEGRAMS.json: {"telegrams": [{"hex": "...", "key": null}, ...]}
A telegram with a "key" is encrypted first with AES-128-CBC, security mode 5 (EN 13757-7 /
OMS: IV = M-field, A-field, then the access number eight times; plaintext padded with
0x2F; the configuration word says mode 5 and the number of blocks), using pycryptodome.
After "ready" the telegrams are written over and over, 50 ms apart, as meters repeat
their transmissions, until stdin is closed.
"""

import json
import sys
import threading
import time

import serial
from Crypto.Cipher import AES


def encrypt_mode5(frame, key):
    # L C M(2) A(6) CI(0x7A) ACC ST CW(2) payload
    head, payload = bytearray(frame[:15]), bytes(frame[15:])
    assert head[10] == 0x7A, "short transport header expected"
    if not payload.startswith(b"\x2f\x2f"):
        payload = b"\x2f\x2f" + payload  # mode 5 plaintext starts with two fillers
    padded = payload + b"\x2f" * (-len(payload) % 16)
    blocks = len(padded) // 16
    head[13] = blocks << 4  # CW low byte: number of encrypted blocks
    head[14] = 0x05  # CW high byte: security mode 5
    iv = bytes(frame[2:10]) + bytes([frame[11]]) * 8
    body = AES.new(bytes.fromhex(key), AES.MODE_CBC, iv).encrypt(padded)
    out = head + body
    out[0] = len(out) - 1
    return bytes(out)


def main():
    path, config = sys.argv[1], sys.argv[2]
    with open(config) as f:
        telegrams = json.load(f)["telegrams"]
    frames = []
    for t in telegrams:
        frame = bytes.fromhex(t["hex"])
        if t.get("key"):
            frame = encrypt_mode5(frame, t["key"])
        frames.append(b"b" + frame.hex().upper().encode() + b"\r\n")
    port = serial.Serial(path, 9600)
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    print("ready", flush=True)
    while not done.is_set():
        for f in frames:
            port.write(f)
            port.flush()
            time.sleep(0.05)


if __name__ == "__main__":
    main()
