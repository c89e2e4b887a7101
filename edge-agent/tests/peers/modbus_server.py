#!/usr/bin/env python3
"""A pymodbus RTU slave for the agent's tests: on a serial port (one end of a socat pty
pair) or, with --tcp, as an RTU-over-TCP gateway on 127.0.0.1.

usage: modbus_server.py (--serial PORT | --tcp PORT) IMAGE.json

IMAGE.json: {"baudrate": 9600, "parity": "N", "stopbits": 1,
             "corrupt_units": [4],
             "units": {"1": {"holding": {"100": 2305}, "input": {"0": 17}}}}

Registers absent from a unit's image answer with exception 2 (illegal data address). A
unit not in the image never answers (a silent meter). Responses of the units listed in
"corrupt_units" go out with their CRC inverted. Prints "ready" once listening.
"""

import argparse
import asyncio
import json
import logging
import sys

from pymodbus import FramerType
from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusServerContext,
    ModbusSparseDataBlock,
)
from pymodbus.server import ModbusSerialServer, ModbusTcpServer


present = set()


def block(regs):
    return ModbusSparseDataBlock({int(k): int(v) for k, v in regs.items()} or {65535: 0})


def corrupter(units):
    """trace_packet hook: invert the CRC of responses from `units`; send nothing for a
    unit that is not in the image (pymodbus would answer for it)."""

    def trace(sending, data):
        if sending and len(data) >= 4 and data[0] in units:
            return data[:-2] + bytes(b ^ 0xFF for b in data[-2:])
        if sending and data and data[0] not in present:
            return b""
        return data

    return trace


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--serial")
    ap.add_argument("--tcp", type=int)
    ap.add_argument("image")
    args = ap.parse_args()
    with open(args.image) as f:
        image = json.load(f)
    devices = {
        int(u): ModbusDeviceContext(
            hr=block(regs.get("holding", {})), ir=block(regs.get("input", {}))
        )
        for u, regs in image["units"].items()
    }
    context = ModbusServerContext(devices=devices, single=False)
    present.update(devices)
    trace = corrupter(set(image.get("corrupt_units", [])))
    if args.tcp:
        server = ModbusTcpServer(
            context,
            framer=FramerType.RTU,
            address=("127.0.0.1", args.tcp),
            ignore_missing_devices=False,
            trace_packet=trace,
        )
    else:
        server = ModbusSerialServer(
            context,
            framer=FramerType.RTU,
            port=args.serial,
            baudrate=image.get("baudrate", 9600),
            parity=image.get("parity", "N"),
            stopbits=image.get("stopbits", 1),
            ignore_missing_devices=False,
            trace_packet=trace,
        )
    task = asyncio.create_task(server.serve_forever())
    while server.transport is None and not task.done():
        await asyncio.sleep(0.01)
    print("ready", flush=True)
    # Stop when the test closes our stdin.
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await server.shutdown()


if __name__ == "__main__":
    logging.disable(logging.CRITICAL)
    asyncio.run(main())
