#!/usr/bin/env python3
"""Fleet benchmark: N simulated devices at 1 reading/s through Mosquitto (mTLS), the collector
and the aggregator, on this machine.

    cargo build --release --workspace --bins --examples --locked
    python3 bench/fleet/run.py                          # 10,000 devices, 120 s
    python3 bench/fleet/run.py --devices 2000 --seconds 60 --bin-dir target/debug

Reports: sustained throughput (readings landed per second of the run), end-to-end latency
percentiles (reading ts -> collector received_at, and ts -> the Parquet file holding it
visible), CPU (% of one core) and peak RSS of mosquitto, the collector, the load generator
and one aggregator run, bytes per reading on disk (raw Parquet; usage tables separately).
The broker runs without the per-device ACL so that a few load-generator connections can
publish as thousands of devices (every device of a real fleet has its own connection; the
broker-side cost of 10k TLS connections is NOT measured here, see docs/capacity-planning.md).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "tests" / "faults"))

import duckdb  # noqa: E402
from deltalake import DeltaTable  # noqa: E402

import harness as h  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / CLK
    except (OSError, IndexError):
        return None


def rss_mb(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--shards", type=int, default=2, help="load generator processes (MQTT connections)")
    ap.add_argument("--bin-dir", default=None, help="default: target/release if built, else target/debug")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", default=None, help="write the figures here too")
    a = ap.parse_args()
    bin_dir = Path(a.bin_dir) if a.bin_dir else h.ROOT / "target" / "release"
    if not (bin_dir / "gridmeter-collector").exists():
        bin_dir = h.ROOT / "target" / "debug"
        print("WARNING: no release build; using target/debug (figures not representative)", flush=True)
    os.environ["GRIDMETER_BIN_DIR"] = str(bin_dir)
    work = Path(tempfile.mkdtemp(prefix="gm-fleet-"))
    print(f"work dir {work}; binaries {bin_dir}", flush=True)
    try:
        run(a, work)
    finally:
        h.Proc.kill_all()
        if not a.keep:
            subprocess.run(["rm", "-rf", str(work)])


def run(a, work):
    pki = work / "pki"
    h.pki_init(pki, [], clients=["loadgen"])
    broker = h.Broker(work, pki, acl=False, extra="max_inflight_messages 1000").start()
    root = work / "data"
    ctext, cport = h.collector_toml(pki, work / "wal", broker.port, data_root=root,
                                    extra="flush_interval_ms = 2000\nflush_max_readings = 200000\ngroup_commit_max_messages = 2000")
    ctext = ctext.replace("flush_interval_ms = 500\n", "", 1)
    (work / "collector.toml").write_text(ctext)
    collector = h.Proc("collector", [h.bin_path("gridmeter-collector"), "--config", str(work / "collector.toml")], work).start()
    h.wait_until(lambda: (h.metrics(cport) or {}).get("gridmeter_collector_connected", 0) >= 1, 60, "collector connected")

    per = a.devices // a.shards
    gens = []
    for k in range(a.shards):
        n = per if k < a.shards - 1 else a.devices - per * (a.shards - 1)
        gens.append(h.Proc(f"loadgen-{k}", [sys.executable, str(HERE / "loadgen.py"), "--port", str(broker.port),
                                            "--pki", str(pki), "--first", str(k * per), "--count", str(n),
                                            "--seconds", str(a.seconds), "--out", str(work / f"loadgen-{k}.json")],
                           work).start())
    procs = {"mosquitto": [broker.proc], "collector": [collector], "loadgen": gens}
    # Steady-state window: skip the first 10% (connect, TLS, JIT of page cache).
    warm = max(5.0, a.seconds * 0.1)
    time.sleep(warm)
    t0 = time.monotonic()
    cpu0 = {k: sum(cpu_seconds(p.p.pid) or 0 for p in v) for k, v in procs.items()}
    m0 = h.metrics(cport) or {}
    peak = {k: 0.0 for k in procs}
    while all(g.alive() for g in gens) and time.monotonic() - t0 < a.seconds - warm:
        for k, v in procs.items():
            peak[k] = max(peak[k], sum(rss_mb(p.p.pid) or 0 for p in v))
        time.sleep(1)
    t1 = time.monotonic()
    cpu1 = {k: sum(cpu_seconds(p.p.pid) or 0 for p in v) for k, v in procs.items()}
    m1 = h.metrics(cport) or {}
    for g in gens:
        try:
            g.p.wait(timeout=180)
        except subprocess.TimeoutExpired:
            m = h.metrics(cport) or {}
            sys.exit(f"FAIL: load generators still waiting for PUBACKs 180 s after the run (overload); collector: "
                     + ", ".join(f"{k}={v:.0f}" for k, v in m.items() if k.endswith(("_total", "connected"))
                                 and ("readings" in k or "messages_received" in k or "connected" in k)))
    summaries = [json.loads((work / f"loadgen-{k}.json").read_text()) for k in range(a.shards)]
    published = sum(s["published"] for s in summaries)
    acked = sum(s["acked"] for s in summaries)
    # Wait until the collector has landed everything it received.
    t_drain = time.monotonic()
    h.wait_until(lambda: (h.metrics(cport) or {}).get("gridmeter_collector_readings_accepted_total", 0) >= acked,
                 180, "collector to accept every acked reading", interval=1)
    def raw_rows():
        try:
            return DeltaTable(str(root / "raw")).to_pyarrow_table(columns=["seq"]).num_rows
        except Exception:  # noqa: BLE001 - no table yet
            return 0
    h.wait_until(lambda: raw_rows() >= acked,
                 180, "raw landing to hold every reading", interval=1)
    drain_s = time.monotonic() - t_drain
    m_end = h.metrics(cport) or {}
    reconnects = collector.log_path.read_text(errors="replace").count("reconnecting")
    peak["collector"] = max(peak["collector"], rss_mb(collector.p.pid) or 0)
    collector.stop()
    broker.stop()

    steady = t1 - t0
    landed_steady = m1.get("gridmeter_collector_readings_accepted_total", 0) - m0.get("gridmeter_collector_readings_accepted_total", 0)
    con = duckdb.connect()
    # The committed data files (from the Delta log) and when each was written.
    files = {p: Path(p).stat().st_mtime for p in
             (u.removeprefix("file://") for u in DeltaTable(str(root / "raw")).file_uris())}
    con.execute("CREATE TABLE mt (filename VARCHAR, mtime DOUBLE)")
    con.executemany("INSERT INTO mt VALUES (?, ?)", list(files.items()))
    lat = con.execute(f"""
        SELECT quantile_cont(r, [0.5, 0.9, 0.99, 0.999]), max(r), quantile_cont(v, [0.5, 0.9, 0.99]), max(v), count(*),
               count(DISTINCT (device_id, seq))
        FROM (SELECT (epoch_us(received_at) - epoch_us(ts)) / 1e6 AS r, mt.mtime - epoch_us(ts) / 1e6 AS v, device_id, seq
              FROM read_parquet({sorted(files)!r}, filename=true) x JOIN mt USING (filename))""").fetchone()
    raw_bytes = sum(Path(f).stat().st_size for f in files)

    # One aggregator run over everything landed (1m and 15m windows).
    cfg = work / "agg.toml"
    cfg.write_text(f'data_root = {h.q(root)}\nwindows = ["1m", "15m"]\nallowed_lateness = "1s"\n'
                   'default_register_max = "999999999999"\n')
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    p = subprocess.Popen([h.bin_path("gridmeter-aggregator"), "--config", str(cfg), "run"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    agg_peak = 0.0
    while p.poll() is None:
        agg_peak = max(agg_peak, rss_mb(p.pid) or 0)
        time.sleep(0.2)
    agg_wall = time.monotonic() - start
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    agg_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    if p.returncode not in (0, None):
        print("aggregator failed:", p.stderr.read().decode()[-2000:])
    usage_tables = [DeltaTable(str(root / t)) for t in ("usage_1m", "usage_15m", "usage_history_1m", "usage_history_15m")
                    if (root / t / "_delta_log").exists()]
    usage_bytes = sum(Path(u.removeprefix("file://")).stat().st_size for t in usage_tables for u in t.file_uris())
    usage_rows = sum(t.to_pyarrow_table(columns=["revision"]).num_rows for t in usage_tables)

    fig = {
        "devices": a.devices,
        "offered_readings_per_s": a.devices,
        "published": published,
        "acked_by_broker": acked,
        "loadgen_max_schedule_lag_s": max(s["max_schedule_lag_s"] for s in summaries),
        "steady_window_s": round(steady, 1),
        "sustained_landed_readings_per_s": round(landed_steady / steady, 1),
        "drain_after_stop_s": round(drain_s, 1),
        "collector_duplicates": m_end.get("gridmeter_collector_readings_duplicate_total", 0),
        "collector_reconnects": reconnects,
        "raw_rows": lat[4],
        "distinct_device_seq": lat[5],
        "latency_ts_to_received_s": {"p50": lat[0][0], "p90": lat[0][1], "p99": lat[0][2], "p99.9": lat[0][3], "max": lat[1]},
        "latency_ts_to_parquet_visible_s": {"p50": lat[2][0], "p90": lat[2][1], "p99": lat[2][2], "max": lat[3]},
        "cpu_pct_of_one_core": {k: round(100 * (cpu1[k] - cpu0[k]) / steady, 1) for k in procs},
        "peak_rss_mb": {k: round(v, 1) for k, v in peak.items()},
        "raw_parquet_files": len(files),
        "raw_bytes_per_reading": round(raw_bytes / max(lat[4], 1), 2),
        "aggregator": {"wall_s": round(agg_wall, 2), "cpu_s": round(agg_cpu, 2), "peak_rss_mb": round(agg_peak, 1),
                       "readings_per_s": round(lat[4] / agg_wall, 1), "usage_rows": usage_rows,
                       "usage_bytes": usage_bytes},
    }
    print(json.dumps(fig, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(fig, indent=2))
    if lat[4] != lat[5] or lat[5] < acked:
        print(f"FAIL: raw holds {lat[4]} rows, {lat[5]} distinct; {acked} acked by the broker")
        sys.exit(1)


if __name__ == "__main__":
    main()
