//! `gridmeter serve` end to end on the short demo's tables: psql and psycopg over TLS get the
//! rows DuckDB gets from the same tables, writes are refused, a long query is cancelled at
//! the timeout, wrong passwords are refused, a client certificate logs in
//! (serve/tests/check_serve.py); and every panel of the SQL dashboards returns rows
//! (dashboards/check_sql_panels.py). Also: the demo's terminal output is progress and summary
//! only, with the logs in a file.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python(script: &str, args: &[String]) {
    let out = Command::new("python3")
        .arg(workspace().join(script))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn serve_answers_psql_and_psycopg_like_duckdb() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let demo = Command::new(env!("CARGO_BIN_EXE_gridmeter"))
        .args(["demo", "--short", "--out"])
        .arg(&out)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&demo.stdout);
    assert!(
        demo.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&demo.stderr)
    );
    // The terminal: progress and summary, no log lines; the logs are in the file it names.
    assert!(
        !stdout.contains(" INFO ") && !stdout.contains("session_present"),
        "{stdout}"
    );
    assert!(
        demo.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&demo.stderr)
    );
    let log = std::fs::read_to_string(out.join("demo.log")).unwrap();
    assert!(log.contains("INFO"), "demo.log holds the logs");
    assert!(stdout.contains(&out.join("demo.log").display().to_string()));
    assert!(stdout.contains("psql \"host=127.0.0.1"), "{stdout}");

    let port = free_port();
    let pki = out.join("pki");
    let cfg = out.join("config");
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\n\
         data_root = \"{data}\"\n\
         registry = \"{cfg}/registry.toml\"\n\
         query_timeout = \"3s\"\n\
         row_limit = 1000\n\
         [tls]\n\
         cert = \"{pki}/server.crt\"\n\
         key = \"{pki}/server.key\"\n\
         client_ca = \"{pki}/ca.crt\"\n\
         [[users]]\n\
         name = \"gridmeter\"\n\
         password_file = \"{cfg}/serve.password\"\n\
         [[users]]\n\
         name = \"collector-0\"\n\
         client_cert = true\n",
        data = out.join("data").display(),
        cfg = cfg.display(),
        pki = pki.display(),
    );
    let config_path = tmp.path().join("serve.toml");
    std::fs::write(&config_path, config).unwrap();
    let log = std::fs::File::create(tmp.path().join("serve.log")).unwrap();
    let _server = Server(
        Command::new(env!("CARGO_BIN_EXE_gridmeter"))
            .args(["serve", "--config"])
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "serve did not listen: {}",
            std::fs::read_to_string(tmp.path().join("serve.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let s = |p: PathBuf| p.display().to_string();
    let common = vec![
        "--port".to_string(),
        port.to_string(),
        "--ca".into(),
        s(pki.join("ca.crt")),
        "--password-file".into(),
        s(cfg.join("serve.password")),
    ];
    let mut args = common.clone();
    args.extend([
        "--data".into(),
        s(out.join("data")),
        "--registry".into(),
        s(cfg.join("registry.toml")),
        "--cert-user".into(),
        "collector-0".into(),
        "--cert".into(),
        s(pki.join("collectors/collector-0.crt")),
        "--key".into(),
        s(pki.join("collectors/collector-0.key")),
        "--timeout-secs".into(),
        "3".into(),
        "--row-limit".into(),
        "1000".into(),
    ]);
    python("serve/tests/check_serve.py", &args);
    python("dashboards/check_sql_panels.py", &common);
}
