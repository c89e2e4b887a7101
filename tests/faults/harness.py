"""Process harness for the fault suite and the fleet benchmark.

Starts the real parts (Mosquitto with mTLS and the per-device ACL, the agent, collector and
aggregator binaries, moto's S3 server) as child processes in their own process groups, so a
test can `kill -9` any of them at any moment and everything is torn down in `finally`.
Nothing is mocked: the only thing in between is `FaultyProxy`, an HTTP relay in front of the
S3 server that can be told to answer 503 for a while (moto keeps its objects in memory, so
stopping moto itself would lose what was already landed).
"""

import http.client
import http.server
import os
import random
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def bin_path(name, release=False):
    env = os.environ.get("GRIDMETER_BIN_DIR")
    base = Path(env) if env else ROOT / "target" / ("release" if release else "debug")
    p = base / name
    if not p.exists() and name == "gridmeter":
        # Only the PKI tool: any build will do.
        p = next((d / name for d in (ROOT / "target" / "release", ROOT / "target" / "debug") if (d / name).exists()), p)
    if not p.exists():
        raise FileNotFoundError(f"{p} missing: cargo test --workspace --no-run builds it")
    return str(p)


def _ephemeral_low():
    """The first port of the kernel's ephemeral range (outgoing connections' local ports)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_ports = random.Random()
_given = set()


def free_port():
    """A port for a listener on 127.0.0.1 that is free now and not handed out before in this
    run. It is taken below the ephemeral range: a port from there (what binding port 0
    returns) can become the local port of some outgoing connection before the process it is
    meant for binds it, and that process then fails with "Address already in use"."""
    high = min(_ephemeral_low(), 65536)
    low = min(20000, high // 2)
    for _ in range(1000):
        port = _ports.randrange(low, high)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free port on 127.0.0.1 in [{low}, {high})")


def wait_until(cond, timeout, what, interval=0.25):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def q(p):
    return '"' + str(p).replace("\\", "\\\\").replace('"', '\\"') + '"'


class Proc:
    """A child process in its own process group, logging to a file."""

    registry = []

    def __init__(self, name, argv, log_dir, env=None):
        self.name, self.argv, self.env = name, argv, env
        self.log_path = Path(log_dir) / f"{name}.log"
        self.p = None
        Proc.registry.append(self)

    def start(self):
        log = open(self.log_path, "ab")
        env = dict(os.environ, **(self.env or {}))
        env.setdefault("RUST_LOG", "warn")
        self.p = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        log.close()
        return self

    def alive(self):
        return self.p is not None and self.p.poll() is None

    def signal(self, sig):
        if self.alive():
            try:
                os.killpg(self.p.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self):
        self.signal(signal.SIGKILL)
        if self.p:
            self.p.wait()

    def stop(self, timeout=20):
        if not self.alive():
            return
        self.signal(signal.SIGTERM)
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, n=30):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    @classmethod
    def kill_all(cls):
        for p in cls.registry:
            try:
                p.kill()
            except Exception:  # noqa: BLE001 - best-effort cleanup
                pass
        cls.registry.clear()


def pki_init(dir_, devices, collectors=("0",)):
    """CA, CRL, broker, the collectors (CN collector-<name>) and the devices."""
    gm = bin_path("gridmeter")
    args = [gm, "pki", "init", "--dir", str(dir_)]
    for d in devices:
        args += ["--device", d]
    for c in collectors:
        args += ["--collector", c]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)


# The shipped ACL (collector-0 to collector-3, per-device topics).
ACL = (ROOT / "deploy" / "mosquitto" / "acl").read_text()


class Broker:
    """Mosquitto as core/src/testkit.rs configures it (mTLS, CN as username, ACL, persistence).
    `autosave` is the persistence interval in seconds; deploy/mosquitto ships 60."""

    def __init__(self, work, pki, acl=True, extra="", autosave=1):
        self.dir = Path(work) / "broker"
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        (self.dir / "acl").write_text(ACL)
        user = os.environ.get("USER") or ("root" if os.geteuid() == 0 else "")
        lines = [
            "per_listener_settings false",
            f"user {user}" if user else "",
            "allow_anonymous false",
            "persistence true",
            f"persistence_location {self.dir / 'data'}/",
            f"autosave_interval {autosave}",
            f"log_dest file {self.dir / 'mosquitto.log'}",
            "max_queued_messages 1000000",
            "max_inflight_messages 100",
            f"listener {self.port} 127.0.0.1",
            f"cafile {pki / 'ca.crt'}",
            f"certfile {pki / 'server.crt'}",
            f"keyfile {pki / 'server.key'}",
            "require_certificate true",
            "use_identity_as_username true",
            "use_username_as_clientid true",
            f"crlfile {pki / 'crl.pem'}",
            f"acl_file {self.dir / 'acl'}" if acl else "",
            extra,
        ]
        conf = self.dir / "mosquitto.conf"
        conf.write_text("\n".join(l for l in lines if l) + "\n")
        self.proc = Proc("mosquitto", [os.environ.get("MOSQUITTO", "/usr/sbin/mosquitto"), "-c", str(conf)],
                         work)

    def start(self):
        self.proc.start()
        def up():
            if not self.proc.alive():
                raise RuntimeError("mosquitto exited: " + (self.dir / "mosquitto.log").read_text(errors="replace")[-2000:])
            return port_open(self.port)
        wait_until(up, 30, "mosquitto to listen")
        return self

    def stop(self):
        self.proc.stop()
        wait_until(lambda: not port_open(self.port), 10, "mosquitto to close its port")

    def kill(self, wipe=False):
        """SIGKILL (a power cut); `wipe` also deletes the persistence file (the worst case)."""
        self.proc.kill()
        wait_until(lambda: not port_open(self.port), 10, "mosquitto to close its port")
        if wipe:
            for f in (self.dir / "data").iterdir():
                f.unlink()


def tls_inline(pki, cert, key):
    return f"{{ ca = {q(pki / 'ca.crt')}, cert = {q(cert)}, key = {q(key)} }}"


class Agent:
    def __init__(self, work, pki, device, broker_port, sim, extra_buffer="", mqtt_extra=""):
        self.device = device
        self.dir = Path(work) / "agents"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.buffer = self.dir / f"{device}.sqlite"
        self.metrics_port = free_port()
        cfg = self.dir / f"{device}.toml"
        cfg.write_text(
            f'device_id = "{device}"\nmetrics_listen = "127.0.0.1:{self.metrics_port}"\n\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {broker_port}\n'
            f"tls = {tls_inline(pki, pki / 'devices' / f'{device}.crt', pki / 'devices' / f'{device}.key')}\n"
            f"reconnect_initial_ms = 200\nreconnect_max_ms = 2000\n"
            f'confirm_timeout = "3s"\nconfirm_timeout_max = "15s"\n{mqtt_extra}\n'
            f"[buffer]\npath = {q(self.buffer)}\ncommit_interval_ms = 100\n{extra_buffer}\n"
            f'[[sources]]\ntype = "simulator"\n{sim}\n')
        self.proc = Proc(f"agent-{device}", [bin_path("gridmeter-agent"), "--config", str(cfg)], work)

    def counters(self):
        """(produced, pending readings, pending gap records) from the SQLite buffer."""
        try:
            con = sqlite3.connect(f"file:{self.buffer}?mode=ro", uri=True, timeout=5)
            try:
                nxt = con.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
                pend = con.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
                gaps = con.execute("SELECT COUNT(*) FROM gaps").fetchone()[0]
            finally:
                con.close()
            return ((nxt[0] - 1) if nxt else 0, pend, gaps)
        except sqlite3.Error:
            return None


def object_store_toml(bucket, endpoint):
    """The [object_store] section for s3://<bucket>/gm on a moto server."""
    return (f'\n[object_store]\nurl = "s3://{bucket}/gm"\nendpoint = "{endpoint}"\n'
            'region = "us-east-1"\naccess_key_id = "testing"\nsecret_access_key = "testing"\nallow_http = true\n')


def collector_toml(pki, wal, broker_port, cid="c1", client_cert="collector-0", share=None,
                   data_root=None, s3=None, extra=""):
    s = f'collector_id = "{cid}"\nwal_dir = {q(wal)}\nflush_interval_ms = 500\nmissing_after_secs = 3600\n{extra}\n'
    mport = free_port()
    s += f'metrics_listen = "127.0.0.1:{mport}"\n'
    if data_root:
        s += f"data_root = {q(data_root)}\n"
    if s3:
        s += object_store_toml(s3["bucket"], s3["endpoint"])
    s += (f'\n[mqtt]\nhost = "127.0.0.1"\nport = {broker_port}\nclient_id = "gm-{cid}"\n'
          f"tls = {tls_inline(pki, pki / 'collectors' / f'{client_cert}.crt', pki / 'collectors' / f'{client_cert}.key')}\n")
    if share:
        s += f'share_group = "{share}"\n'
    return s, mport


def metrics(port):
    """Parses a Prometheus text endpoint into {name: summed value}."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
            text = r.read().decode()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, val = line.rpartition(" ")
        name = name_labels.split("{")[0]
        try:
            out[name] = out.get(name, 0.0) + float(val)
        except ValueError:
            pass
    return out


class FaultyProxy:
    """HTTP relay to an S3 endpoint that answers 503 SlowDown while `failing` is set."""

    def __init__(self, upstream_port):
        self.failing = False
        self.failed_requests = 0
        proxy = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _relay(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                if proxy.failing:
                    proxy.failed_requests += 1
                    msg = b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                c = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
                try:
                    hdrs = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                    c.request(self.command, self.path, body=body, headers=hdrs)
                    r = c.getresponse()
                    data = r.read()
                    self.send_response(r.status)
                    for k, v in r.getheaders():
                        if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    c.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Moto:
    def __init__(self, work):
        self.port = free_port()
        self.proc = Proc("moto", ["python3", "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)], work)

    def start(self):
        self.proc.start()
        wait_until(lambda: port_open(self.port), 60, "moto server")
        return self

    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint(), region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")
