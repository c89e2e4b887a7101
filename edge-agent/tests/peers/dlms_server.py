#!/usr/bin/env python3
"""A DLMS/COSEM meter for the agent's tests: the Gurux DLMS server (gurux-dlms on PyPI)
with logical name referencing over the IEC 62056-47 TCP wrapper on 127.0.0.1, lowest
security (public client 16, logical device 1).

usage: dlms_server.py PORT START_EPOCH ROWS

Objects: logical device name 0.0.42.0.0.255 ("GRX0000012345678"); clock 0.0.1.0.0.255;
registers 1.0.1.8.0.255 (active energy import, 12345678 x
10^-1 Wh, double-long-unsigned) and 1.0.2.8.0.255 (export, 4321 x 10^0 Wh); a load profile
1.0.99.1.0.255 capturing the clock and 1.0.1.8.0.255 every 15 minutes: ROWS rows from
START_EPOCH (UTC), the register value growing by 250 each row. A range read of the profile
(selector 1: restricting object the clock) returns the rows inside the range, which the
server filters itself; an answer longer than the client's max PDU size comes in blocks.
Prints "ready" once listening.
"""

import datetime
import socket
import sys
import threading

from gurux_dlms import GXByteBuffer, GXDateTime, GXDLMSServer, GXServerReply
from gurux_dlms.GXDLMSSettings import GXDLMSSettings
from gurux_dlms.internal._GXDataInfo import _GXDataInfo
from gurux_dlms.internal._GXCommon import _GXCommon
from gurux_dlms.enums import (
    AccessMode,
    DataType,
    InterfaceType,
    MethodAccessMode,
    SourceDiagnostic,
    Unit,
)
from gurux_dlms.objects import (
    GXDLMSAssociationLogicalName,
    GXDLMSCaptureObject,
    GXDLMSClock,
    GXDLMSData,
    GXDLMSProfileGeneric,
    GXDLMSRegister,
)


# gurux-dlms 1.0.203's server calls sr.setReply() and sr.getConnectionInfo(), which its
# GXServerReply lacks.
if not hasattr(GXServerReply, "setReply"):
    GXServerReply.setReply = lambda self, value: setattr(self, "reply", value)
if not hasattr(GXServerReply, "getConnectionInfo"):
    GXServerReply.getConnectionInfo = lambda self: self.connectionInfo
# ... and, for the next data block of a long answer, settings.gbtWndowSize and
# settings.getMaxPduSize(), which its GXDLMSSettings lacks.
if not hasattr(GXDLMSSettings, "gbtWndowSize"):
    GXDLMSSettings.gbtWndowSize = property(lambda self: self.gbtWindowSize)
if not hasattr(GXDLMSSettings, "getMaxPduSize"):
    GXDLMSSettings.getMaxPduSize = lambda self: self.maxPduSize


def to_utc(settings, value):
    """A range bound (GXDateTime, datetime, or the raw octet string) as aware UTC."""
    if isinstance(value, (bytes, bytearray)):
        info = _GXDataInfo()
        info.type_ = DataType.DATETIME
        value = _GXCommon.getData(settings, GXByteBuffer(value), info)
    if isinstance(value, GXDateTime):
        value = value.value
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value.astimezone(datetime.timezone.utc)


class Profile(GXDLMSProfileGeneric):
    """The load profile: a range read (selector 1) gets the rows inside [from, to]."""

    rows = []

    def getValue(self, settings, e):
        if e.index == 2:
            rows = self.rows
            if e.selector == 1 and e.parameters:
                lo = to_utc(settings, e.parameters[1])
                hi = to_utc(settings, e.parameters[2])
                rows = [r for r in rows if lo <= r[0] <= hi]
                e.selector = 0
            self.buffer = [[GXDateTime(t), v] for t, v in rows]
            self.entriesInUse = len(rows)
        return super().getValue(settings, e)


class Meter(GXDLMSServer):
    def __init__(self, start, rows):
        super().__init__(True, InterfaceType.WRAPPER)
        self.clock = GXDLMSClock("0.0.1.0.0.255")
        imp = GXDLMSRegister("1.0.1.8.0.255")
        imp.value = 12345678
        imp.scaler = 0.1
        imp.unit = Unit.ACTIVE_ENERGY
        imp.setDataType(2, DataType.UINT32)
        imp.setUIDataType(2, DataType.UINT32)
        exp = GXDLMSRegister("1.0.2.8.0.255")
        exp.value = 4321
        exp.scaler = 1
        exp.unit = Unit.ACTIVE_ENERGY
        exp.setDataType(2, DataType.UINT32)
        pg = Profile("1.0.99.1.0.255")
        pg.captureObjects.append((self.clock, GXDLMSCaptureObject(2, 0)))
        pg.captureObjects.append((imp, GXDLMSCaptureObject(2, 0)))
        pg.capturePeriod = 900
        t0 = datetime.datetime.fromtimestamp(start, datetime.timezone.utc)
        self.rows = [
            (t0 + datetime.timedelta(minutes=15 * i), 10_000_000 + 250 * i)
            for i in range(rows)
        ]
        pg.profileEntries = rows
        pg.rows = self.rows
        self.profile = pg
        # The association's object list is filled here: initialize() would add the whole
        # collection as one item.
        name = GXDLMSData("0.0.42.0.0.255")
        name.value = b"GRX0000012345678"
        name.setDataType(2, DataType.OCTET_STRING)
        association = GXDLMSAssociationLogicalName()
        for o in (self.clock, imp, exp, pg, name):
            self.items.append(o)
            association.objectList.append(o)
        self.items.append(association)
        self.initialize()

    # gurux-dlms 1.0.203's GET handlers call these, which its server lacks.
    def notifyRead(self, *args):
        pass

    def getTransaction(self):
        return self.transaction

    def setTransaction(self, transaction):
        self.transaction = transaction

    def isTarget(self, serverAddress, clientAddress):
        return True

    def onValidateAuthentication(self, authentication, password):
        return SourceDiagnostic.NONE

    def onGetAttributeAccess(self, arg):
        return AccessMode.READ

    def onGetMethodAccess(self, arg):
        return MethodAccessMode.NO_ACCESS

    def onPreRead(self, args=None):
        pass

    def onPostRead(self, args=None):
        pass

    def onPreWrite(self, args):
        pass

    def onPostWrite(self, args):
        pass

    def onPreAction(self, args):
        pass

    def onPostAction(self, args):
        pass

    def onPreGet(self, args):
        pass

    def onPostGet(self, args):
        pass

    def onFindObject(self, objectType, sn, ln):
        return None

    def onConnected(self, connectionInfo):
        pass

    def onInvalidConnection(self, connectionInfo):
        pass

    def onDisconnected(self, connectionInfo):
        pass


def serve(conn, meter):
    with conn:
        while True:
            data = conn.recv(4096)
            if not data:
                return
            sr = GXServerReply(data)
            meter.handleRequest(sr)
            if sr.reply:
                conn.sendall(bytes(sr.reply))


def main():
    port, start, rows = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    meter = Meter(start, rows)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    print("ready", flush=True)
    while True:
        conn, _ = sock.accept()
        meter.reset()
        threading.Thread(target=serve, args=(conn, meter), daemon=True).start()


if __name__ == "__main__":
    main()
