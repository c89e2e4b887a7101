//! Every component's config parser, fed arbitrary and near-valid TOML: it returns a clear
//! error or a config, never panics. (Property tests over arbitrary input stand in for
//! cargo-fuzz, which needs a nightly toolchain this project does not assume.)

use gridmeter_core::config::{parse, ConfigError, Validate};
use proptest::prelude::*;
use serde::de::DeserializeOwned;

fn never_panics<T: DeserializeOwned + Validate>(text: &str) {
    match parse::<T>(text, "fuzz.toml") {
        Ok(_) => {}
        Err(ConfigError { problems, .. }) => {
            assert!(!problems.is_empty(), "an error lists at least one problem");
            assert!(problems.iter().all(|p| !p.trim().is_empty()));
        }
    }
}

fn all(text: &str) {
    never_panics::<gridmeter_agent::AgentConfig>(text);
    never_panics::<gridmeter_collector::CollectorConfig>(text);
    never_panics::<gridmeter_aggregator::AggregatorConfig>(text);
    never_panics::<gridmeter_billing::Registry>(text);
    never_panics::<gridmeter_billing::Tariffs>(text);
}

/// Fragments of real configs, recombined: reaches deep into the structs where random bytes
/// would stop at the first syntax error.
const FRAGMENTS: &[&str] = &[
    "device_id = \"m-1\"\n",
    "device_id = 7\n",
    "[mqtt]\nhost = \"127.0.0.1\"\nport = 8883\n",
    "tls = { ca = \"/nonexistent/ca.crt\", cert = \"c\", key = \"k\" }\n",
    "[buffer]\npath = \"/tmp/x.sqlite\"\nmax_buffer_bytes = 0\n",
    "[[sources]]\ntype = \"simulator\"\nprofile = \"pv_inverter\"\n",
    "[[sources]]\ntype = \"modbus\"\naddress = \"127.0.0.1:502\"\n",
    "[[sources.registers]]\nchannel = \"E\"\naddress = 70000\ntype = \"u32\"\nscale = \"x\"\n",
    "collector_id = \"\"\nwal_dir = \"/tmp/w\"\ndata_root = \"/tmp/d\"\n",
    "windows = [\"15m\", \"0s\", \"-1h\"]\nallowed_lateness = \"2x\"\n",
    "[[customers]]\nid = \"C\"\ntariff = \"nope\"\ncurrency = \"EUR\"\ntime_zone = \"Mars/Base\"\n",
    "[tariffs.t]\ncomponents = [ { type = \"tiered\", name = \"w\", quantity = \"q\", unit = \"m3\", blocks = [] } ]\n",
    "bogus_key = true\n",
    "[[devices]]\nid = \"d\"\nsite = \"s\"\nmultiplier = \"-1\"\ninstalled = \"2026-13-45\"\n",
    "=\n",
    "\"\\u{0}\" = \"\u{feff}\"\n",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn arbitrary_text(text in "\\PC{0,300}") {
        all(&text);
    }

    #[test]
    fn recombined_fragments(picks in proptest::collection::vec(0..FRAGMENTS.len(), 0..8)) {
        let text: String = picks.iter().map(|&i| FRAGMENTS[i]).collect();
        all(&text);
    }
}

#[test]
fn every_problem_of_a_bad_agent_config_is_listed() {
    let text = "device_id = \"m-1\"\nbogus = 1\n[mqtt]\nhost = \"127.0.0.1\"\ntls = { ca = \"/nonexistent/ca.crt\", cert = \"/nonexistent/c.crt\", key = \"/nonexistent/c.key\" }\n[buffer]\npath = \"/tmp/gm-fuzz.sqlite\"\n[[sources]]\ntype = \"simulator\"\nprofile = \"household_meter\"\n";
    let err = parse::<gridmeter_agent::AgentConfig>(text, "agent.toml").unwrap_err();
    let all = err.to_string();
    assert!(all.contains("bogus"), "{all}");
    assert!(all.contains("/nonexistent/ca.crt"), "{all}");
    assert!(all.contains("/nonexistent/c.key"), "{all}");
}
