//! `gridmeter demo`: the whole pipeline on one machine, with nothing installed.
//!
//! 1. A PKI (CA, broker, collector, one certificate per device) is generated on the fly.
//! 2. An embedded MQTT broker (rumqttd) with client-certificate verification starts. It is
//!    for local demos only: it has no ACL, so any certified client could publish for any
//!    device (the demo says so in its output). Deployments use Mosquitto or EMQX with the
//!    shipped ACLs (deploy/).
//! 3. The collector (real code, in-process) subscribes over mTLS.
//! 4. A simulated fleet — household meters, PV inverters, edge servers — runs the real agent
//!    code, each agent with its own SQLite buffer, certificate and MQTT connection. Their
//!    simulators run on a virtual clock, so a month of 15-minute readings flows in seconds.
//! 5. Once every reading is acknowledged and landed, the collector flushes and stops; the
//!    aggregator computes the usage tables with validation, estimation and editing (VEE);
//!    it closes the period (the open end of a meter that stopped reporting is estimated);
//!    the billing export bills the period, holding bills that need a review (`[hold]`).
//!    Two faults are simulated: one household meter stops reporting before the period
//!    ends, another sends one glitched register reading (a spike the `spike` rule catches
//!    and replaces by an estimate, recorded as a critical exception).
//!
//! 6. The terminal shows progress and the summary; the components' logs go to
//!    `<out>/demo.log`. At the end the demo prints how to query the tables over SQL
//!    (`gridmeter serve`, PostgreSQL wire protocol); with `--hold` it serves them itself.
//!
//! Configs of every component are written as TOML under `<out>/config/`, so each step can be
//! rerun by hand with the components' own binaries.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, NaiveDate, Utc};
use gridmeter_core::{config, pki, DeviceId};
use prometheus::Registry;
use rust_decimal::Decimal;
use tokio::sync::watch;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Where everything goes (PKI, buffers, data root, exports). Wiped at start if it holds
    /// an earlier demo.
    #[arg(long, default_value = "demo-data")]
    out: PathBuf,
    /// Number of simulated devices (60% household meters, 25% PV inverters, 15% edge servers).
    #[arg(long)]
    devices: Option<usize>,
    /// Short mode for CI: 12 devices over 2026-10-24..27 (includes the DST change).
    #[arg(long)]
    short: bool,
    /// After the run, serve the tables over SQL (`gridmeter serve`) and keep the collector
    /// and agents' /metrics endpoints up, until Ctrl-C.
    #[arg(long)]
    hold: bool,
}

/// Marks a directory as a demo output that may be wiped.
const MARKER: &str = ".gridmeter-demo";
/// Simulated energy registers wrap after this many Wh (8 digits).
const REGISTER_MAX: &str = "99999999";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Household,
    Pv,
    Edge,
}

struct Plan {
    period: gridmeter_billing::Period,
    sim_start: DateTime<Utc>,
    sim_until: DateTime<Utc>,
    devices: Vec<(DeviceId, Role)>,
    /// The simulated faults.
    faults: Faults,
}

/// The two faults the demo simulates, each on a household meter (when the fleet has one).
struct Faults {
    /// This meter stops reporting at this time (before the period end).
    stopped: Option<(usize, DateTime<Utc>)>,
    /// This meter's register reading at this time is [`GLITCH_WH`] too high, once.
    spike: Option<(usize, DateTime<Utc>)>,
}

/// How much too high the glitched reading is (Wh): far above the spike rule's threshold
/// (20 × the median quarter hour of a household, some 100 Wh).
const GLITCH_WH: u64 = 10_000;

/// The demo aggregator's `[vee]`: households shaped by the BDEW H0 profile, a spike rule that
/// replaces what it catches by an estimate and records it as critical.
const VEE: &str = r#"
[vee]
max_interpolation = "2h"
profile_weeks = 4
[[vee.classes]]
name = "household"
devices = ["hh-*"]
standard_profile = "H0"
[[vee.rules]]
rule = "spike"
class = "household"
factor = "20"
trailing = 96
action = "estimate"
severity = "critical"
"#;

/// The demo billing's `[hold]`: bills with more than 20 % estimated energy or an open
/// critical exception are held for review.
const HOLD: &str = "\n[hold]\nmax_estimated_share = \"0.20\"\nexception_severity = \"critical\"\n";

fn ts(s: &str) -> anyhow::Result<DateTime<Utc>> {
    Ok(DateTime::parse_from_rfc3339(s)?.with_timezone(&Utc))
}

fn plan(args: &DemoArgs) -> anyhow::Result<Plan> {
    // (period, simulated span, devices, the stopped meter's last reading, the glitch).
    let (period, sim_start, sim_until, default_n, stop_at, glitch_at) = if args.short {
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d");
        (
            gridmeter_billing::Period::range(d("2026-10-24")?, d("2026-10-27")?)
                .context("period")?,
            ts("2026-10-23T12:00:00Z")?,
            ts("2026-10-27T12:00:00Z")?,
            12,
            // Three hours before the period end (2026-10-26T23:00Z in Berlin): a few
            // percent of the period's energy estimated, under the hold limit.
            ts("2026-10-26T20:00:00Z")?,
            ts("2026-10-25T10:00:00Z")?,
        )
    } else {
        (
            gridmeter_billing::Period::month(2026, 10).context("period")?,
            ts("2026-09-30T12:00:00Z")?,
            ts("2026-11-01T12:00:00Z")?,
            200,
            // Mid-month: half of the period estimated.
            ts("2026-10-16T00:00:00Z")?,
            ts("2026-10-20T10:00:00Z")?,
        )
    };
    let n = args.devices.unwrap_or(default_n).max(1);
    let devices = (0..n)
        .map(|i| {
            // Spread the roles over the fleet in the 60/25/15 proportions.
            let (role, prefix) = match i * 20 / n {
                0..=11 => (Role::Household, "hh"),
                12..=16 => (Role::Pv, "pv"),
                _ => (Role::Edge, "edge"),
            };
            let id = DeviceId::new(format!("{prefix}-{:04}", i + 1))?;
            Ok((id, role))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut households = devices
        .iter()
        .enumerate()
        .filter(|(_, (_, r))| *r == Role::Household)
        .map(|(i, _)| i)
        .skip(1);
    let faults = Faults {
        stopped: households.next().map(|i| (i, stop_at)),
        spike: households.next().map(|i| (i, glitch_at)),
    };
    Ok(Plan {
        period,
        sim_start,
        sim_until,
        devices,
        faults,
    })
}

fn prepare_out(out: &Path) -> anyhow::Result<PathBuf> {
    if out.exists() {
        if !out.join(MARKER).exists() {
            bail!(
                "{} exists and is not a gridmeter demo directory; choose another --out",
                out.display()
            );
        }
        std::fs::remove_dir_all(out).with_context(|| format!("wipe {}", out.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    std::fs::write(
        out.join(MARKER),
        "written by `gridmeter demo`; safe to delete\n",
    )?;
    Ok(std::fs::canonicalize(out)?)
}

/// `preferred` if it is free on loopback, else any free port.
fn local_addr(preferred: u16) -> anyhow::Result<SocketAddr> {
    let port = match TcpListener::bind(("127.0.0.1", preferred)) {
        Ok(_) => preferred,
        Err(_) => TcpListener::bind("127.0.0.1:0")?.local_addr()?.port(),
    };
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

fn toml_path(p: &Path) -> String {
    // TOML basic strings: escape backslashes and quotes.
    p.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
}

fn tls_inline(files: &gridmeter_core::tls::TlsFiles) -> String {
    format!(
        "{{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}",
        toml_path(&files.ca),
        toml_path(&files.cert),
        toml_path(&files.key)
    )
}

fn agent_toml(
    out: &Path,
    plan: &Plan,
    index: usize,
    device: &DeviceId,
    role: Role,
    broker_port: u16,
    metrics: Option<SocketAddr>,
) -> String {
    let pki = out.join("pki");
    let tls = gridmeter_core::tls::TlsFiles {
        ca: pki.join("ca.crt"),
        cert: pki.join("devices").join(format!("{device}.crt")),
        key: pki.join("devices").join(format!("{device}.key")),
    };
    let profile = match role {
        Role::Household => "household_meter",
        Role::Pv => "pv_inverter",
        Role::Edge => "edge_server",
    };
    let mut s = String::new();
    let _ = writeln!(s, "device_id = \"{device}\"");
    if let Some(addr) = metrics {
        let _ = writeln!(s, "metrics_listen = \"{addr}\"");
    }
    let _ = writeln!(s, "\n[mqtt]\nhost = \"127.0.0.1\"\nport = {broker_port}");
    let _ = writeln!(s, "tls = {}", tls_inline(&tls));
    let _ = writeln!(s, "batch_max_readings = 500");
    // A simulated agent produces a month of readings at once: small commits keep the
    // readings waiting in memory per agent (the default, 10,000, is for one agent per host).
    let _ = writeln!(
        s,
        "\n[buffer]\npath = \"{}\"\ncommit_max_readings = 500",
        toml_path(&out.join("agents").join(format!("{device}.sqlite")))
    );
    let until = match plan.faults.stopped {
        Some((i, t)) if i == index => t,
        _ => plan.sim_until,
    };
    let _ = writeln!(
        s,
        "\n[[sources]]\ntype = \"simulator\"\nprofile = \"{profile}\"\nseed = {index}\nregister_max = {REGISTER_MAX}\nstart = \"{}\"\nuntil = \"{}\"\nstep_secs = 900\nas_fast_as_possible = true",
        plan.sim_start.to_rfc3339(),
        until.to_rfc3339()
    );
    if let Some((i, t)) = plan.faults.spike {
        if i == index {
            let _ = writeln!(
                s,
                "glitch = {{ at = \"{}\", wh = {GLITCH_WH} }}",
                t.to_rfc3339()
            );
        }
    }
    s
}

fn collector_toml(out: &Path, broker_port: u16, metrics: SocketAddr) -> String {
    let pki = out.join("pki");
    let tls = gridmeter_core::tls::TlsFiles {
        ca: pki.join("ca.crt"),
        cert: pki.join("collectors/collector-0.crt"),
        key: pki.join("collectors/collector-0.key"),
    };
    format!(
        "collector_id = \"demo-1\"\ndata_root = \"{}\"\nwal_dir = \"{}\"\nmetrics_listen = \"{metrics}\"\n# The demo replays a fixed month, however long ago that is.\nmax_backfill = \"36500d\"\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {broker_port}\nclient_id = \"demo-collector\"\ntls = {}\n",
        toml_path(&out.join("data")),
        toml_path(&out.join("collector-wal")),
        tls_inline(&tls)
    )
}

/// The billing registry: one customer and site per device.
fn registry_toml(plan: &Plan) -> String {
    let mut s = format!("default_register_max = \"{REGISTER_MAX}\"\n");
    for (device, role) in &plan.devices {
        let n = &device.as_str()[device.as_str().find('-').map_or(0, |i| i + 1)..];
        let (tariff, currency, tz, tax, name) = match role {
            Role::Household => ("household_tou", "EUR", "Europe/Berlin", "0.19", "Household"),
            Role::Pv => ("pv_net_billing", "EUR", "Europe/Berlin", "0.19", "PV site"),
            Role::Edge => (
                "edge_compute",
                "USD",
                "America/New_York",
                "0.08875",
                "Edge server",
            ),
        };
        let _ = write!(
            s,
            "\n[[customers]]\nid = \"C-{n}\"\nname = \"{name} {n}\"\ntariff = \"{tariff}\"\ncurrency = \"{currency}\"\ntax_rate = \"{tax}\"\ntime_zone = \"{tz}\"\n\n[[sites]]\nid = \"S-{n}\"\ncustomer = \"C-{n}\"\n\n[[devices]]\nid = \"{device}\"\nsite = \"S-{n}\"\n[devices.channels]\n"
        );
        let channels: &[(&str, &str)] = match role {
            Role::Household => &[("energy_import", "import_energy"), ("power", "power")],
            Role::Pv => &[("energy_yield", "export_energy"), ("ac_power", "power")],
            Role::Edge => &[
                ("cpu_seconds", "cpu"),
                ("memory_used_bytes", "memory"),
                ("\"net.rx_bytes\"", "network"),
                ("\"net.tx_bytes\"", "network"),
                ("http_requests", "requests"),
            ],
        };
        for (channel, quantity) in channels {
            let _ = writeln!(s, "{channel} = {{ quantity = \"{quantity}\" }}");
        }
    }
    s
}

const TARIFFS: &str = r#"# Demo tariffs (see billing-export/README.md for every option).

[tariffs.household_tou]
description = "Household time-of-use, Europe/Berlin local time"
[[tariffs.household_tou.components]]
type = "time_of_use"
name = "energy"
quantity = "import_energy"
unit = "kWh"
default_period = "offpeak"
periods = [ { name = "peak", rate = "0.3850" }, { name = "offpeak", rate = "0.2610" } ]
rules = [ { period = "peak", days = ["mon", "tue", "wed", "thu", "fri"], from_hour = 7, to_hour = 21 } ]
[[tariffs.household_tou.components]]
type = "fixed"
name = "standing_charge"
monthly = "11.90"

[tariffs.pv_net_billing]
description = "PV net billing: export credited per interval"
components = [
  { type = "flat", name = "export_credit", quantity = "export_energy", unit = "kWh", rate = "0.0811", credit = true },
  { type = "fixed", name = "metering_service", monthly = "4.50" },
]

[tariffs.edge_compute]
description = "Edge server: CPU, memory, network and requests"
components = [
  { type = "flat", name = "cpu", quantity = "cpu", unit = "h", rate = "0.045" },
  { type = "flat", name = "memory", quantity = "memory", unit = "GBh", rate = "0.006" },
  { type = "flat", name = "network", quantity = "network", unit = "GB", rate = "0.09" },
  { type = "flat", name = "requests", quantity = "requests", unit = "Mrequests", rate = "0.40" },
]
"#;

/// Sum of every sample of a counter or gauge family across registries.
fn metric_sum<'a>(registries: impl IntoIterator<Item = &'a Registry>, name: &str) -> f64 {
    registries
        .into_iter()
        .flat_map(|r| r.gather())
        .filter(|mf| mf.name() == name)
        .flat_map(|mf| mf.get_metric().to_vec())
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .sum()
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let plan = plan(&args)?;
    let out = prepare_out(&args.out)?;
    let log = log_to_file(&out)?;
    println!("gridmeter demo: logs in {}", log.display());
    limit_malloc_arenas();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(run_async(args, plan, out))
}

/// glibc gives each thread that allocates concurrently its own arena, up to eight per core,
/// and keeps what is freed in each: the demo runs a fleet, a collector and the aggregator's
/// workers in one process, one after another, and would hold every stage's high-water mark
/// at once (measured on the default fleet: 679 MiB peak RSS against 456 MiB with two
/// arenas, same run time). Set before any thread is started; `MALLOC_ARENA_MAX` in the
/// environment still wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; it is called before the
        // runtime's threads exist.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Sends the components' logs to `<out>/demo.log` (`RUST_LOG` overrides the filter).
fn log_to_file(out: &Path) -> anyhow::Result<PathBuf> {
    let path = out.join("demo.log");
    let file =
        std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttd=warn".into()),
        )
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .init();
    Ok(path)
}

async fn run_async(args: DemoArgs, plan: Plan, out: PathBuf) -> anyhow::Result<()> {
    let started = Instant::now();
    let step = |msg: &str| {
        println!("[{:>6.1}s] {msg}", started.elapsed().as_secs_f64());
        if let Some((rss, peak)) = memory_mib() {
            tracing::info!(rss_mib = rss, peak_rss_mib = peak, "demo step: {msg}");
        }
    };
    let cfg_dir = out.join("config");
    std::fs::create_dir_all(cfg_dir.join("agents"))?;
    std::fs::create_dir_all(out.join("agents"))?;

    // 1. PKI.
    let ids: Vec<DeviceId> = plan.devices.iter().map(|(d, _)| d.clone()).collect();
    pki::init_dir(&out.join("pki"), &[], &ids).context("generate the PKI")?;
    step(&format!(
        "PKI: CA, broker, collector and {} device certificates in {}",
        ids.len(),
        out.join("pki").display()
    ));

    // 2. Embedded broker with client-certificate verification.
    let broker = gridmeter_collector::EmbeddedBroker::start(&out.join("pki"), 0)
        .context("start the embedded MQTT broker")?;
    let broker_port = broker.port();
    let agent_port = broker.port_v5();
    step(&format!(
        "embedded MQTT broker (rumqttd, mTLS) on 127.0.0.1:{broker_port} (MQTT 3.1.1, collector) and 127.0.0.1:{agent_port} (MQTT 5, agents)"
    ));
    println!("         {}", gridmeter_collector::broker::DEMO_ONLY);

    // 3. Collector.
    let collector_metrics = local_addr(9102)?;
    let collector_text = collector_toml(&out, broker_port, collector_metrics);
    std::fs::write(cfg_dir.join("collector.toml"), &collector_text)?;
    let collector_cfg: gridmeter_collector::CollectorConfig =
        config::parse(&collector_text, "collector.toml")?;
    let collector_registry = Registry::new();
    let (collector_stop, collector_stop_rx) = watch::channel(false);
    let collector = tokio::spawn(gridmeter_collector::run(
        collector_cfg,
        collector_registry.clone(),
        wait_for(collector_stop_rx),
    ));
    step(&format!(
        "collector subscribed; metrics on http://{collector_metrics}/metrics"
    ));

    // 4. The fleet.
    let agent_metrics = local_addr(9101)?;
    let (agents_stop, agents_stop_rx) = watch::channel(false);
    let mut agent_registries = Vec::new();
    let mut agents = Vec::new();
    for (i, (device, role)) in plan.devices.iter().enumerate() {
        let metrics = (i == 0).then_some(agent_metrics);
        let text = agent_toml(&out, &plan, i, device, *role, agent_port, metrics);
        let path = cfg_dir.join("agents").join(format!("{device}.toml"));
        std::fs::write(&path, &text)?;
        let cfg: gridmeter_agent::AgentConfig = config::parse(&text, &path.display().to_string())?;
        let registry = Registry::new();
        if let Some(addr) = metrics {
            gridmeter_core::metrics::serve(addr, registry.clone())
                .await
                .with_context(|| format!("serve agent metrics on {addr}"))?;
        }
        agent_registries.push(registry.clone());
        agents.push(tokio::spawn(gridmeter_agent::run(
            cfg,
            registry,
            wait_for(agents_stop_rx.clone()),
        )));
    }
    let counts = |role: Role| plan.devices.iter().filter(|(_, r)| *r == role).count();
    step(&format!(
        "{} agents started ({} household meters, {} PV inverters, {} edge servers), simulating {} .. {} at 15-minute steps; agent {} metrics on http://{agent_metrics}/metrics",
        plan.devices.len(),
        counts(Role::Household),
        counts(Role::Pv),
        counts(Role::Edge),
        plan.sim_start.format("%Y-%m-%d %H:%M"),
        plan.sim_until.format("%Y-%m-%d %H:%M UTC"),
        plan.devices[0].0,
    ));

    // 5. Wait until every reading is generated, landed and confirmed back to its agent.
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut last = (-1.0, -1.0, -1.0);
    let mut stable = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let collected = metric_sum(
            &agent_registries,
            "gridmeter_agent_readings_collected_total",
        );
        let sent = metric_sum(
            &agent_registries,
            "gridmeter_agent_readings_confirmed_total",
        );
        let accepted = metric_sum(
            [&collector_registry],
            "gridmeter_collector_readings_accepted_total",
        );
        step(&format!(
            "readings generated {collected:>9.0}  landed by collector {accepted:>9.0}  confirmed to agents {sent:>9.0}"
        ));
        if let Some(failed) = agents.iter().position(|a| a.is_finished()) {
            let device = &plan.devices[failed].0;
            match agents.swap_remove(failed).await {
                Ok(Ok(())) => bail!("agent {device} stopped unexpectedly"),
                Ok(Err(e)) => bail!("agent {device} failed: {e}"),
                Err(e) => bail!("agent {device} panicked: {e}"),
            }
        }
        if collector.is_finished() {
            match collector.await {
                Ok(Ok(())) => bail!("the collector stopped unexpectedly"),
                Ok(Err(e)) => bail!("the collector failed: {e}"),
                Err(e) => bail!("the collector panicked: {e}"),
            }
        }
        let now = (collected, sent, accepted);
        stable = if now == last && collected > 0.0 {
            stable + 1
        } else {
            0
        };
        last = now;
        if stable >= 2 && sent >= collected && accepted >= collected {
            break;
        }
        if Instant::now() > deadline {
            bail!("the fleet did not drain within 15 minutes");
        }
    }
    let _ = agents_stop.send(true);
    for a in agents {
        a.await.context("agent task")??;
    }
    let _ = collector_stop.send(true);
    collector.await.context("collector task")??;
    let landed = metric_sum(
        [&collector_registry],
        "gridmeter_collector_readings_accepted_total",
    );
    step(&format!(
        "fleet drained; collector flushed {landed:.0} readings to {}",
        out.join("data/raw").display()
    ));

    // 6. Aggregation, with VEE; then the period is closed (open ends estimated).
    let agg_text = format!(
        "data_root = \"{}\"\ndefault_register_max = \"{REGISTER_MAX}\"\ndevices_per_batch = {AGG_DEVICES_PER_BATCH}\n{VEE}",
        toml_path(&out.join("data"))
    );
    std::fs::write(cfg_dir.join("aggregator.toml"), &agg_text)?;
    let agg_cfg: gridmeter_aggregator::AggregatorConfig =
        config::parse(&agg_text, "aggregator.toml")?;
    let agg_metrics = gridmeter_aggregator::Metrics::unregistered();
    let summary = gridmeter_aggregator::run_once(&agg_cfg, &agg_metrics).await?;
    step(&format!(
        "aggregator: {} readings into {} usage rows ({}); {} validation exceptions",
        summary.readings_processed,
        summary.rows_written.values().sum::<usize>(),
        summary
            .rows_written
            .iter()
            .map(|(w, n)| format!("{w}: {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        summary.exceptions.values().sum::<usize>()
    ));
    let (_, period_end) = plan
        .period
        .bounds(chrono_tz::Europe::Berlin)
        .map_err(anyhow::Error::msg)?;
    let closed = gridmeter_aggregator::close(&agg_cfg, period_end, &agg_metrics).await?;
    step(&format!(
        "aggregator close --until {}: {} open-end windows estimated (15m)",
        period_end.to_rfc3339(),
        closed.estimated.get("15m").copied().unwrap_or(0)
    ));

    // 7. Billing export.
    std::fs::write(cfg_dir.join("registry.toml"), registry_toml(&plan))?;
    std::fs::write(cfg_dir.join("tariffs.toml"), TARIFFS)?;
    std::fs::write(
        cfg_dir.join("billing.toml"),
        format!(
            "data_root = \"{}\"\nregistry = \"registry.toml\"\ntariffs = \"tariffs.toml\"\n{HOLD}",
            toml_path(&out.join("data"))
        ),
    )?;
    let export_cfg = gridmeter_billing::ExportConfig::load(&cfg_dir.join("billing.toml"))?;
    let export = gridmeter_billing::run(&export_cfg, plan.period)?;
    step(&format!(
        "billing export {}: {} customers, {} statement lines, reconciled against raw readings ({} checks), {} held for review",
        export.period,
        export.customers,
        export.statement_lines,
        export.reconciliation_rows,
        export.held_customers().len()
    ));

    // 8. Summary.
    let current = gridmeter_aggregator::current(&agg_cfg, "1d").await?;
    let mut per_channel: BTreeMap<(String, String), Decimal> = BTreeMap::new();
    for row in &current {
        if let Some(u) = row
            .usage
            .and_then(gridmeter_core::decimal::from_scaled_i128)
        {
            *per_channel
                .entry((row.channel.clone(), row.unit.clone()))
                .or_default() += u;
        }
    }
    println!(
        "\n== gridmeter demo: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "readings landed: {landed:.0} from {} devices",
        plan.devices.len()
    );
    if let Some((_, peak)) = memory_mib() {
        println!("peak memory (RSS) of the demo process: {peak} MiB");
    }
    println!("usage over the simulated span (daily windows, current revision):");
    for ((channel, unit), total) in &per_channel {
        println!("  {channel:<20} {total:>24} {unit}");
    }
    println!("invoice totals for {} (incl. tax):", export.period);
    for (currency, total) in &export.totals {
        println!("  {currency} {total}");
    }
    let mut tally = VeeTally::new(&plan);
    gridmeter_aggregator::for_each_current(&agg_cfg, "15m", |rows| tally.add(&rows)).await?;
    let exceptions = gridmeter_aggregator::exceptions(&agg_cfg).await?;
    print!("{}", vee_summary(&tally, &exceptions, &export));
    let data = out.join("data");
    let data = data.canonicalize().unwrap_or(data);
    println!("outputs (Delta Lake tables, docs/tables.md):");
    println!("  raw readings   {}", data.join("raw").display());
    println!(
        "  usage tables   {} (current), {} (every revision)",
        data.join("usage_15m").display(),
        data.join("usage_history_15m").display()
    );
    if let Some(dir) = &export.run_dir {
        println!("  billing export {}", dir.display());
    }
    println!("  configs        {}", cfg_dir.display());
    println!("  dead letters   {}", data.join("deadletter").display());
    println!("query them with DuckDB:");
    println!(
        "  duckdb -c \"INSTALL delta; LOAD delta; SELECT device_id, channel, any_value(unit) AS unit, sum(usage) AS usage FROM delta_scan('{}') GROUP BY ALL ORDER BY ALL\"",
        data.join("usage_1d").display()
    );
    let serve_cfg = serve_config(&out, &cfg_dir)?;
    println!("query them over SQL (gridmeter serve: PostgreSQL wire protocol, TLS, read-only):");
    if !args.hold {
        println!(
            "  cargo run --release -p gridmeter -- serve --config {}   (or rerun the demo with --hold)",
            serve_cfg.path.display()
        );
    }
    println!("  {}", serve_cfg.psql);
    println!("  then, for example:");
    for q in EXAMPLE_QUERIES {
        println!("    {q}");
    }
    if args.hold {
        let config = gridmeter_serve::load_config(&serve_cfg.path)?;
        let server = gridmeter_serve::Server::bind(&config).await?;
        println!(
            "serving {} tables on {} ({}); metrics: http://{collector_metrics}/metrics (collector), http://{agent_metrics}/metrics (agent {}); Ctrl-C to stop",
            server.tables().len(),
            server.local_addr()?,
            serve_cfg.path.display(),
            plan.devices[0].0
        );
        server.run(crate::serve_cli::shutdown()).await?;
    } else {
        println!("metrics were served during the run at http://{collector_metrics}/metrics (collector) and http://{agent_metrics}/metrics (agent {}); pass --hold to keep them up", plan.devices[0].0);
    }
    broker.stop();
    Ok(())
}

/// The aggregator works through the fleet this many devices at a time, so the month's
/// aggregation stays within the demo's memory budget (aggregator/README.md).
const AGG_DEVICES_PER_BATCH: usize = 10;

/// At most this many lines of each kind in the VEE summary.
const SUMMARY_LINES: usize = 8;

/// The estimated windows of one (device, channel, method): how many, the first start, the
/// last end and the Wh estimated.
type Estimated = (usize, i64, i64, Decimal);

/// What the VEE summary needs from `usage_15m`, gathered a file's rows at a time so the
/// month's rows are never all in memory.
struct VeeTally {
    /// The billing period, in microseconds since the epoch.
    period: (i64, i64),
    /// (device, channel, method) -> (windows, first start, last end, Wh estimated).
    estimates: BTreeMap<(String, String, String), Estimated>,
    /// device -> (estimated Wh, all Wh) over the billing period.
    energy: BTreeMap<String, (Decimal, Decimal)>,
}

impl VeeTally {
    fn new(plan: &Plan) -> VeeTally {
        let period = plan
            .period
            .bounds(chrono_tz::Europe::Berlin)
            .map(|(a, b)| (a.timestamp_micros(), b.timestamp_micros()))
            .unwrap_or((i64::MIN, i64::MAX));
        VeeTally {
            period,
            estimates: BTreeMap::new(),
            energy: BTreeMap::new(),
        }
    }

    /// Adds current 15-minute rows (any devices; a device's rows in one call or many).
    fn add(&mut self, rows: &[gridmeter_aggregator::UsageRow]) {
        let (from, to) = self.period;
        for r in rows {
            let usage = r
                .usage
                .and_then(gridmeter_core::decimal::from_scaled_i128)
                .unwrap_or_default();
            let estimated = r.flags.contains(gridmeter_tables::Flags::ESTIMATED);
            if estimated {
                let method = r.flags.method().unwrap_or("device");
                let e = self
                    .estimates
                    .entry((r.device_id.clone(), r.channel.clone(), method.to_string()))
                    .or_insert((0, i64::MAX, i64::MIN, Decimal::ZERO));
                e.0 += 1;
                e.1 = e.1.min(r.window_start);
                e.2 = e.2.max(r.window_end);
                e.3 += usage;
            }
            if r.unit == "Wh" && r.window_start >= from && r.window_start < to {
                let e = self.energy.entry(r.device_id.clone()).or_default();
                if estimated {
                    e.0 += usage.abs();
                }
                e.1 += usage.abs();
            }
        }
    }
}

/// The VEE part of the summary: the estimates (device, channel, method, windows, energy),
/// the validation exceptions (rule, severity, window, observed against threshold) and what
/// billing did with the customers concerned (held with the first reason, or billed with the
/// estimated share of their energy).
fn vee_summary(
    tally: &VeeTally,
    exceptions: &[gridmeter_tables::exceptions::ExceptionRow],
    export: &gridmeter_billing::ExportSummary,
) -> String {
    let at = |us: i64| {
        DateTime::from_timestamp_micros(us)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let dec = |v: Option<i128>| {
        v.and_then(gridmeter_core::decimal::from_scaled_i128)
            .map_or_else(|| "-".to_string(), |d| d.normalize().to_string())
    };
    let mut s = String::from("validation, estimation, editing (usage_15m, exceptions):\n");
    if tally.estimates.is_empty() && exceptions.is_empty() {
        s.push_str("  nothing estimated, no exception\n");
    }
    for ((device, channel, method), (n, first, last, wh)) in
        tally.estimates.iter().take(SUMMARY_LINES)
    {
        let _ = writeln!(
            s,
            "  estimate  {device} {channel}: {n} windows {} .. {}, method {method}, {} kWh estimated",
            at(*first),
            at(*last),
            (*wh / Decimal::ONE_THOUSAND).normalize()
        );
    }
    for e in exceptions.iter().take(SUMMARY_LINES) {
        let _ = writeln!(
            s,
            "  exception {} {}: rule {} ({}), window {} .. {}, observed {} > threshold {}, action {}",
            e.device_id,
            e.channel,
            e.rule,
            e.severity,
            at(e.window_start),
            at(e.window_end),
            dec(e.observed),
            dec(e.threshold),
            e.action
        );
    }
    let mut devices: Vec<&str> = tally.estimates.keys().map(|k| k.0.as_str()).collect();
    devices.extend(exceptions.iter().map(|e| e.device_id.as_str()));
    devices.sort_unstable();
    devices.dedup();
    for device in devices.into_iter().take(SUMMARY_LINES) {
        let customer = format!("C-{}", &device[device.find('-').map_or(0, |i| i + 1)..]);
        let held: Vec<&gridmeter_billing::Exception> = export
            .held
            .iter()
            .filter(|e| e.customer_id == customer)
            .collect();
        match held.first() {
            Some(e) => {
                let _ = writeln!(s, "  outcome   {customer} ({device}): held: {}", e.reason);
            }
            None => {
                let (est, total) = tally.energy.get(device).copied().unwrap_or_default();
                let share = if total.is_zero() {
                    Decimal::ZERO
                } else {
                    (est / total * Decimal::ONE_HUNDRED).round_dp(2)
                };
                let _ = writeln!(
                    s,
                    "  outcome   {customer} ({device}): billed, {share} % of its billed energy estimated"
                );
            }
        }
    }
    s
}

/// Two queries the demo suggests (serve/README.md has more).
const EXAMPLE_QUERIES: [&str; 2] = [
    "SELECT m.customer_id, date_trunc('day', u.window_start) AS day, sum(u.usage) / 1000 AS kwh FROM usage_1d u JOIN meters m USING (device_id) WHERE u.channel = 'energy_import' GROUP BY 1, 2 ORDER BY 1, 2 LIMIT 10;",
    "SELECT customer_id, currency, sum(amount) AS total FROM statement_lines GROUP BY 1, 2 ORDER BY total DESC LIMIT 5;",
];

/// The demo's `serve.toml` and how to connect to it.
struct ServeSetup {
    path: PathBuf,
    psql: String,
}

/// Writes `config/serve.toml` (TLS with the demo broker's certificate, user `gridmeter`
/// with a fresh password in `config/serve.password`).
fn serve_config(out: &Path, cfg_dir: &Path) -> anyhow::Result<ServeSetup> {
    let addr = local_addr(5433)?;
    let password: String = (0..20)
        .map(|_| char::from(b"abcdefghijkmnpqrstuvwxyz23456789"[rand_index(32)]))
        .collect();
    let pw_path = cfg_dir.join("serve.password");
    std::fs::write(&pw_path, format!("{password}\n"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pw_path, std::fs::Permissions::from_mode(0o600))?;
    }
    let pki = out.join("pki");
    let text = format!(
        "# gridmeter serve for the demo's tables (serve/README.md)\n\
         listen = \"{addr}\"\n\
         data_root = \"{}\"\n\
         registry = \"{}\"\n\
         query_timeout = \"60s\"\n\
         [tls]\n\
         cert = \"{}\"\n\
         key = \"{}\"\n\
         client_ca = \"{}\"\n\
         [[users]]\n\
         name = \"gridmeter\"\n\
         password_file = \"{}\"\n",
        toml_path(&out.join("data")),
        toml_path(&cfg_dir.join("registry.toml")),
        toml_path(&pki.join("server.crt")),
        toml_path(&pki.join("server.key")),
        toml_path(&pki.join("ca.crt")),
        toml_path(&pw_path),
    );
    let path = cfg_dir.join("serve.toml");
    std::fs::write(&path, text)?;
    let psql = format!(
        "PGPASSWORD=$(cat {}) psql \"host=127.0.0.1 port={} user=gridmeter dbname=gridmeter sslmode=verify-full sslrootcert={}\"",
        pw_path.display(),
        addr.port(),
        pki.join("ca.crt").display()
    );
    Ok(ServeSetup { path, psql })
}

/// Resident and peak resident memory of this process, MiB (Linux `/proc/self/status`).
fn memory_mib() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn rand_index(n: usize) -> usize {
    rand::random_range(0..n)
}

async fn wait_for(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}
