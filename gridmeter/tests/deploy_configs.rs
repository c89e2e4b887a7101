//! The configs shipped under deploy/ (docker-compose's TOML files and the TOML embedded in
//! the Kubernetes ConfigMaps) parse and validate with each component's own loader, so a
//! renamed or removed key fails here and not at 3 a.m. on a cluster.

use std::path::{Path, PathBuf};

use gridmeter_agent::AgentConfig;
use gridmeter_aggregator::AggregatorConfig;
use gridmeter_billing::ExportConfig;
use gridmeter_collector::CollectorConfig;
use gridmeter_core::config::{parse, Validate};
use gridmeter_core::store::DataRoot;
use gridmeter_core::testkit::Pki;
use gridmeter_core::tls::TlsFiles;
use serde::de::DeserializeOwned;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The block scalar `<key>: |` of a ConfigMap in `yaml`, dedented, with the init
/// containers' `${VAR}` placeholders filled in.
fn embedded(yaml: &str, key: &str) -> String {
    let lines: Vec<&str> = yaml.lines().collect();
    let head = lines
        .iter()
        .position(|l| l.trim() == format!("{key}: |"))
        .unwrap_or_else(|| panic!("no `{key}: |` block"));
    let indent = |l: &str| l.len() - l.trim_start().len();
    let outer = indent(lines[head]);
    let body: Vec<&str> = lines[head + 1..]
        .iter()
        .copied()
        .take_while(|l| l.trim().is_empty() || indent(l) > outer)
        .collect();
    let inner = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| indent(l))
        .min()
        .expect("a non-empty block");
    body.iter()
        .map(|l| l.get(inner..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("${COLLECTOR_ID}", "gridmeter-collector-0")
        .replace("${NODE_NAME}", "node-1")
}

/// `text` with the certificate paths of its `tls = { ca, cert, key }` line pointing at
/// real files (validation reads them), everything else as shipped.
fn with_tls(text: &str, files: &TlsFiles) -> String {
    let quoted = |line: &str, key: &str, path: &Path| {
        let at = line
            .find(&format!("{key} = \""))
            .unwrap_or_else(|| panic!("no {key} in {line}"));
        let start = at + key.len() + 4;
        let end = start + line[start..].find('"').expect("closing quote");
        format!("{}{}{}", &line[..start], path.display(), &line[end..])
    };
    text.lines()
        .map(|l| {
            if l.trim_start().starts_with("tls = {") {
                let l = quoted(l, "ca", &files.ca);
                let l = quoted(&l, "cert", &files.cert);
                quoted(&l, "key", &files.key)
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The path every component's `[object_store]` reads its S3 secret key from (each mounts
/// its own Secret there).
const S3_SECRET: &str = "/etc/gridmeter/s3/secret_access_key";

/// `text` with the S3 secret key file pointing at a real one (mode 0600).
fn with_s3_secret(text: &str, dir: &Path) -> String {
    let path = dir.join("s3-secret");
    std::fs::write(&path, "secret\n").unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    text.replace(S3_SECRET, &path.display().to_string())
}

/// Parses and validates `text` as the component's config, with real certificates.
fn check<T: DeserializeOwned + Validate + 'static>(text: &str, name: &str) -> T {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["edge-1", "node-1"]).unwrap();
    let text = &with_s3_secret(text, dir.path());
    let files = if text.contains("collector_id") {
        pki.collector()
    } else if text.contains("edge-1") {
        pki.device("edge-1")
    } else {
        pki.device("node-1")
    };
    let mut parsed =
        parse::<T>(&with_tls(text, &files), name).unwrap_or_else(|e| panic!("{name}: {e}"));
    restore_s3_secret(&mut parsed);
    parsed
}

/// Puts the shipped secret file path back (the temporary one differs per call), so configs
/// of different components can be compared.
fn restore_s3_secret<T: 'static>(config: &mut T) {
    let any: &mut dyn std::any::Any = config;
    let os = if let Some(c) = any.downcast_mut::<CollectorConfig>() {
        c.object_store.as_mut()
    } else if let Some(a) = any.downcast_mut::<AggregatorConfig>() {
        a.object_store.as_mut()
    } else {
        None
    };
    if let Some(os) = os {
        if os.secret_access_key_file.is_some() {
            os.secret_access_key_file = Some(S3_SECRET.into());
        }
    }
}

#[test]
fn docker_compose_configs() {
    check::<AgentConfig>(
        &read("deploy/docker/agent.toml"),
        "deploy/docker/agent.toml",
    );
    check::<CollectorConfig>(
        &read("deploy/docker/collector.toml"),
        "deploy/docker/collector.toml",
    );
    check::<AggregatorConfig>(
        &read("deploy/docker/aggregator.toml"),
        "deploy/docker/aggregator.toml",
    );
}

#[test]
fn kubernetes_configmaps() {
    let maps = read("deploy/k8s/20-configmaps.yaml");
    let collector: CollectorConfig = check(
        &embedded(&maps, "collector.toml"),
        "20-configmaps.yaml collector.toml",
    );
    check::<AgentConfig>(
        &embedded(&maps, "agent.toml"),
        "20-configmaps.yaml agent.toml",
    );
    let aggregator: AggregatorConfig = check(
        &embedded(&read("deploy/k8s/50-aggregator.yaml"), "aggregator.toml"),
        "50-aggregator.yaml aggregator.toml",
    );
    // The aggregator reads where the collectors land.
    assert_eq!(aggregator.object_store, collector.object_store);
    assert!(aggregator.object_store.is_some());

    // The billing CronJob: billing.toml names registry.toml and tariffs.toml next to it,
    // as the ConfigMap mounts them.
    let billing = read("deploy/k8s/70-billing.yaml");
    let dir = tempfile::tempdir().unwrap();
    for f in ["billing.toml", "registry.toml", "tariffs.toml"] {
        let text = with_s3_secret(&embedded(&billing, f), dir.path());
        std::fs::write(dir.path().join(f), text).unwrap();
    }
    let cfg = ExportConfig::load(&dir.path().join("billing.toml"))
        .unwrap_or_else(|e| panic!("70-billing.yaml: {e}"));
    cfg.check()
        .unwrap_or_else(|e| panic!("70-billing.yaml registry/tariffs: {e}"));
    assert_eq!(
        (
            cfg.hold.max_estimated_share.map(|d| d.to_string()),
            cfg.hold.exception_severity.as_deref()
        ),
        (Some("0.20".to_string()), Some("critical")),
        "the shipped billing config holds bills for review"
    );
    let DataRoot::ObjectStore(mut billing_store) = cfg.tables else {
        panic!("billing reads S3 in Kubernetes");
    };
    assert_eq!(
        billing_store.secret_access_key_file.as_deref(),
        Some(dir.path().join("s3-secret").as_path()),
        "billing reads its own S3 secret from a file"
    );
    billing_store.secret_access_key_file = Some(S3_SECRET.into());
    assert_eq!(
        billing_store,
        aggregator.object_store.expect("checked above"),
        "billing reads the aggregator's tables"
    );
    // No component's config holds a secret: each names the file its own Secret is at.
    assert!(collector
        .object_store
        .as_ref()
        .is_some_and(|o| o.secret_access_key.is_none()
            && o.secret_access_key_file.as_deref() == Some(Path::new(S3_SECRET))));
}

#[test]
fn extractor_finds_blocks_and_stops_at_the_next_key() {
    let yaml = "data:\n  a.toml: |\n    x = 1\n\n    [t]\n    y = \"${NODE_NAME}\"\n  b.toml: |\n    z = 2\n";
    assert_eq!(embedded(yaml, "a.toml"), "x = 1\n\n[t]\ny = \"node-1\"");
    assert_eq!(embedded(yaml, "b.toml"), "z = 2");
    let files = TlsFiles {
        ca: "/c".into(),
        cert: "/d".into(),
        key: "/e".into(),
    };
    assert_eq!(
        with_tls(
            "a = 1\ntls = { ca = \"/x\", cert = \"/y\", key = \"/z\" }",
            &files
        ),
        "a = 1\ntls = { ca = \"/c\", cert = \"/d\", key = \"/e\" }"
    );
}
