//! A bad config fails fast with every problem listed: unknown keys, an unreadable
//! certificate and a bad Modbus register map, all in one run.

use std::process::Command;

use gridmeter_agent::AgentConfig;
use gridmeter_core::testkit::Pki;

fn bad_config(pki: &Pki) -> String {
    let tls = pki.device("meter-c");
    format!(
        r#"device_id = "meter-c"
colour = "red"

[mqtt]
host = "127.0.0.1"
port = 8883
connect_timeout = "0s"
tls = {{ ca = "{ca}", cert = "/nonexistent/meter-c.crt", key = "{key}" }}

[buffer]
path = "/tmp/x.sqlite"

[[sources]]
type = "modbus"
address = "127.0.0.1:502"
interval_ms = 0
registers = [
  {{ channel = "Energy-Import", address = 0, type = "u32", count = 1 }},
  {{ channel = "power", address = 2, type = "i16", scale = "zero" }},
  {{ channel = "power", address = 3, type = "f32", kind = "counter" }},
]

[[sources]]
type = "simulator"
speeed = 3

[[sources]]
type = "host"
registers = []

[[sources]]
type = "prometheus"
url = "http://127.0.0.1:9100/metrics"
units = {{ http_requests_total = "per second" }}
max_samples = 0
"#,
        ca = tls.ca.display(),
        key = tls.key.display(),
    )
}

#[test]
fn every_problem_is_listed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["meter-c"]).unwrap();
    let text = bad_config(&pki);
    let err = gridmeter_core::config::parse::<AgentConfig>(&text, "agent.toml").unwrap_err();
    let all = err.to_string();
    for want in [
        "colour: unknown field",
        "sources[1].speeed: unknown field",
        "sources[1].profile: is required for type \"simulator\"",
        "sources[2].registers: unknown field `registers` for type \"host\"",
        "mqtt.tls.cert: client certificate /nonexistent/meter-c.crt: cannot read",
        "sources[0].interval_ms: must be > 0",
        "sources[0].registers[0].channel: \"Energy-Import\"",
        "sources[0].registers[0].count: is 1 but type U32 occupies 2 register(s)",
        "sources[0].registers[1].scale",
        "sources[0].registers[2].channel: \"power\" is used twice",
        "sources[0].registers[2].kind: f32 registers are approximate",
        "sources[0].registers[0].unit: must be 1 to 32 characters, got 0",
        "sources[3].units.http_requests_total: \"per second\" contains white space",
        "sources[3].max_samples: must be > 0",
        "mqtt.connect_timeout: must be at least 1 s",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }

    // The binary fails fast (exit code 2) and prints the same list.
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, &text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gridmeter-agent"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("problems:"), "{stderr}");
    assert!(stderr.contains("colour: unknown field"), "{stderr}");
    assert!(stderr.contains("is used twice"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_good_config_checks_ok() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["meter-c"]).unwrap();
    let tls = pki.device("meter-c");
    let text = format!(
        r#"device_id = "meter-c"
metrics_listen = "127.0.0.1:9101"
[mqtt]
host = "broker.example"
tls = {{ ca = "{}", cert = "{}", key = "{}" }}
encoding = "json"
[buffer]
path = "/var/lib/gridmeter/buffer.sqlite"
[[sources]]
type = "host"
[[sources]]
type = "prometheus"
url = "http://127.0.0.1:9100/metrics"
include = ["http_requests_total"]
[[sources]]
type = "sunspec"
address = "127.0.0.1:502"
[[sources]]
type = "simulator"
profile = "household_meter"
start = "2026-10-01T00:00:00Z"
step_secs = 900
speedup = 3600.0
register_max = 99999999
"#,
        tls.ca.display(),
        tls.cert.display(),
        tls.key.display()
    );
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, &text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gridmeter-agent"))
        .arg("--config")
        .arg(&path)
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The meter sources' problems, all in one run: an unknown driver, a serial port that does
/// not exist, a bad AES key length, an unknown source type, two sources on one bus with
/// different settings, a primary address out of range.
#[test]
fn every_problem_of_the_meter_sources_is_listed() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["meter-c"]).unwrap();
    let tls = pki.device("meter-c");
    let tty = dir.path().join("ttyS9");
    std::fs::write(&tty, "").unwrap();
    let stick = dir.path().join("ttyACM0");
    std::fs::write(&stick, "").unwrap();
    let text = format!(
        r#"device_id = "meter-c"
[mqtt]
host = "127.0.0.1"
tls = {{ ca = "{ca}", cert = "{cert}", key = "{key}" }}
[buffer]
path = "/tmp/x.sqlite"

[[sources]]
type = "modbus"
transport = "rtu"
port = "/nonexistent/ttyUSB0"
driver = "eastron_sdm999"

[[sources]]
type = "wmbus"
port = "{stick}"
mode = "t1"
meters = [{{ id = "12345678", key = "00112233", prefix = "water" }}]

[[sources]]
type = "dlms_hdlc"

[[sources]]
type = "modbus"
name = "bus-a"
transport = "rtu"
port = "{tty}"
baud_rate = 9600
unit_ids = [1, 2]
driver = "eastron_sdm120"

[[sources]]
type = "modbus"
name = "bus-b"
transport = "rtu"
port = "{tty}"
baud_rate = 19200
driver = "abb_b23"
channel_prefix = "abb"

[[sources]]
type = "mbus"
port = "{tty}"
meters = [{{ primary = 251, prefix = "heat" }}]
"#,
        ca = tls.ca.display(),
        cert = tls.cert.display(),
        key = tls.key.display(),
        tty = tty.display(),
        stick = stick.display(),
    );
    let err = gridmeter_core::config::parse::<AgentConfig>(&text, "agent.toml").unwrap_err();
    let all = err.to_string();
    for want in [
        "sources[0].port: serial port \"/nonexistent/ttyUSB0\" does not exist",
        "sources[0].driver: unknown driver \"eastron_sdm999\"; the catalogue has: abb_b23",
        "sources[1].meters[0].key: an AES-128 key is 32 hex digits (16 bytes), this one has 8 characters",
        "sources[2].type: unknown source type \"dlms_hdlc\", one of: modbus",
        "sources[4].baud_rate: 19200 baud, parity Even, 1 stop bit(s) shares its bus with sources[3], which sets 9600 baud",
        "sources[5].meters[0].primary: 251 is not a primary address (1..=250)",
        "sources[5].port: the serial port is also used by sources[3] (type \"modbus\"); one port speaks one protocol",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
}

/// Every `[[sources]]` entry of agent.example.toml, commented out or not, reads as its
/// type: the example names no stale key.
#[test]
fn every_source_of_the_example_config_reads() {
    let text = include_str!("../agent.example.toml");
    let key = |l: &str| {
        let l = l.trim_start();
        l.starts_with("[[")
            || l.split_once(" = ").is_some_and(|(k, _)| {
                !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            })
    };
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if key(rest) => rest,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let table: toml::Table = uncommented.parse().unwrap();
    let sources = table["sources"].as_array().unwrap();
    assert!(sources.len() >= 10, "{}", sources.len());
    for (i, s) in sources.iter().enumerate() {
        let entry =
            gridmeter_agent::config::SourceConfig::from_table(s.as_table().unwrap().clone());
        assert!(
            entry.spec().is_some(),
            "sources[{i}] of the example: {entry:?}"
        );
    }
}
