//! A real S3 server for tests: moto's, on 127.0.0.1 (`python3 -m moto.server`).

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// A moto S3 server on 127.0.0.1, stopped (its process killed) on drop. Its objects live in
/// its memory only.
pub struct Moto {
    child: Child,
    port: u16,
    log: tempfile::NamedTempFile,
}

impl Moto {
    /// Starts moto and waits until it accepts connections; `None` (after saying why on
    /// stderr) when `python3` cannot import moto (`pip install 'moto[server]'`, see
    /// `.ci/requirements.txt`).
    pub fn start() -> Option<Moto> {
        let probe = Command::new("python3")
            .args(["-c", "import moto"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !probe.is_ok_and(|s| s.success()) {
            eprintln!(
                "SKIPPED: python3 cannot import moto (pip install 'moto[server]', see .ci/requirements.txt)"
            );
            return None;
        }
        // A port taken between the probe and moto's bind makes moto exit: try again.
        for _ in 0..3 {
            let port = free_port();
            let log = tempfile::NamedTempFile::new().expect("moto log file");
            let child = Command::new("python3")
                .args([
                    "-m",
                    "moto.server",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                ])
                .stdin(Stdio::null())
                .stdout(log.reopen().expect("moto log"))
                .stderr(log.reopen().expect("moto log"))
                .spawn()
                .expect("python3 -m moto.server");
            let mut moto = Moto { child, port, log };
            let deadline = Instant::now() + Duration::from_secs(60);
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            while Instant::now() < deadline {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return Some(moto);
                }
                if moto.child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let log = std::fs::read_to_string(moto.log.path()).unwrap_or_default();
            eprintln!("moto did not start on port {port}:\n{log}");
        }
        panic!("moto server did not start");
    }

    /// `http://127.0.0.1:<port>`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (with boto3, as the fault suite's harness does).
    pub fn create_bucket(&self, bucket: &str) {
        let script = format!(
            "import boto3\nboto3.client('s3', endpoint_url={:?}, region_name='us-east-1', \
             aws_access_key_id='testing', aws_secret_access_key='testing').create_bucket(Bucket={bucket:?})\n",
            self.endpoint()
        );
        let out = Command::new("python3")
            .args(["-c", &script])
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "create_bucket: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// An `[object_store]` section for `url` (`s3://bucket/prefix`) on this server.
    #[cfg(feature = "store")]
    pub fn config(&self, url: &str) -> crate::store::ObjectStoreConfig {
        crate::store::ObjectStoreConfig {
            url: url.to_string(),
            endpoint: Some(self.endpoint()),
            region: Some("us-east-1".into()),
            access_key_id: Some("testing".into()),
            secret_access_key: Some("testing".into()),
            secret_access_key_file: None,
            allow_http: true,
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every file under `dir`, recursively, as sorted paths relative to `dir` with `/`
/// separators (object keys).
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).expect("read_dir") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).expect("under base");
                out.push(
                    rel.components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join("/"),
                );
            }
        }
    }
    let mut out = Vec::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out.sort();
    out
}

/// Copies the files under `local` that `store` does not hold yet to `<prefix>/<relative
/// path>`, byte for byte; returns how many.
#[cfg(feature = "store")]
pub async fn upload_dir(
    local: &Path,
    store: &dyn object_store::ObjectStore,
    prefix: &str,
) -> usize {
    use object_store::path::Path as ObjectPath;
    use object_store::{ObjectStoreExt, PutPayload};
    let mut n = 0;
    for rel in files_under(local) {
        let key = match prefix.trim_matches('/') {
            "" => ObjectPath::from(rel.as_str()),
            p => ObjectPath::from(format!("{p}/{rel}")),
        };
        if store.head(&key).await.is_ok() {
            continue;
        }
        let bytes = std::fs::read(local.join(&rel)).expect("local file");
        store
            .put(&key, PutPayload::from(bytes))
            .await
            .expect("upload");
        n += 1;
    }
    n
}
