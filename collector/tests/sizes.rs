//! Sizes aligned end to end: the shipped broker configs refuse exactly what the collector
//! would refuse (`max_packet_size` = `limits.max_payload_bytes`), and the collector accepts
//! every packet the broker can deliver.

use std::path::Path;

use gridmeter_collector::CollectorConfig;

fn deploy(file: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy")
            .join(file),
    )
    .unwrap()
}

fn collector_defaults() -> CollectorConfig {
    CollectorConfig::new("c1", "/d".into(), "/w".into())
}

#[test]
fn mosquitto_max_packet_size_is_the_collectors_payload_limit() {
    let conf = deploy("mosquitto/mosquitto.conf");
    let sizes: Vec<usize> = conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("max_packet_size "))
        .map(|v| v.trim().parse().unwrap())
        .collect();
    let c = collector_defaults();
    assert_eq!(sizes, vec![c.limits.max_payload_bytes]);
    assert!(c.mqtt.max_packet_bytes >= sizes[0]);
}

#[test]
fn emqx_max_packet_size_is_the_collectors_payload_limit() {
    let conf = deploy("emqx/emqx.conf");
    let values: Vec<&str> = conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("max_packet_size = "))
        .collect();
    assert_eq!(values.len(), 1, "{values:?}");
    // EMQX byte sizes: KB and MB are powers of 1024.
    let v = values[0].trim_matches('"');
    let bytes = if let Some(n) = v.strip_suffix("MB") {
        n.parse::<usize>().unwrap() * 1024 * 1024
    } else if let Some(n) = v.strip_suffix("KB") {
        n.parse::<usize>().unwrap() * 1024
    } else {
        v.trim_end_matches('B').parse().unwrap()
    };
    let c = collector_defaults();
    assert_eq!(bytes, c.limits.max_payload_bytes);
    assert!(c.mqtt.max_packet_bytes >= bytes);
}

/// The shipped collector configs do not override the limits (so the defaults above apply).
#[test]
fn shipped_collector_configs_keep_the_default_limits() {
    for f in ["docker/collector.toml", "k8s/20-configmaps.yaml"] {
        let text = deploy(f);
        assert!(
            !text.contains("max_payload_bytes") && !text.contains("max_packet_bytes"),
            "{f} overrides a size limit; update the broker configs and this test together"
        );
    }
}
