#!/usr/bin/env python3
"""An IEC 62056-21 mode C meter for the agent's tests, on one end of a socat pty pair:
answers "/?!" with its identification, waits for the acknowledgement "ACK 0 Z 0" and sends
its readout list framed STX ... ! CR LF ETX BCC.

usage: iec62056_meter.py PORT [--bad-bcc]
Prints "ready" once the port is open.
"""

import sys

import serial

IDENT = b"/GMT5GRIDMETER-TEST\r\n"
DATA = (
    b"0.0.0(12345678)\r\n"
    b"1.8.0(001234.567*kWh)\r\n"
    b"2.8.0(000012.345*kWh)\r\n"
    b"1.8.1(000800.100*kWh)\r\n"
    b"16.7.0(0.540*kW)\r\n"
    b"32.7.0(230.1*V)\r\n"
    b"!\r\n"
)


def read_line(port):
    line = b""
    while not line.endswith(b"\r\n"):
        line += port.read(1)
    return line


def main():
    port = serial.Serial(sys.argv[1], 300)
    bad = "--bad-bcc" in sys.argv
    print("ready", flush=True)
    while True:
        request = read_line(port)
        if not request.startswith(b"/?") or not request.endswith(b"!\r\n"):
            continue
        port.write(IDENT)
        ack = read_line(port)
        if ack[:1] != b"\x06":
            continue
        body = DATA + b"\x03"
        bcc = 0
        for b in body:
            bcc ^= b
        if bad:
            bcc ^= 0x55
        port.write(b"\x02" + body + bytes([bcc]))
        port.flush()


if __name__ == "__main__":
    main()
