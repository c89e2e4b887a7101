#!/usr/bin/env python3
"""gridmeter fault-injection suite: real Mosquitto (mTLS + ACL), real agent/collector/
aggregator binaries, real SQLite buffers, the Delta tables read back by the Python deltalake
package and DuckDB's delta extension.

    python3 tests/faults/fault_suite.py --short          # CI (a few minutes)
    python3 tests/faults/fault_suite.py --soak --minutes 20
    python3 tests/faults/fault_suite.py --short --only s3 --seed 42

Tests:
  chaos      agents, collector kill -9 + restart, broker restart while agents buffer, the
             collector's data root failing writes (as root too) for a while; afterwards every
             produced (device_id, seq) is in raw exactly once or in an agent gap record, the
             collector stopped acking during the outage, 1m/15m usage reconciles to raw, and
             the Python deltalake package and DuckDB's delta_scan read the same raw,
             usage_15m and usage_history_15m.
  s3         the collector landing in a real S3 server (moto) behind a relay that answers
             503 for a while: it stops acking, then catches up; the tables read from the
             bucket through their Delta logs, exactly once; the aggregator on the same bucket:
             1m usage reconciles; both readers agree on raw, usage_1m, usage_history_1m.
  broker_kill  SIGKILL of Mosquitto (shipped autosave_interval 60) while agents publish and the
             collector is offline, with the persistence file kept and deleted: every seq lands
             exactly once and the agents' buffers drain (delivery confirmations).
  collector_disk  the collector's WAL directory deleted after kill -9: with confirm_after =
             "landed" nothing is lost (compact removes duplicates); with "wal" the loss is
             reported (the RPO of that mode).
  shared     the same deterministic streams through one collector and, in a second run,
             through two collectors on a shared subscription (+ compaction): identical usage.

Binaries: target/debug (or $GRIDMETER_BIN_DIR); build them first:
    cargo test --workspace --no-run   (the test command builds them this way)
Prints `N passed, M failed`; exits non-zero on any failure.
"""

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import checks  # noqa: E402
import harness as h  # noqa: E402

REGISTER_MAX = {"energy_import": "99999999", "energy_yield": "99999999"}
DEFAULT_REGISTER_MAX = "999999999999999999"
BUCKET = "gridmeter-raw"
DRAIN_SIM = 'profile = "household_meter"\nstart = "2020-01-01T00:00:00Z"\nuntil = "2020-01-01T00:00:30Z"\nstep_secs = 60'


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def profile_of(dev):
    return {"hh": "household_meter", "pv": "pv_inverter", "edge": "edge_server"}[dev.split("-")[0]]


def wall_sim(dev, seed, interval_ms):
    return (f'profile = "{profile_of(dev)}"\nseed = {seed}\nregister_max = 99999999\n'
            f"interval_ms = {interval_ms}")


def aggregator(work, root, windows, lateness="1s", s3=None):
    """One aggregator run over a local data root, or over S3 (`s3`: the collector's
    [object_store] section as text)."""
    cfg = Path(work) / "agg.toml"
    rm = "".join(f'{k} = "{v}"\n' for k, v in REGISTER_MAX.items())
    root_line = "" if s3 else f"data_root = {h.q(root)}"
    cfg.write_text((f'{root_line}\nwindows = {windows!r}\n'
                    f'allowed_lateness = "{lateness}"\nmax_gap = "1h"\n'
                    f'default_register_max = "{DEFAULT_REGISTER_MAX}"\n').replace("'", '"')
                   + f"[register_max]\n{rm}{s3 or ''}")
    r = subprocess.run([h.bin_path("gridmeter-aggregator"), "--config", str(cfg), "run"],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise AssertionError(f"aggregator failed: {r.stdout[-2000:]}\n{r.stderr[-3000:]}")


def start_agents(work, pki, port, devices, sims, **kw):
    agents = {}
    for d in devices:
        a = h.Agent(work, pki, d, port, sims[d], **kw)
        agents[d] = a.proc.start() and a
    return agents


def drain(work, pki, port, agents, timeout):
    """Restarts every agent with a source that produces nothing, waits until its buffer is empty."""
    for d, a in agents.items():
        a.proc.stop()
        extra = agents[d]._extra_buffer if hasattr(agents[d], "_extra_buffer") else ""
        b = h.Agent(work, pki, d, port, DRAIN_SIM, extra_buffer=extra)
        b.proc.start()
        agents[d] = b

    def empty():
        for d, a in agents.items():
            if not a.proc.alive():
                raise Failure(f"agent {d} exited while draining: {a.proc.log_tail(5)}")
        c = [a.counters() for a in agents.values()]
        return all(x is not None and x[1] == 0 and x[2] == 0 for x in c)

    h.wait_until(empty, timeout, "agent buffers to drain", interval=1)
    produced = {d: a.counters()[0] for d, a in agents.items()}
    for a in agents.values():
        a.proc.stop()
    return produced


def wait_landed(tables, produced, timeout):
    def done():
        counts = checks.landed_counts(tables)
        lost = checks.lost_seqs(tables)
        return all(counts.get(d, (0, 0))[1] + len(lost.get(d, ())) >= n for d, n in produced.items())

    h.wait_until(done, timeout, "every produced seq to land", interval=2)


class Failure(AssertionError):
    pass


def expect(problems, what):
    if problems:
        raise Failure(f"{what}:\n  " + "\n  ".join(problems[:20]))


# ---------------------------------------------------------------------------------------
def test_chaos(args, rng, work):
    """Random kill -9 / restarts / outages during a steady stream; exactly once afterwards."""
    pki = work / "pki"
    devices = ["hh-0001", "hh-0002", "pv-0003", "edge-0004", "hh-small"]
    h.pki_init(pki, devices)
    broker = h.Broker(work, pki).start()
    root, wal = work / "data", work / "wal"
    ctext, cport = h.collector_toml(pki, wal, broker.port, data_root=root)
    (work / "collector.toml").write_text(ctext)
    collector = h.Proc("collector", [h.bin_path("gridmeter-collector"), "--config", str(work / "collector.toml")], work).start()
    sims = {d: wall_sim(d, i + 1, 100 if d == "hh-small" else 250) for i, d in enumerate(devices)}
    agents = {}
    for d in devices:
        # hh-small has a tiny disk budget: it must drop during the broker outage and say so.
        extra = "max_buffer_bytes = 4096" if d == "hh-small" else ""
        a = h.Agent(work, pki, d, broker.port, sims[d], extra_buffer=extra)
        a._extra_buffer = extra
        a.proc.start()
        agents[d] = a
    h.wait_until(lambda: (h.metrics(cport) or {}).get("gridmeter_collector_readings_accepted_total", 0) > 0,
                 120, "first readings landed")

    duration = args.minutes * 60 if args.soak else 75
    kinds = ["kill_agent", "kill_collector", "broker_restart", "store_fail"]
    plan = kinds[:] if not args.soak else []
    rng.shuffle(plan)
    if not args.soak:
        plan += [rng.choice(["kill_agent", "kill_collector"]) for _ in range(3)]
    end = time.monotonic() + duration
    outages = []
    events = 0
    while time.monotonic() < end or (plan and not args.soak):
        kind = plan.pop(0) if plan else rng.choice(kinds)
        time.sleep(rng.uniform(1.0, 4.0))
        events += 1
        if kind == "kill_agent":
            d = rng.choice(devices)
            log(f"kill -9 agent {d}")
            agents[d].proc.kill()
            time.sleep(rng.uniform(0.2, 2.0))
            agents[d].proc.start()
        elif kind == "kill_collector":
            log("kill -9 collector")
            collector.kill()
            time.sleep(rng.uniform(0.2, 3.0))
            collector.start()
        elif kind == "broker_restart":
            down = rng.uniform(6, 10)
            log(f"broker down for {down:.1f}s (agents buffer; hh-small over its budget)")
            broker.stop()
            time.sleep(down)
            broker.proc.start()
            h.wait_until(lambda: h.port_open(broker.port), 30, "broker back")
        elif kind == "store_fail":
            # Root ignores permissions; a *file* where the collector needs its raw/ directory
            # makes every landing write fail with ENOTDIR, as root too.
            raw, away = root / "raw", root / "raw.away"
            h.wait_until(lambda: raw.is_dir(), 60, "raw/ to exist")
            before = h.metrics(cport) or {}
            raw.rename(away)
            raw.write_text("not a directory: injected fault\n")
            log("collector data root failing writes (raw/ is a file) for ~14s")
            time.sleep(11)
            m1 = h.metrics(cport) or {}
            time.sleep(3)
            m2 = h.metrics(cport) or {}
            raw.unlink()
            away.rename(raw)
            errs = m2.get("gridmeter_collector_write_errors_total", 0) - before.get("gridmeter_collector_write_errors_total", 0)
            r1 = m1.get("gridmeter_collector_messages_received_total")
            r2 = m2.get("gridmeter_collector_messages_received_total")
            outages.append((errs > 0 and r1 is not None and r1 == r2, errs, r1, r2))
            log(f"outage over: write errors {errs:.0f}, messages received {r1} -> {r2} in the last 3s")
        if not collector.alive():
            log("collector exited on its own; log tail:\n" + collector.log_tail(10))
            collector.start()
    log(f"{events} faults injected; draining agents")
    produced = drain(work, pki, broker.port, agents, 240)
    log(f"produced per device: {produced}")
    tables = checks.Tables(root)
    wait_landed(tables, produced, 180)
    collector.stop()
    broker.stop()
    expect(checks.exactly_once(tables, produced), "exactly once")
    lost = checks.lost_seqs(tables)
    log(f"readings lost and accounted for in gap records: { {d: len(s) for d, s in lost.items()} }")
    bad = [o[1:] for o in outages if not o[0]]
    if bad:
        raise Failure(f"collector kept acking while it could not land (write errors, received 3 s before the end, at the end): {bad}")
    if not lost.get("hh-small"):
        raise Failure("hh-small (4 kB budget, 10 steps/s) lost nothing during the broker outage: the gap path was not exercised")
    aggregator(work, root, ["1m", "15m"])
    for w in ("1m", "15m"):
        problems, n = checks.reconcile_usage(tables, w, REGISTER_MAX, DEFAULT_REGISTER_MAX)
        log(f"usage {w}: {n} counter series reconciled")
        expect(problems, f"usage {w} vs raw")
    if checks.reconcile_usage(tables, "1m", REGISTER_MAX, DEFAULT_REGISTER_MAX)[1] == 0:
        raise Failure("no 1m usage rows: nothing reconciled")
    problems, sizes = checks.readers_agree(tables, ("1m", "15m"))
    log(f"deltalake and DuckDB delta_scan read the same rows: {sizes}")
    expect(problems, "the two independent readers")


# ---------------------------------------------------------------------------------------
def test_broker_kill(args, rng, work):
    """A power cut of the broker (SIGKILL, shipped autosave_interval 60) while agents publish
    and the collector is offline; once with the persistence file kept, once deleted. The
    broker had PUBACKed everything and lost it: agents keep every reading until the collector
    confirms it, so every seq lands exactly once and the buffers drain."""
    devices = ["hh-0301", "pv-0302", "edge-0303"]
    for wipe in (False, True):
        w = work / ("wiped" if wipe else "kept")
        w.mkdir()
        pki = w / "pki"
        h.pki_init(pki, devices)
        broker = h.Broker(w, pki, autosave=60).start()
        ctext, cport = h.collector_toml(pki, w / "wal", broker.port, data_root=w / "data")
        (w / "collector.toml").write_text(ctext)
        collector = h.Proc("collector", [h.bin_path("gridmeter-collector"), "--config", str(w / "collector.toml")], w)
        collector.start()
        # The collector's persistent session exists; then it goes offline.
        h.wait_until(lambda: (h.metrics(cport) or {}).get("gridmeter_collector_connected", 0) >= 1, 60,
                     "collector connected")
        collector.stop()
        agents = start_agents(w, pki, broker.port, devices, {d: wall_sim(d, i + 21, 50) for i, d in enumerate(devices)})
        time.sleep(6)
        acked = sum(a.counters()[1] for a in agents.values())
        log(f"broker power cut ({'persistence deleted' if wipe else 'persistence kept'}) with {acked} readings buffered by the agents")
        broker.kill(wipe=wipe)
        time.sleep(rng.uniform(0.5, 2))
        broker.proc.start()
        h.wait_until(lambda: h.port_open(broker.port), 30, "broker back")
        collector.start()
        produced = drain(w, pki, broker.port, agents, 240)
        log(f"produced per device: {produced}")
        tables = checks.Tables(w / "data")
        wait_landed(tables, produced, 120)
        collector.stop()
        broker.stop()
        expect(checks.exactly_once(tables, produced), "exactly once after the broker power cut")
        lost = checks.lost_seqs(tables)
        if any(lost.values()):
            raise Failure(f"seqs reported lost although nothing was dropped: { {d: len(s) for d, s in lost.items()} }")


def test_collector_disk(args, rng, work):
    """The collector's disk (WAL + dedup checkpoint) is lost mid-stream: kill -9, delete the
    WAL directory, start a fresh collector. With confirm_after = "landed" nothing is lost
    (what was only in the WAL was never confirmed, so agents resend it); duplicates of
    readings that had landed are removed by `compact`. With "wal" the readings confirmed but
    not yet landed are lost: their number is the measured RPO of that mode."""
    devices = ["hh-0401", "pv-0402", "edge-0403"]
    for mode in ("landed", "wal"):
        w = work / mode
        w.mkdir()
        pki = w / "pki"
        h.pki_init(pki, devices)
        broker = h.Broker(w, pki).start()
        root, wal = w / "data", w / "wal"
        ctext, cport = h.collector_toml(pki, wal, broker.port, data_root=root,
                                        extra=f'confirm_after = "{mode}"')
        (w / "collector.toml").write_text(ctext)
        collector = h.Proc("collector", [h.bin_path("gridmeter-collector"), "--config", str(w / "collector.toml")], w)
        collector.start()
        h.wait_until(lambda: (h.metrics(cport) or {}).get("gridmeter_collector_connected", 0) >= 1, 60,
                     "collector connected")
        agents = start_agents(w, pki, broker.port, devices, {d: wall_sim(d, i + 31, 50) for i, d in enumerate(devices)})
        time.sleep(rng.uniform(5, 8))
        collector.kill()
        shutil.rmtree(wal)
        log(f"confirm_after = {mode}: collector killed and its WAL directory deleted")
        collector.start()
        produced = drain(w, pki, broker.port, agents, 240)
        time.sleep(3)  # the last flush
        collector.stop()
        broker.stop()
        tables = checks.Tables(root)
        for dt in checks.raw_dates(tables):
            subprocess.run([h.bin_path("gridmeter-collector"), "--config", str(w / "collector.toml"), "compact",
                            "--date", dt], check=True, capture_output=True, timeout=300)
        problems = checks.exactly_once(tables, produced)
        missing = [p for p in problems if "neither landed nor in a gap record" in p]
        if mode == "landed":
            expect(problems, "exactly once after losing the collector's disk (confirm_after = landed)")
            log(f"landed: produced {produced}, nothing lost")
        else:
            other = [p for p in problems if p not in missing]
            expect(other, "after losing the collector's disk (confirm_after = wal)")
            log(f"wal: produced {produced}; lost with the WAL: {missing or 'nothing (the kill came right after a landing)'}")


# ---------------------------------------------------------------------------------------
def s3_objects(client, bucket, prefix):
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def test_s3(args, rng, work):
    """Collector on a real S3 server (moto) that fails for a while."""

    moto = h.Moto(work).start()
    s3 = moto.client()
    s3.create_bucket(Bucket=BUCKET)
    proxy = h.FaultyProxy(moto.port)
    try:
        pki = work / "pki"
        devices = ["hh-0101", "pv-0102", "edge-0103"]
        h.pki_init(pki, devices)
        broker = h.Broker(work, pki).start()
        ctext, cport = h.collector_toml(pki, work / "wal", broker.port,
                                        s3={"bucket": BUCKET, "endpoint": f"http://127.0.0.1:{proxy.port}"})
        (work / "collector.toml").write_text(ctext)
        collector = h.Proc("collector", [h.bin_path("gridmeter-collector"), "--config", str(work / "collector.toml")], work).start()
        agents = start_agents(work, pki, broker.port, devices,
                              {d: wall_sim(d, i + 7, 250) for i, d in enumerate(devices)})
        started = time.time()
        h.wait_until(lambda: any(k.startswith("gm/raw/") for k in s3_objects(s3, BUCKET, "gm/")), 120,
                     "first raw object in S3")
        time.sleep(rng.uniform(1, 4))
        before = h.metrics(cport) or {}
        proxy.failing = True
        log("S3 answering 503 for ~16s")
        time.sleep(13)
        m1 = h.metrics(cport) or {}
        time.sleep(3)
        m2 = h.metrics(cport) or {}
        proxy.failing = False
        errs = m2.get("gridmeter_collector_write_errors_total", 0) - before.get("gridmeter_collector_write_errors_total", 0)
        r1, r2 = (m.get("gridmeter_collector_messages_received_total") for m in (m1, m2))
        log(f"S3 back: {proxy.failed_requests} requests failed, write errors {errs:.0f}, received {r1} -> {r2} in the last 3s")
        if errs <= 0 or proxy.failed_requests == 0:
            raise Failure(f"the S3 outage was not seen by the collector (write errors {errs}, failed requests {proxy.failed_requests})")
        if r1 is None or r1 != r2:
            raise Failure(f"collector kept acking during the S3 outage: received {r1} -> {r2}")
        time.sleep(rng.uniform(2, 5))
        log("kill -9 collector after the outage")
        collector.kill()
        collector.start()
        time.sleep(3)
        # Stream until the readings span a whole UTC minute, so the aggregator below has a
        # final 1m window to commit.
        covered = (int(started // 60) + 2) * 60 + 1
        time.sleep(max(0.0, covered - time.time()))
        produced = drain(work, pki, broker.port, agents, 240)
        # Read straight from the bucket, through the tables' Delta logs.
        tables = checks.Tables(f"s3://{BUCKET}/gm", moto.endpoint())
        wait_landed(tables, produced, 180)
        collector.stop()
        raw_files = [k for k in s3_objects(s3, BUCKET, "gm/raw/") if k.endswith(".parquet") and "_delta_log" not in k]
        log(f"{len(raw_files)} raw data files in S3, produced {produced}")
        expect(checks.exactly_once(tables, produced), "S3 exactly once")
        broker.stop()
        # The aggregator on the same bucket (straight to moto): usage committed next to raw,
        # read back from S3 and reconciled with the raw register differences.
        aggregator(work, None, ["1m", "15m"], s3=h.object_store_toml(BUCKET, moto.endpoint()))
        keys = s3_objects(s3, BUCKET, "gm/")
        if "gm/_state/aggregator.json" not in keys:
            raise Failure(f"no aggregator state in S3: {keys[:10]}")
        problems, n = checks.reconcile_usage(tables, "1m", REGISTER_MAX, DEFAULT_REGISTER_MAX)
        log(f"usage 1m from S3: {n} counter series reconciled")
        expect(problems, "S3 usage 1m vs raw")
        if n == 0:
            raise Failure("no 1m usage rows in S3: nothing reconciled")
        problems, sizes = checks.readers_agree(tables, ("1m",))
        log(f"on S3, deltalake and DuckDB delta_scan read the same rows: {sizes}")
        expect(problems, "the two independent readers on S3")
    finally:
        proxy.close()


# ---------------------------------------------------------------------------------------
def shared_run(work, collectors, devices, sims, until_readings):
    pki = work / "pki"
    h.pki_init(pki, devices, collectors=[str(i) for i in range(collectors)])
    broker = h.Broker(work, pki).start()
    root = work / "data"
    procs, ports = [], []
    for i in range(collectors):
        cid = f"c{i + 1}"
        text, mport = h.collector_toml(pki, work / f"wal-{cid}", broker.port, cid=cid,
                                       client_cert=f"collector-{i}",
                                       share="collectors" if collectors > 1 else None, data_root=root)
        (work / f"{cid}.toml").write_text(text)
        procs.append(h.Proc(cid, [h.bin_path("gridmeter-collector"), "--config", str(work / f"{cid}.toml")], work).start())
        ports.append(mport)
    h.wait_until(lambda: all((h.metrics(p) or {}).get("gridmeter_collector_connected", 0) >= 1 for p in ports),
                 60, "collectors connected")
    agents = start_agents(work, pki, broker.port, devices, sims)

    def done():
        c = [a.counters() for a in agents.values()]
        return all(x is not None and x[0] >= until_readings[d] and x[1] == 0 for d, x in zip(agents, c))

    h.wait_until(done, 240, "agents to produce and deliver everything", interval=1)
    produced = {d: a.counters()[0] for d, a in agents.items()}
    for a in agents.values():
        a.proc.stop()
    tables = checks.Tables(root)
    wait_landed(tables, produced, 180)
    shares = [(h.metrics(p) or {}).get("gridmeter_collector_readings_accepted_total", 0) for p in ports]
    for p in procs:
        p.stop()
    broker.stop()
    if collectors > 1:
        for dt in checks.raw_dates(tables):
            subprocess.run([h.bin_path("gridmeter-collector"), "--config", str(work / "c1.toml"), "compact", "--date", dt],
                           check=True, capture_output=True, timeout=300)
    expect(checks.exactly_once(tables, produced), f"exactly once with {collectors} collector(s)")
    aggregator(work, root, ["15m", "1h"], lateness="2h")
    return root, shares, produced


def test_shared(args, rng, work):
    devices = ["hh-0201", "hh-0202", "hh-0203", "hh-0204", "pv-0205", "pv-0206", "edge-0207", "edge-0208"]
    hours = 24 * 5 if not args.soak else 24 * 31
    steps = hours * 4
    chans = {"hh": 2, "pv": 2, "edge": 5}
    sims = {d: (f'profile = "{profile_of(d)}"\nseed = {i + 11}\nregister_max = 99999999\n'
                f'start = "2026-10-24T00:00:00Z"\nuntil = "2026-10-24T00:00:00Z"\nstep_secs = 900\nas_fast_as_possible = true')
            for i, d in enumerate(devices)}
    # until = start + hours (TOML datetime strings computed here).
    import datetime as dt
    until = (dt.datetime(2026, 10, 24, tzinfo=dt.timezone.utc) + dt.timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")
    sims = {d: s.replace('until = "2026-10-24T00:00:00Z"', f'until = "{until}"') for d, s in sims.items()}
    expect_n = {d: steps * chans[d.split("-")[0]] for d in devices}
    one, _, p1 = shared_run(work / "one", 1, devices, sims, expect_n)
    two, shares, p2 = shared_run(work / "two", 2, devices, sims, expect_n)
    log(f"one collector produced {p1}; two collectors' shares {shares}")
    if p1 != p2:
        raise Failure(f"agents produced different streams: {p1} vs {p2}")
    if min(shares) == 0:
        log("note: one collector of the shared group got no messages (broker chose one subscriber)")
    for w in ("15m", "1h"):
        a, b = checks.current_rows(checks.Tables(one), w), checks.current_rows(checks.Tables(two), w)
        if not a:
            raise Failure(f"no {w} usage rows in the single-collector run")
        if a != b:
            diff = [x for x in a if x not in set(b)][:3] + [x for x in b if x not in set(a)][:3]
            raise Failure(f"{w} usage differs: {len(a)} vs {len(b)} rows; e.g. {diff}")
        log(f"usage {w}: {len(a)} current rows identical")
        problems, n = checks.reconcile_usage(checks.Tables(one), w, REGISTER_MAX, DEFAULT_REGISTER_MAX)
        expect(problems, f"usage {w} vs raw")
        log(f"usage {w}: {n} counter series reconcile with raw")
    for root in (one, two):
        problems, sizes = checks.readers_agree(checks.Tables(root), ("15m", "1h"))
        log(f"deltalake and DuckDB delta_scan read the same rows: {sizes}")
        expect(problems, "the two independent readers")


TESTS = {"chaos": test_chaos, "broker_kill": test_broker_kill, "collector_disk": test_collector_disk,
         "s3": test_s3, "shared": test_shared}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--short", action="store_true", help="CI mode (default)")
    mode.add_argument("--soak", action="store_true", help="longer random fault schedule")
    ap.add_argument("--minutes", type=float, default=15, help="soak: chaos duration")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--only", action="append", choices=sorted(TESTS))
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    print(f"fault suite seed {seed} ({'soak' if args.soak else 'short'}); rerun with --seed {seed}", flush=True)
    passed = failed = 0
    base = Path(tempfile.mkdtemp(prefix="gm-faults-"))
    try:
        for name in args.only or list(TESTS):
            rng = random.Random(f"{seed}-{name}")
            work = base / name
            work.mkdir()
            t0 = time.monotonic()
            log(f"=== {name}")
            try:
                TESTS[name](args, rng, work)
                passed += 1
                log(f"=== {name}: ok ({time.monotonic() - t0:.0f}s)")
            except Exception as e:  # noqa: BLE001 - report every failure, then continue
                failed += 1
                log(f"=== {name}: FAILED ({time.monotonic() - t0:.0f}s): {e}")
                if not isinstance(e, Failure):
                    traceback.print_exc()
                for p in h.Proc.registry:
                    if p.p is not None and p.p.returncode not in (None, 0, -9, -15):
                        log(f"{p.name} exited {p.p.returncode}: {p.log_tail(8)}")
            finally:
                h.Proc.kill_all()
    finally:
        h.Proc.kill_all()
        if args.keep or failed:
            print(f"work directory kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
