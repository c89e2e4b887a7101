//! Test kit: a real PKI and a real Mosquitto broker with mutual TLS and per-device ACLs.
//!
//! Tests of every component talk to the same kind of broker production uses, on loopback:
//! `require_certificate true`, `use_identity_as_username true` and
//! `use_username_as_clientid true` (the certificate CN becomes the MQTT username and client
//! id), the PKI's CRL, and the shipped ACL (deploy/mosquitto/acl) that lets device X publish
//! only to `gridmeter/v1/X/readings`. Enabled by the `testkit` feature (dev-dependencies only).
//! Also a real S3 server ([`Moto`]) for the components that read and write object stores.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod moto;
#[cfg(feature = "store")]
pub use moto::upload_dir;
pub use moto::{files_under, Moto};

use crate::model::DeviceId;
use crate::pki::{self, Identity, InitOptions, PkiDir, PkiError};
use crate::tls::{CertInfo, TlsFiles};

/// A PKI directory with CA, CRL, broker, collector and device certificates.
pub struct Pki {
    dir: PathBuf,
    pki: Mutex<PkiDir>,
}

impl Pki {
    /// Creates (or reuses) the PKI in `dir` with certificates for `devices` and collector
    /// `collector-0`.
    pub fn new(dir: &Path, devices: &[&str]) -> Result<Pki, PkiError> {
        let ids: Vec<DeviceId> = devices
            .iter()
            .map(|d| DeviceId::new(*d).expect("test device ids are valid"))
            .collect();
        let pki = PkiDir::init(
            dir,
            &InitOptions {
                devices: ids,
                ..Default::default()
            },
        )?;
        Ok(Pki {
            dir: dir.to_path_buf(),
            pki: Mutex::new(pki),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    /// The CRL (`crlfile` of the test broker).
    pub fn crl(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PkiDir> {
        self.pki.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// TLS files of `who`, issuing its certificate if it does not exist yet.
    pub fn files(&self, who: &Identity) -> TlsFiles {
        let (cert, key) = who.paths(&self.dir);
        if !cert.exists() {
            self.lock()
                .issue(who, pki::DEFAULT_DAYS)
                .expect("issue a test certificate");
        }
        TlsFiles {
            ca: self.ca_cert(),
            cert,
            key,
        }
    }

    /// TLS files of collector `collector-0`.
    pub fn collector(&self) -> TlsFiles {
        self.collector_named("0")
    }

    /// TLS files of collector `collector-<name>` (`1`, `collector-1`), issued if needed.
    /// The shipped ACL lists collector-0 to collector-3.
    pub fn collector_named(&self, name: &str) -> TlsFiles {
        self.files(&Identity::collector(name).expect("valid collector name"))
    }

    /// TLS files of a device; issues its certificate if it does not exist yet.
    pub fn device(&self, id: &str) -> TlsFiles {
        let dev = DeviceId::new(id).expect("test device ids are valid");
        self.files(&Identity::device(&dev).expect("test device ids are not reserved"))
    }

    /// TLS files of a plain client (role client) named `name`.
    pub fn client(&self, name: &str) -> TlsFiles {
        self.files(&Identity::client(name).expect("valid client name"))
    }

    /// Renews `who`'s certificate (new key, same CN), valid `days`; returns the new one.
    pub fn renew(&self, who: &Identity, days: u32) -> CertInfo {
        self.lock().renew(who, days).expect("renew").1
    }

    /// Revokes every certificate of `who` but the current one (after [`Pki::renew`]) and
    /// rewrites the CRL (restart the broker to load it).
    pub fn revoke_superseded(&self, who: &Identity) -> Vec<String> {
        self.lock()
            .revoke_superseded(who, pki::Reason::Superseded, pki::DEFAULT_CRL_DAYS)
            .expect("revoke superseded")
    }

    /// Revokes every certificate of `who` and rewrites the CRL (restart the broker to load
    /// it).
    pub fn revoke(&self, who: &Identity) -> Vec<String> {
        self.lock()
            .revoke(who, pki::Reason::KeyCompromise, pki::DEFAULT_CRL_DAYS)
            .expect("revoke")
    }
}

/// How to run the test broker.
#[derive(Debug, Clone)]
pub struct MosquittoOptions {
    /// Enforce the per-device ACL (default true). Without it any certified client may
    /// publish anywhere (useful for benchmarks publishing as many devices).
    pub acl: bool,
    /// Keep sessions and queued messages on disk across restarts (default true).
    pub persistence: bool,
    /// Lines appended to the generated mosquitto.conf.
    pub extra_conf: String,
}

impl Default for MosquittoOptions {
    fn default() -> Self {
        MosquittoOptions {
            acl: true,
            persistence: true,
            extra_conf: String::new(),
        }
    }
}

/// A running `mosquitto` on 127.0.0.1 with TLS client certificates. Killed on drop.
pub struct Mosquitto {
    port: u16,
    dir: tempfile::TempDir,
    conf: PathBuf,
    child: Option<Child>,
}

/// The ACL the test broker enforces: deploy/mosquitto/acl as shipped.
pub const ACL: &str = include_str!("../../deploy/mosquitto/acl");

/// Finds a free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

/// The mosquitto binary: `$MOSQUITTO` or `/usr/sbin/mosquitto`.
pub fn mosquitto_bin() -> PathBuf {
    std::env::var_os("MOSQUITTO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/mosquitto"))
}

impl Mosquitto {
    /// Starts a broker on a free port and waits until it accepts connections.
    pub fn start(pki: &Pki, opts: MosquittoOptions) -> std::io::Result<Mosquitto> {
        let dir = tempfile::Builder::new().prefix("gm-mosquitto").tempdir()?;
        let port = free_port();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)?;
        let acl_path = dir.path().join("acl");
        std::fs::write(&acl_path, ACL)?;
        let conf = dir.path().join("mosquitto.conf");
        let mut f = std::fs::File::create(&conf)?;
        writeln!(f, "per_listener_settings false")?;
        // When started as root, mosquitto drops to the `mosquitto` user, which could not read
        // the test PKI or the temp dirs; keep the invoking user (ignored when not root).
        writeln!(
            f,
            "user {}",
            std::env::var("USER").unwrap_or_else(|_| "root".into())
        )?;
        writeln!(f, "allow_anonymous false")?;
        if opts.persistence {
            writeln!(f, "persistence true")?;
            writeln!(f, "persistence_location {}/", data.display())?;
            writeln!(f, "autosave_interval 1")?;
        } else {
            writeln!(f, "persistence false")?;
        }
        writeln!(
            f,
            "log_dest file {}",
            dir.path().join("mosquitto.log").display()
        )?;
        writeln!(f, "log_type error")?;
        writeln!(f, "log_type warning")?;
        writeln!(f, "log_type notice")?;
        writeln!(f, "log_type information")?;
        writeln!(f, "max_queued_messages 1000000")?;
        writeln!(f, "max_inflight_messages 1000")?;
        writeln!(f, "listener {port} 127.0.0.1")?;
        writeln!(f, "cafile {}", pki.ca_cert().display())?;
        writeln!(f, "certfile {}", pki.server_cert().display())?;
        writeln!(f, "keyfile {}", pki.server_key().display())?;
        writeln!(f, "require_certificate true")?;
        writeln!(f, "use_identity_as_username true")?;
        writeln!(f, "use_username_as_clientid true")?;
        writeln!(f, "crlfile {}", pki.crl().display())?;
        if opts.acl {
            writeln!(f, "acl_file {}", acl_path.display())?;
        }
        writeln!(f, "{}", opts.extra_conf)?;
        drop(f);
        let mut m = Mosquitto {
            port,
            dir,
            conf,
            child: None,
        };
        m.spawn()?;
        Ok(m)
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    return Err(std::io::Error::other(format!(
                        "mosquitto exited with {status}; log:\n{}",
                        self.log()
                    )));
                }
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "mosquitto did not listen on port {} within 20 s; log:\n{}",
                    self.port,
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Path of the generated config (the ACL is beside it).
    pub fn conf_path(&self) -> &Path {
        &self.conf
    }

    /// Graceful stop (SIGTERM; mosquitto saves its persistence file).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Abrupt stop (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Deletes the broker's persistence file (the worst case of a crash: sessions and queued
    /// messages gone). Call it while the broker is stopped.
    pub fn wipe_persistence(&mut self) -> std::io::Result<()> {
        let data = self.dir.path().join("data");
        for e in std::fs::read_dir(&data)? {
            std::fs::remove_file(e?.path())?;
        }
        Ok(())
    }

    /// Starts the broker again on the same port with the same persistence.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        // The port may linger briefly; spawn retries until it listens.
        self.spawn()
    }

    /// Starts it again after [`stop`](Self::stop) or [`kill`](Self::kill).
    pub fn start_again(&mut self) -> std::io::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        self.spawn()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_requires_certificates_and_enforces_acl() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path(), &["dev-a", "dev-b"]).unwrap();
        let broker = Mosquitto::start(&pki, MosquittoOptions::default()).unwrap();
        let port = broker.port().to_string();
        let tls = |f: &TlsFiles| {
            vec![
                "--cafile".to_string(),
                f.ca.display().to_string(),
                "--cert".to_string(),
                f.cert.display().to_string(),
                "--key".to_string(),
                f.key.display().to_string(),
            ]
        };
        let run = |args: Vec<String>| {
            Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &port, "-q", "1", "-m", "{}"])
                .args(args)
                .output()
                .unwrap()
        };
        let a = pki.device("dev-a");
        let ok = run([
            tls(&a),
            vec!["-t".into(), "gridmeter/v1/dev-a/readings".into()],
        ]
        .concat());
        assert!(ok.status.success(), "{ok:?}\n{}", broker.log());
        // Without a client certificate the TLS handshake fails.
        let no_cert = run(vec![
            "--cafile".into(),
            a.ca.display().to_string(),
            "-t".into(),
            "gridmeter/v1/dev-a/readings".into(),
        ]);
        assert!(
            !no_cert.status.success(),
            "a client without certificate connected"
        );
    }
}
