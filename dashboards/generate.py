#!/usr/bin/env python3
"""Generates the Grafana dashboards in this directory: pipeline-health.json, fleet.json,
usage.json (Prometheus: the pipeline) and usage-data.json, billing-data.json (SQL on
`gridmeter serve` through Grafana's PostgreSQL data source: the data itself).

The JSON files are committed (Grafana provisions them as they are); this script is their
source, so that panels stay uniform and every query is easy to review in one place.
  python3 dashboards/generate.py          # rewrite the JSON files
  python3 dashboards/generate.py --check  # exit 1 if a JSON file differs from the script
Every metric name used here must be in docs/metrics.md (deploy/check.sh verifies it); every
SQL panel must return rows on the demo's tables (dashboards/check_sql_panels.py, run by
gridmeter/tests/serve.rs).
"""
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}


class Board:
    def __init__(self, uid, title, description, instance_metric=None):
        self.uid, self.title, self.description = uid, title, description
        self.instance_metric = instance_metric
        self.panels = []
        self.next_id = 1
        self.x = 0
        self.y = 0
        self.row_h = 0

    def _place(self, w, h):
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def row(self, title):
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        self.panels.append({
            "type": "row", "title": title, "id": self.next_id, "collapsed": False,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": [],
        })
        self.next_id += 1
        self.y += 1

    def panel(self, kind, title, targets, w=8, h=8, unit=None, description="",
              thresholds=None, legend=True, options=None, min_zero=True, field_extra=None):
        defaults = {"custom": {}}
        if unit:
            defaults["unit"] = unit
        if min_zero and kind == "timeseries":
            defaults["min"] = 0
        if thresholds:
            steps = [{"color": "green", "value": None}]
            steps += [{"color": c, "value": v} for v, c in thresholds]
            defaults["thresholds"] = {"mode": "absolute", "steps": steps}
            if kind == "timeseries":
                defaults["custom"]["thresholdsStyle"] = {"mode": "line+area"}
        if kind == "timeseries":
            defaults["custom"].update({"lineWidth": 1, "fillOpacity": 10, "showPoints": "never"})
        if field_extra:
            defaults.update(field_extra)
        p = {
            "type": kind, "title": title, "id": self.next_id, "datasource": DS,
            "description": description, "gridPos": self._place(w, h),
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "targets": [],
        }
        for i, t in enumerate(targets):
            expr, legend_fmt = t if isinstance(t, tuple) else (t, "")
            tgt = {"datasource": DS, "refId": chr(ord("A") + i), "expr": expr,
                   "legendFormat": legend_fmt or "__auto", "range": True}
            if kind == "stat":
                tgt["instant"], tgt["range"] = True, False
            if kind == "heatmap":
                tgt["format"] = "heatmap"
            p["targets"].append(tgt)
        if kind == "timeseries":
            p["options"] = {"legend": {"displayMode": "list", "placement": "bottom",
                                       "showLegend": legend},
                            "tooltip": {"mode": "multi", "sort": "desc"}}
        elif kind == "stat":
            p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                            "colorMode": "background", "graphMode": "none", "textMode": "value_and_name"}
        if options:
            p.setdefault("options", {}).update(options)
        self.panels.append(p)
        self.next_id += 1

    def text(self, title, content, w=24, h=8):
        self.panels.append({
            "type": "text", "title": title, "id": self.next_id, "gridPos": self._place(w, h),
            "options": {"mode": "markdown", "content": content},
        })
        self.next_id += 1

    def to_json(self):
        templating = [{
            "name": "datasource", "label": "Prometheus", "type": "datasource",
            "query": "prometheus", "current": {}, "hide": 0, "refresh": 1,
            "regex": "", "includeAll": False, "multi": False,
        }]
        if self.instance_metric:
            templating.append({
                "name": "instance", "label": "Instance", "type": "query", "datasource": DS,
                "query": {"query": f"label_values({self.instance_metric}, instance)",
                          "refId": "instance"},
                "definition": f"label_values({self.instance_metric}, instance)",
                "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
                "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                "hide": 0, "sort": 1, "regex": "",
            })
        return {
            "uid": self.uid, "title": self.title, "description": self.description,
            "tags": ["gridmeter"], "timezone": "utc", "schemaVersion": 39, "version": 1,
            "editable": True, "graphTooltip": 1, "refresh": "30s",
            "time": {"from": "now-6h", "to": "now"}, "timepicker": {},
            "fiscalYearStartMonth": 0, "liveNow": False, "weekStart": "",
            "annotations": {"list": [{
                "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                "name": "Annotations & Alerts", "type": "dashboard"}]},
            "links": [{"type": "dashboards", "tags": ["gridmeter"], "asDropdown": True,
                       "title": "gridmeter", "includeVars": False, "keepTime": True}],
            "templating": {"list": templating},
            "panels": self.panels,
        }


R = "$__rate_interval"


def pipeline_health():
    b = Board("gridmeter-pipeline", "gridmeter / Pipeline health",
              "Collector ingest, rejects, duplicates, gaps, landing latency, aggregation lag "
              "and commits. Alerts: deploy/prometheus/rules/gridmeter.rules.yml.")
    b.row("Ingest")
    b.panel("stat", "Collectors connected", [("sum(gridmeter_collector_connected)", "connected")],
            w=4, h=6, description="Collectors subscribed to the broker (gridmeter_collector_connected).",
            thresholds=None, options={"colorMode": "value"})
    b.panel("stat", "Targets up", [('sum by (job) (up{job=~"gridmeter-.*"})', "{{job}}")], w=8, h=6,
            description="Scrape targets up per job.")
    b.panel("stat", "Write errors (1h)", [("sum(increase(gridmeter_collector_write_errors_total[1h]))", "errors")],
            w=4, h=6, thresholds=[(1, "red")],
            description="WAL / object-store write failures in the last hour (alert GridmeterCollectorWriteErrors).")
    b.panel("stat", "Devices stale", [("sum(gridmeter_collector_devices_stale)", "stale")], w=4, h=6,
            thresholds=[(1, "orange")],
            description="Devices not heard from for more than 10 minutes (alert GridmeterDevicesStale).")
    b.panel("stat", "Since last aggregation",
            [("time() - max(gridmeter_aggregator_last_success_timestamp_seconds)", "age")], w=4, h=6,
            unit="s", thresholds=[(900, "orange"), (1800, "red")],
            description="Alert GridmeterAggregatorStalled at 30 minutes.")
    b.panel("timeseries", "Ingest rate", [
        ("gridmeter:collector_readings_accepted:rate5m", "accepted (5m)"),
        (f"sum(rate(gridmeter_collector_readings_received_total[{R}]))", "received"),
        (f"sum(rate(gridmeter_agent_readings_sent_total[{R}]))", "sent by agents (PUBACK)"),
        (f"sum(rate(gridmeter_agent_readings_confirmed_total[{R}]))", "confirmed to agents (deleted)"),
    ], w=12, unit="rps", description="Readings per second. Accepted = landed for the first time.")
    b.panel("timeseries", "Messages / readings received", [
        (f"sum(rate(gridmeter_collector_messages_received_total[{R}]))", "messages/s"),
        (f"sum(rate(gridmeter_collector_readings_received_total[{R}])) / sum(rate(gridmeter_collector_messages_received_total[{R}]))", "readings per message"),
    ], w=12, description="MQTT messages per second and the average batch size.")
    b.panel("timeseries", "Rejects by reason", [
        (f"sum by (reason) (rate(gridmeter_collector_messages_rejected_total[{R}]))", "message {{reason}}"),
        ("gridmeter:collector_readings_rejected:rate5m", "reading {{reason}}"),
    ], w=8, unit="rps", description="Whole messages and individual readings rejected (kept in deadletter/).")
    b.panel("timeseries", "Duplicates", [
        (f"sum(rate(gridmeter_collector_readings_duplicate_total[{R}]))", "duplicates"),
    ], w=8, unit="rps", description="Redelivered readings dropped by dedup on (device_id, seq): harmless, "
                                    "but a burst means reconnect storms or a slow collector.")
    b.panel("timeseries", "Gaps (seqs lost)", [
        ("sum by (reason) (increase(gridmeter_collector_gap_seqs_total[1h]))", "{{reason}}"),
    ], w=8, description="Sequence numbers that will never arrive, per hour (alert GridmeterReadingsLost).")
    b.panel("timeseries", "Dead letters by reason", [
        (f"sum by (reason) (rate(gridmeter_collector_deadletter_total[{R}]))", "{{reason}}"),
    ], w=12, unit="rps", description="Records written to deadletter/ (alert GridmeterDeadLetterGrowth).")
    b.panel("timeseries", "Collectors connected over time", [
        ("gridmeter_collector_connected", "{{instance}}"),
    ], w=12, description="1 = subscribed (alert GridmeterCollectorDisconnected).")
    b.row("Latency")
    b.panel("timeseries", "Landing latency (p50/p99)", [
        (f"histogram_quantile(0.5, sum by (le) (rate(gridmeter_collector_landing_latency_seconds_bucket[{R}])))", "p50"),
        (f"histogram_quantile(0.99, sum by (le) (rate(gridmeter_collector_landing_latency_seconds_bucket[{R}])))", "p99"),
    ], w=12, unit="s", thresholds=[(5, "red")],
            description="Receive to durable (fsync'd WAL) and acked (alert GridmeterCollectorLandingSlow).")
    b.panel("timeseries", "Transmission delay (p50/p95)", [
        (f"histogram_quantile(0.5, sum by (le) (rate(gridmeter_collector_transmission_delay_seconds_bucket[{R}])))", "p50"),
        (f"histogram_quantile(0.95, sum by (le) (rate(gridmeter_collector_transmission_delay_seconds_bucket[{R}])))", "p95"),
    ], w=12, unit="s", thresholds=[(600, "red")],
            description="received_at - reading ts (alert GridmeterTransmissionDelayHigh above 10 minutes).")
    b.row("Storage")
    b.panel("timeseries", "Bytes written", [
        (f"sum by (instance) (rate(gridmeter_collector_bytes_written_total[{R}]))", "{{instance}}"),
    ], w=6, unit="Bps", description="Parquet bytes written to raw/, gaps/ and deadletter/.")
    b.panel("timeseries", "Write errors", [
        ("sum by (instance) (increase(gridmeter_collector_write_errors_total[5m]))", "{{instance}}"),
    ], w=6, thresholds=[(1, "red")], description="Disk / object-store failures per 5 minutes.")
    b.panel("timeseries", "WAL size", [
        ("gridmeter_collector_wal_bytes", "{{instance}}"),
    ], w=6, unit="bytes", description="Write-ahead log not yet flushed to Parquet; growth means flushes fail.")
    b.panel("timeseries", "Landing backpressure", [
        (f"rate(gridmeter_collector_landing_wait_seconds_total[{R}])", "{{instance}}"),
    ], w=6, unit="percentunit", description="Fraction of time ingest waited for the landing (Parquet and commits); near 100% means landing limits throughput.")
    b.row("Aggregation")
    b.panel("timeseries", "Aggregator throughput", [
        (f"sum(rate(gridmeter_aggregator_readings_processed_total[{R}]))", "processed"),
    ], w=8, unit="rps", description="Raw readings folded into usage windows.")
    b.panel("timeseries", "Late readings", [
        (f"sum(rate(gridmeter_aggregator_late_readings_total[{R}]))", "late"),
        (f"sum(rate(gridmeter_aggregator_late_readings_total[{R}])) / sum(rate(gridmeter_aggregator_readings_processed_total[{R}]))", "late fraction"),
    ], w=8, description="Readings after their window was committed (each causes a revision).")
    b.panel("timeseries", "Revisions by window", [
        ("sum by (window) (increase(gridmeter_aggregator_revisions_total[1h]))", "{{window}}"),
    ], w=8, description="Usage windows re-committed per hour because of late data.")
    b.panel("timeseries", "Watermark lag", [
        ("gridmeter_aggregator_watermark_lag_seconds", "{{instance}}"),
    ], w=8, unit="s", thresholds=[(3600, "red")], description="Alert GridmeterWatermarkLagHigh above 1 hour.")
    b.panel("timeseries", "Commit latency (p50/p99)", [
        (f"histogram_quantile(0.5, sum by (le) (rate(gridmeter_aggregator_commit_duration_seconds_bucket[{R}])))", "p50"),
        (f"histogram_quantile(0.99, sum by (le) (rate(gridmeter_aggregator_commit_duration_seconds_bucket[{R}])))", "p99"),
    ], w=8, unit="s", description="Duration of one atomic usage-table commit.")
    b.panel("timeseries", "Commit errors", [
        ("sum(increase(gridmeter_aggregator_commit_errors_total[15m]))", "errors / 15m"),
        ("sum by (window) (increase(gridmeter_aggregator_commits_total[15m]))", "commits {{window}} / 15m"),
    ], w=8, description="Alert GridmeterAggregatorCommitErrors on any error.")
    return b


def fleet():
    b = Board("gridmeter-fleet", "gridmeter / Fleet",
              "Edge agents: connectivity, buffers, oldest unsent reading, drops, sources; devices "
              "as seen by the collector.", instance_metric="gridmeter_agent_connected")
    sel = '{instance=~"$instance"}'
    b.row("Overview")
    b.panel("stat", "Agents connected", [
        ("sum(gridmeter_agent_connected)", "connected"),
        ("count(gridmeter_agent_connected)", "agents"),
    ], w=6, h=6, options={"colorMode": "value"})
    b.panel("stat", "Agents disconnected", [("count(gridmeter_agent_connected == 0) or vector(0)", "disconnected")],
            w=6, h=6, thresholds=[(1, "orange")], description="Alert GridmeterAgentDisconnected after 5 minutes.")
    b.panel("stat", "Devices seen / stale", [
        ("sum(gridmeter_collector_devices_seen)", "seen"),
        ("sum(gridmeter_collector_devices_stale)", "stale (> 10 min)"),
    ], w=6, h=6, options={"colorMode": "value"},
            description="As seen by the collectors; stale devices trigger GridmeterDevicesStale.")
    b.panel("stat", "Agent targets up", [('sum(up{job="gridmeter-agent"})', "up"),
                                         ('count(up{job="gridmeter-agent"})', "targets")],
            w=6, h=6, options={"colorMode": "value"})
    b.row("Buffers")
    b.panel("timeseries", "Buffer fill (% of budget)", [
        (f"gridmeter:agent_buffer_fill:ratio{sel}", "{{instance}}"),
    ], w=12, unit="percentunit", thresholds=[(0.8, "red")],
            description="buffer_bytes / buffer_budget_bytes; alert GridmeterAgentBufferNearBudget above 80%. "
                        "At 100% the agent drops its oldest readings.")
    b.panel("timeseries", "Oldest unsent reading", [
        (f"topk(20, gridmeter_agent_oldest_unsent_age_seconds{sel})", "{{instance}}"),
    ], w=12, unit="s", thresholds=[(600, "red")],
            description="Age (now minus event time) of the oldest reading in the buffer (top 20); alert at 10 minutes.")
    b.panel("timeseries", "Oldest unconfirmed reading", [
        (f"topk(20, gridmeter_agent_oldest_unconfirmed_age_seconds{sel})", "{{instance}}"),
    ], w=12, unit="s", thresholds=[(600, "red")],
            description="Time since the oldest reading the broker took was first published, still not "
                        "confirmed landed by a collector (top 20); alert GridmeterAgentUnconfirmed at 10 minutes.")
    b.panel("timeseries", "Unconfirmed readings", [
        (f"topk(20, gridmeter_agent_unconfirmed_readings{sel})", "{{instance}}"),
        (f"sum by (instance) (rate(gridmeter_agent_resends_total{sel}[{R}]))", "{{instance}} resends/s"),
    ], w=12, description="Readings PUBACKed but not yet confirmed (kept in the buffer), and resends of "
                         "overdue ones.")
    b.panel("timeseries", "Buffer depth (rows)", [
        (f"topk(20, gridmeter_agent_buffer_rows{sel})", "{{instance}}"),
    ], w=8, description="Readings in each agent's SQLite buffer: unsent, in flight or unconfirmed (top 20).")
    b.panel("timeseries", "Buffer size", [
        (f"topk(20, gridmeter_agent_buffer_bytes{sel})", "{{instance}}"),
        (f"max(gridmeter_agent_buffer_budget_bytes{sel})", "largest budget"),
    ], w=8, unit="bytes")
    b.panel("timeseries", "Gap records pending", [
        (f"gridmeter_agent_gap_records_pending{sel}", "{{instance}}"),
    ], w=8, description="Lost seq ranges the agent still has to report (deleted when confirmed).")
    b.row("Delivery")
    b.panel("timeseries", "Drops", [
        (f"sum by (instance, reason) (increase(gridmeter_agent_readings_dropped_total{sel}[1h]))", "{{instance}} {{reason}}"),
    ], w=8, thresholds=[(1, "red")], description="Readings lost at the edge per hour (alert GridmeterAgentDroppingReadings).")
    b.panel("timeseries", "Readings sent", [
        (f"sum by (instance) (rate(gridmeter_agent_readings_sent_total{sel}[{R}]))", "{{instance}} sent"),
        (f"sum by (instance) (rate(gridmeter_agent_readings_confirmed_total{sel}[{R}]))", "{{instance}} confirmed"),
        (f"sum by (instance, reason) (rate(gridmeter_agent_publish_refused_total{sel}[{R}]))", "{{instance}} refused {{reason}}"),
    ], w=8, unit="rps", description="PUBACKed by the broker, confirmed landed by a collector (then deleted), "
                                    "and refused by the broker (MQTT 5 reason code; retried).")
    b.panel("timeseries", "Publish latency (p50/p99)", [
        (f"histogram_quantile(0.5, sum by (le) (rate(gridmeter_agent_publish_latency_seconds_bucket{sel}[{R}])))", "p50"),
        (f"histogram_quantile(0.99, sum by (le) (rate(gridmeter_agent_publish_latency_seconds_bucket{sel}[{R}])))", "p99"),
    ], w=8, unit="s", description="Publish to PUBACK (the broker took the message).")
    b.panel("timeseries", "Confirmation latency (p50/p99)", [
        (f"histogram_quantile(0.5, sum by (le) (rate(gridmeter_agent_confirmation_latency_seconds_bucket{sel}[{R}])))", "p50"),
        (f"histogram_quantile(0.99, sum by (le) (rate(gridmeter_agent_confirmation_latency_seconds_bucket{sel}[{R}])))", "p99"),
    ], w=8, unit="s", description="First publish to the collector's confirmation that the readings landed: "
                                  "the window a lost agent disk could lose.")
    b.panel("timeseries", "Reconnects", [
        (f"sum by (instance) (increase(gridmeter_agent_reconnects_total{sel}[1h]))", "{{instance}}"),
    ], w=8, description="Broker reconnections per hour.")
    b.panel("timeseries", "Agent connection state", [
        (f"gridmeter_agent_connected{sel}", "{{instance}}"),
    ], w=8, description="1 = connected to the broker.")
    b.panel("heatmap", "Device last-seen age (heatmap)", [
        (f"sum by (le) (increase(gridmeter_collector_device_last_seen_age_seconds_bucket[{R}]))", "{{le}}"),
    ], w=8, description="Distribution over devices of the time since each was last heard from.",
            options={"calculate": False, "yAxis": {"unit": "s"}, "cellGap": 1,
                     "color": {"mode": "scheme", "scheme": "Oranges"}})
    b.row("Sources")
    b.panel("timeseries", "Readings collected by source", [
        (f"sum by (source) (rate(gridmeter_agent_readings_collected_total{sel}[{R}]))", "{{source}}"),
    ], w=12, unit="rps")
    b.panel("timeseries", "Source errors", [
        (f"sum by (instance, source, reason) (rate(gridmeter_agent_source_errors_total{sel}[{R}]))", "{{instance}} {{source}} {{reason}}"),
    ], w=12, unit="rps", description="Failed reads by reason: connect, timeout (a silent meter), crc (garbled answers), exception, decode, io, device_status (alert GridmeterAgentSourceErrors when a source only fails).")
    return b


USAGE_NOTE = """\
**Energy by channel and customer** lives in the usage tables the aggregator writes
(`<data_root>/usage/{15m,1h,1d}/`, Parquet, `Decimal128(38,9)`), not in Prometheus: a
customer or device label would make every metric's cardinality grow with the fleet.
A Parquet/DuckDB datasource is out of scope for this dashboard; query the tables directly:

```sql
-- duckdb
SELECT channel, sum(usage) AS energy
FROM read_parquet('<data_root>/usage/1d/**/*.parquet', hive_partitioning = true)
GROUP BY channel ORDER BY channel;
```

Per-customer totals are in the billing export (`<data_root>/exports/<period>/`).
This dashboard shows the health of the jobs that produce those tables and invoices.
"""


def usage():
    b = Board("gridmeter-usage", "gridmeter / Usage & billing",
              "Freshness of the usage tables (aggregator commits, revisions, watermark) and the "
              "last billing export run (textfile metrics via node_exporter).")
    b.text("Where the energy numbers are", USAGE_NOTE, h=9)
    b.row("Billing export (last run)")
    b.panel("stat", "Since last billing run",
            [("time() - max(gridmeter_billing_last_run_timestamp_seconds)", "age")], w=5, h=6, unit="s",
            thresholds=[(32 * 86400, "orange"), (35 * 86400, "red")],
            description="Alert GridmeterBillingRunStale after 35 days.")
    b.panel("stat", "Billing run duration", [("max(gridmeter_billing_run_duration_seconds)", "duration")],
            w=5, h=6, unit="s", options={"colorMode": "value"})
    b.panel("stat", "Customers billed", [("sum(gridmeter_billing_customers_total)", "customers")],
            w=5, h=6, options={"colorMode": "value"})
    b.panel("stat", "Statement lines", [("sum(gridmeter_billing_statement_lines_total)", "lines")],
            w=5, h=6, options={"colorMode": "value"})
    b.panel("stat", "Reconciliation mismatches",
            [("sum(gridmeter_billing_reconciliation_mismatches_total)", "mismatches")], w=4, h=6,
            thresholds=[(1, "red")], description="Must be 0; alert GridmeterBillingReconciliationMismatch.")
    b.panel("stat", "Held bills by reason",
            [("sum by (reason) (gridmeter_billing_held_bills_total)", "{{reason}}")], w=24, h=5,
            options={"colorMode": "value"},
            description="Customers the last run held, per reason kind: estimated_share and "
                        "open_exception are the [hold] rules (billing-export/README.md, Hold rules), "
                        "data is data that cannot be billed. The reasons are in exceptions.csv.")
    b.row("Usage tables")
    b.panel("timeseries", "Usage commits by window", [
        ("sum by (window) (increase(gridmeter_aggregator_commits_total[1h]))", "{{window}}"),
    ], w=8, description="Atomic usage-table commits per hour.")
    b.panel("timeseries", "Revisions by window", [
        ("sum by (window) (increase(gridmeter_aggregator_revisions_total[1h]))", "{{window}}"),
    ], w=8, description="Windows whose usage changed after first commit (late data): invoices "
                        "built before a revision may need a re-run.")
    b.panel("timeseries", "Usage freshness (watermark lag)", [
        ("max(gridmeter_aggregator_watermark_lag_seconds)", "lag"),
    ], w=8, unit="s", thresholds=[(3600, "red")])
    b.panel("timeseries", "Readings accepted vs aggregated", [
        ("gridmeter:collector_readings_accepted:rate5m", "accepted by collectors"),
        (f"sum(rate(gridmeter_aggregator_readings_processed_total[{R}]))", "processed by aggregator"),
    ], w=24, unit="rps", description="Over time the two should match: every landed reading is aggregated.")
    b.row("Validation, estimation, editing (VEE)")
    b.panel("timeseries", "Exceptions by rule", [
        ("sum by (rule) (increase(gridmeter_aggregator_exceptions_total[1h]))", "{{rule}}"),
    ], w=8, description="Validation failures recorded in the exceptions table per hour, by rule "
                        "(aggregator/README.md, Validation).")
    b.panel("timeseries", "Estimated share of usage", [
        ("max by (window) (gridmeter_aggregator_estimated_share)", "{{window}}"),
    ], w=8, unit="percentunit", thresholds=[(0.05, "orange"), (0.2, "red")],
        description="Share of the usage written by the last commit of each window table that is "
                    "estimated (gaps, open end, replaced values).")
    b.panel("timeseries", "Estimated and edited rows", [
        ("sum by (method) (increase(gridmeter_aggregator_estimated_rows_total{window=\"15m\"}[1h]))",
         "estimated: {{method}}"),
        ("sum(increase(gridmeter_aggregator_edited_rows_total{window=\"15m\"}[1h]))", "edited"),
    ], w=8, description="15-minute rows written per hour flagged estimated (by method) or edited.")
    return b


SQL_DS = {"type": "grafana-postgresql-datasource", "uid": "${sql}"}


class SqlBoard(Board):
    """A board on `gridmeter serve` (SQL targets, the `sql` data source variable)."""

    def sql(self, kind, title, query, w=12, h=8, unit=None, description="", fmt=None,
            options=None, field_extra=None):
        self.panel(kind, title, [], w=w, h=h, unit=unit, description=description,
                   options=options, field_extra=field_extra, min_zero=False)
        p = self.panels[-1]
        p["datasource"] = SQL_DS
        p["targets"] = [{
            "datasource": SQL_DS, "refId": "A", "editorMode": "code", "rawQuery": True,
            "format": fmt or ("time_series" if kind == "timeseries" else "table"),
            "rawSql": " ".join(query.split()),
        }]

    def to_json(self):
        d = super().to_json()
        d["templating"]["list"] = [{
            "name": "sql", "label": "gridmeter SQL", "type": "datasource",
            "query": "grafana-postgresql-datasource", "current": {}, "hide": 0, "refresh": 1,
            "regex": "", "includeAll": False, "multi": False,
        }]
        d["time"] = {"from": "now-1y", "to": "now"}
        d["refresh"] = "5m"
        return d


IMPORT = "u.channel = 'energy_import'"
EXPORT = "u.channel IN ('energy_export', 'energy_yield')"


def usage_data():
    b = SqlBoard("gridmeter-usage-data", "gridmeter / Usage",
                 "Energy per customer, site and channel from the usage tables, served by "
                 "gridmeter serve (serve/README.md). Daily windows are UTC days.")
    b.row("Energy per customer")
    b.sql("timeseries", "Energy import per customer (kWh per day)", f"""
        SELECT u.window_start AS time, m.customer_id AS metric, sum(u.usage) / 1000 AS kwh
        FROM usage_1d u JOIN meters m ON m.device_id = u.device_id
        WHERE {IMPORT} AND $__timeFilter(u.window_start)
        GROUP BY u.window_start, m.customer_id ORDER BY 1""", unit="kwatth",
          description="Current revision of the daily usage of energy_import, summed per customer (registry).")
    b.sql("timeseries", "Energy export per customer (kWh per day)", f"""
        SELECT u.window_start AS time, m.customer_id AS metric, sum(u.usage) / 1000 AS kwh
        FROM usage_1d u JOIN meters m ON m.device_id = u.device_id
        WHERE {EXPORT} AND $__timeFilter(u.window_start)
        GROUP BY u.window_start, m.customer_id ORDER BY 1""", unit="kwatth",
          description="energy_export and energy_yield (PV), per customer.")
    b.sql("barchart", "Month over month per customer (kWh)", f"""
        WITH latest AS (SELECT date_trunc('month', max(window_start)) AS this_month FROM usage_1d)
        SELECT m.customer_id,
               sum(CASE WHEN u.window_start < l.this_month THEN u.usage ELSE 0 END) / 1000 AS last_month,
               sum(CASE WHEN u.window_start >= l.this_month THEN u.usage ELSE 0 END) / 1000 AS this_month
        FROM usage_1d u JOIN meters m ON m.device_id = u.device_id CROSS JOIN latest l
        WHERE {IMPORT} AND u.window_start >= l.this_month - INTERVAL '1 month'
        GROUP BY m.customer_id ORDER BY this_month DESC LIMIT 20""", w=12, h=9, unit="kwatth",
          description="Energy import of the month of the newest data against the month before (top 20).",
          options={"xField": "customer_id", "orientation": "horizontal"})
    b.sql("table", "Top consumers (kWh)", f"""
        SELECT m.customer_id, u.device_id, sum(u.usage) / 1000 AS kwh
        FROM usage_1d u JOIN meters m ON m.device_id = u.device_id
        WHERE {IMPORT} AND $__timeFilter(u.window_start)
        GROUP BY m.customer_id, u.device_id ORDER BY kwh DESC LIMIT 20""", w=12, h=9)
    b.row("Sites and channels")
    b.sql("table", "Energy per site (kWh)", f"""
        SELECT m.site_id, m.customer_id,
               sum(CASE WHEN {IMPORT} THEN u.usage ELSE 0 END) / 1000 AS import_kwh,
               sum(CASE WHEN {EXPORT} THEN u.usage ELSE 0 END) / 1000 AS export_kwh
        FROM usage_1d u JOIN meters m ON m.device_id = u.device_id
        WHERE $__timeFilter(u.window_start)
        GROUP BY m.site_id, m.customer_id ORDER BY import_kwh DESC, export_kwh DESC""", w=12, h=9)
    b.sql("table", "Usage per channel", """
        SELECT u.channel, u.unit, count(DISTINCT u.device_id) AS devices, sum(u.usage) AS usage
        FROM usage_1d u
        WHERE u.usage IS NOT NULL AND $__timeFilter(u.window_start)
        GROUP BY u.channel, u.unit ORDER BY u.channel""", w=12, h=9,
          description="Counters and deltas, in the channel's unit (Wh, s, B, ...).")
    b.row("PV")
    b.sql("timeseries", "PV yield (kWh per day, all inverters)", """
        SELECT u.window_start AS time, sum(u.usage) / 1000 AS pv_yield_kwh
        FROM usage_1d u
        WHERE u.channel = 'energy_yield' AND $__timeFilter(u.window_start)
        GROUP BY u.window_start ORDER BY 1""", w=12, unit="kwatth")
    b.sql("timeseries", "PV yield by hour of day (kWh, all inverters)", """
        SELECT u.window_start AS time, sum(u.usage) / 1000 AS pv_yield_kwh
        FROM usage_1h u
        WHERE u.channel = 'energy_yield' AND $__timeFilter(u.window_start)
        GROUP BY u.window_start ORDER BY 1""", w=12, unit="kwatth")
    return b


def billing_data():
    b = SqlBoard("gridmeter-billing-data", "gridmeter / Billing",
                 "Invoice totals, adjustments, held bills and estimated shares from the billing "
                 "export's published runs, served by gridmeter serve (serve/README.md).")
    b.row("Runs")
    b.sql("table", "Invoice totals per run", """
        SELECT period, run, currency, count(DISTINCT customer_id) AS customers, sum(amount) AS total
        FROM statement_lines GROUP BY period, run, currency ORDER BY period, run, currency""", w=12,
          description="Sum of the statement lines (incl. tax lines) of each published run.")
    b.sql("barchart", "Invoice total per customer (latest run of each period)", """
        SELECT s.customer_id, sum(s.amount) AS total
        FROM statement_lines s
        JOIN (SELECT period, max(run) AS run FROM statement_lines GROUP BY period) r
          ON r.period = s.period AND r.run = s.run
        GROUP BY s.customer_id ORDER BY total DESC LIMIT 20""", w=12,
          options={"xField": "customer_id", "orientation": "horizontal"})
    b.sql("table", "Adjustments per run", """
        SELECT period, run,
               sum(CASE WHEN line_type = 'adjustment' THEN 1 ELSE 0 END) AS adjustment_lines,
               sum(CASE WHEN line_type = 'adjustment' THEN amount ELSE 0 END) AS adjustment_amount
        FROM statement_lines GROUP BY period, run ORDER BY period, run""", w=12,
          description="A re-run after late data bills only the differences, as adjustment lines.")
    b.sql("table", "Held bills per run", """
        SELECT r.period, r.run, count(DISTINCT h.customer_id) AS held_customers,
               coalesce(max(h.reason), '') AS a_reason
        FROM (SELECT DISTINCT period, run FROM statement_lines) r
        LEFT JOIN held_bills h ON h.period = r.period AND h.run = r.run
        GROUP BY r.period, r.run ORDER BY r.period, r.run""", w=12,
          description="Customers held (not invoiced) by each run; the reasons are in held_bills.")
    b.row("Quality")
    b.sql("table", "Estimated and edited share of billed energy per customer", """
        SELECT customer_id, usage_unit,
               CAST(sum(quality * usage_quantity) AS DOUBLE) / NULLIF(CAST(sum(usage_quantity) AS DOUBLE), 0) AS estimated_share,
               CAST(sum(edited_share * usage_quantity) AS DOUBLE) / NULLIF(CAST(sum(usage_quantity) AS DOUBLE), 0) AS edited_share
        FROM statement_lines
        WHERE usage_quantity IS NOT NULL AND usage_quantity > 0
        GROUP BY customer_id, usage_unit ORDER BY estimated_share DESC, customer_id LIMIT 50""", w=24,
          unit="percentunit",
          description="Share of each customer's billed usage from intervals flagged estimated "
                      "(statement column quality) and edited (edited_share).")
    return b


BOARDS = {"pipeline-health.json": pipeline_health, "fleet.json": fleet, "usage.json": usage,
          "usage-data.json": usage_data, "billing-data.json": billing_data}


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for name, build in BOARDS.items():
        text = json.dumps(build().to_json(), indent=2) + "\n"
        path = HERE / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date (run python3 dashboards/generate.py): {', '.join(stale)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
