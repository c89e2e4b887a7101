"""A real localstripe (PyPI `localstripe`, a stateful fake Stripe) for tests/stripe.rs, and an
independent reader of what it holds.

  python3 tests/stripe_fixture.py serve STATE_DIR
      runs localstripe's own aiohttp app on 127.0.0.1 (a free port, printed as "PORT n"),
      keeping its pickled store in STATE_DIR instead of /tmp (so tests do not share it);
  python3 tests/stripe_fixture.py setup BASE N
      creates a zero-amount monthly plan and N customers, each with a subscription on it;
      prints [[cus, sub], ...] as JSON (localstripe invoices only through a subscription);
  python3 tests/stripe_fixture.py item BASE cus sub amount / delete BASE ii_...
      creates (prints as JSON) or deletes a pending invoice item that is not ours;
  python3 tests/stripe_fixture.py state BASE cus ...
      prints, per customer, its invoices with their lines and its pending invoice items.
"""
import json
import socket
import sys
import urllib.parse
import urllib.request

KEY = "sk_test_gridmeter"


def call(base, method, path, params=None):
    data = None
    url = base + path
    if params and method == "GET":
        url += "?" + urllib.parse.urlencode(params)
    elif params:
        data = urllib.parse.urlencode(params).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", "Bearer " + KEY)
    with urllib.request.urlopen(req) as r:
        return json.load(r)


def all_pages(base, path, params):
    out, after = [], None
    while True:
        p = dict(params, limit=100)
        if after:
            p["starting_after"] = after
        page = call(base, "GET", path, p)
        out.extend(page["data"])
        if not page.get("has_more") or not page["data"]:
            return out
        after = page["data"][-1]["id"]


def serve(state_dir):
    import os
    import pickle

    from aiohttp import web
    from localstripe import resources, server

    path = os.path.join(state_dir, "localstripe.pickle")

    def dump(self):
        with open(path, "wb") as f:
            pickle.dump(self, f, protocol=pickle.HIGHEST_PROTOCOL)

    resources.Store.dump_to_disk = dump
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print("PORT", sock.getsockname()[1], flush=True)
    web.run_app(server.app, sock=sock, print=None, access_log=None)


def setup(base, n):
    product = call(base, "POST", "/v1/products", {"name": "Metered energy", "type": "service"})
    plan = call(base, "POST", "/v1/plans", {
        "product": product["id"], "amount": 0, "currency": "eur", "interval": "month"})
    out = []
    for i in range(n):
        cus = call(base, "POST", "/v1/customers", {"name": f"Customer {i}"})
        sub = call(base, "POST", "/v1/subscriptions", {"customer": cus["id"], "items[0][plan]": plan["id"]})
        out.append([cus["id"], sub["id"]])
    print(json.dumps(out))


def state(base, customers):
    out = {}
    for cus in customers:
        invoices = []
        for inv in all_pages(base, "/v1/invoices", {"customer": cus}):
            lines = all_pages(base, f"/v1/invoices/{inv['id']}/lines", {})
            invoices.append({
                "id": inv["id"], "subtotal": inv["subtotal"], "total": inv["total"],
                "currency": inv["currency"], "status": inv["status"],
                "lines": [{"amount": l["amount"], "description": l.get("description"),
                           "key": (l.get("metadata") or {}).get("gridmeter_key"),
                           "run": (l.get("metadata") or {}).get("gridmeter_run")} for l in lines],
            })
        pending = [{"id": i["id"], "amount": i["amount"],
                    "key": (i.get("metadata") or {}).get("gridmeter_key")}
                   for i in all_pages(base, "/v1/invoiceitems", {"customer": cus})
                   if i.get("invoice") is None]
        out[cus] = {"invoices": invoices, "pending": pending}
    print(json.dumps(out))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "serve":
        serve(sys.argv[2])
    elif cmd == "setup":
        setup(sys.argv[2], int(sys.argv[3]))
    elif cmd == "item":
        print(json.dumps(call(sys.argv[2], "POST", "/v1/invoiceitems", {
            "customer": sys.argv[3], "subscription": sys.argv[4], "amount": int(sys.argv[5]),
            "currency": "eur", "description": "someone else's charge"})))
    elif cmd == "delete":
        print(json.dumps(call(sys.argv[2], "DELETE", "/v1/invoiceitems/" + sys.argv[3])))
    elif cmd == "state":
        state(sys.argv[2], sys.argv[3:])
