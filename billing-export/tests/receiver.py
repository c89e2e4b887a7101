"""A local HTTP receiver for tests/webhooks.rs and tests/zuora.rs (127.0.0.1, a free port
printed as "PORT n"), written independently of the Rust sender:

  python3 tests/receiver.py STATE_DIR SECRET FAIL_FIRST

- POST /hooks: a webhook. Verifies `Gridmeter-Signature: t=..,v1=..` as HMAC-SHA256 of
  "<t>.<body>" with SECRET (and t within 5 minutes), that the body is JSON whose `id` equals
  `Gridmeter-Event-Id`; answers 400 to a bad signature, 500 to the first FAIL_FIRST attempts
  of each event, then 200; processes each event id once (duplicates answered 200, counted).
- POST /v1/usage: a Zuora usage upload (multipart/form-data, field `file`, bearer token
  SECRET). Fails the first FAIL_FIRST attempts per file with 503, then stores the file and
  checks it against Zuora's usage file template with Python's csv module; answers like Zuora
  (`success`, `size`, `checkImportStatus`).
Every request is appended to STATE_DIR/requests.jsonl.
"""
import datetime
import email.parser
import email.policy
import hashlib
import hmac
import json
import os
import re
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

STATE, SECRET, FAIL_FIRST = sys.argv[1], sys.argv[2], int(sys.argv[3])
attempts = {}
processed = set()
TEMPLATE = ["ACCOUNT_ID", "UOM", "QTY", "STARTDATE", "ENDDATE", "SUBSCRIPTION_ID", "CHARGE_ID", "DESCRIPTION"]


def record(entry):
    with open(os.path.join(STATE, "requests.jsonl"), "a") as f:
        f.write(json.dumps(entry) + "\n")


def check_usage_file(text):
    """Problems of a usage file against the template's documented columns."""
    import csv
    import decimal
    import io
    problems = []
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows or rows[0] != TEMPLATE:
        return [f"header {rows[:1]} is not the template's {TEMPLATE}"], 0
    for i, r in enumerate(rows[1:], 2):
        if len(r) != len(TEMPLATE):
            problems.append(f"row {i}: {len(r)} cells")
            continue
        row = dict(zip(TEMPLATE, r))
        for required in ["ACCOUNT_ID", "UOM", "QTY", "STARTDATE"]:
            if not row[required]:
                problems.append(f"row {i}: {required} is empty")
        try:
            decimal.Decimal(row["QTY"])
        except decimal.InvalidOperation:
            problems.append(f"row {i}: QTY {row['QTY']!r} is not a number")
        for col in ["STARTDATE", "ENDDATE"]:
            try:
                datetime.datetime.strptime(row[col], "%m/%d/%Y")
            except ValueError:
                problems.append(f"row {i}: {col} {row[col]!r} is not MM/DD/YYYY")
    return problems, len(rows) - 1


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body=b""):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path == "/hooks":
            return self.hook(body)
        if self.path == "/v1/usage":
            return self.usage(body)
        self.reply(404)

    def hook(self, body):
        sig = self.headers.get("Gridmeter-Signature", "")
        eid = self.headers.get("Gridmeter-Event-Id", "")
        m = re.fullmatch(r"t=(\d+),v1=([0-9a-f]{64})", sig)
        verified = False
        if m:
            want = hmac.new(SECRET.encode(), m.group(1).encode() + b"." + body, hashlib.sha256).hexdigest()
            verified = hmac.compare_digest(want, m.group(2)) and abs(time.time() - int(m.group(1))) < 300
        try:
            event = json.loads(body)
        except ValueError:
            event = {}
        n = attempts[eid] = attempts.get(eid, 0) + 1
        entry = {"path": "/hooks", "event_id": eid, "attempt": n, "verified": verified,
                 "id_matches": event.get("id") == eid, "type": event.get("type"), "event": event}
        if not verified:
            entry["status"] = 400
        elif n <= FAIL_FIRST:
            entry["status"] = 500
        else:
            entry["status"] = 200
            entry["duplicate"] = eid in processed
            processed.add(eid)
        record(entry)
        self.reply(entry["status"])

    def usage(self, body):
        auth_ok = self.headers.get("Authorization") == "Bearer " + SECRET
        msg = email.parser.BytesParser(policy=email.policy.default).parsebytes(
            b"Content-Type: " + self.headers.get("Content-Type", "").encode() + b"\r\n\r\n" + body)
        parts = [p for p in msg.iter_parts() if p.get_param("name", header="content-disposition") == "file"] \
            if msg.is_multipart() else []
        if not auth_ok or len(parts) != 1:
            record({"path": "/v1/usage", "status": 400, "auth_ok": auth_ok, "parts": len(parts)})
            return self.reply(400)
        name = parts[0].get_filename()
        data = parts[0].get_payload(decode=True)
        n = attempts[name] = attempts.get(name, 0) + 1
        if n <= FAIL_FIRST:
            record({"path": "/v1/usage", "file": name, "attempt": n, "status": 503})
            return self.reply(503)
        with open(os.path.join(STATE, name), "wb") as f:
            f.write(data)
        problems, rows = check_usage_file(data.decode("utf-8"))
        record({"path": "/v1/usage", "file": name, "attempt": n, "status": 200, "rows": rows,
                "bytes": len(data), "name_ok": len(name) <= 50, "problems": problems,
                "sha256": hashlib.sha256(data).hexdigest()})
        self.reply(200, json.dumps({"success": True, "size": len(data),
                                    "checkImportStatus": f"/v1/usage/{hashlib.sha1(data).hexdigest()}/status"}).encode())


server = HTTPServer(("127.0.0.1", 0), Handler)
print("PORT", server.server_address[1], flush=True)
server.serve_forever()
