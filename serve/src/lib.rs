//! gridmeter-serve: `gridmeter serve`, a read-only SQL endpoint over the gridmeter tables.
//!
//! It speaks the PostgreSQL wire protocol (`pgwire`), so psql, Grafana's PostgreSQL data
//! source, DBeaver, Metabase, pandas and psycopg connect with no plugin; queries run on
//! DataFusion over the Delta tables of the data root (opened through `gridmeter-tables`, at
//! their latest version at every query) and the billing export's published runs.
//!
//! - [`config`] — `serve.toml`;
//! - [`catalog`] — which tables, under which SQL names;
//! - [`scan`] — reading a Delta snapshot's files (and the runs' files) with DataFusion;
//! - [`guard`] — read-only: only queries run;
//! - [`engine`] — planning and running a query under its limits;
//! - [`pg`] — the wire protocol; [`auth`] — SCRAM passwords and client certificates;
//!   [`tls`] — the server's TLS;
//! - [`report`] — a static HTML usage report from the same engine.
//!
//! serve/README.md has the tables, example queries and the operational notes.

pub mod auth;
pub mod catalog;
pub mod config;
pub mod engine;
pub mod guard;
pub mod pg;
pub mod report;
pub mod scan;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gridmeter_core::store::DataRoot;
use gridmeter_tables::Root;
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::{ConnectionManager, PgWireServerHandlers};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use config::ServeConfig;

/// What can go wrong starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Table(#[from] gridmeter_tables::TableError),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error(transparent)]
    TlsFiles(#[from] gridmeter_core::tls::TlsError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("catalog: {0}")]
    Catalog(String),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("datafusion: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error(transparent)]
    Query(#[from] engine::QueryError),
    #[error("listen {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// How often tables that appeared since are looked for.
const REFRESH_EVERY: Duration = Duration::from_secs(15);

/// A bound server, not yet accepting.
pub struct Server {
    listener: TcpListener,
    engine: Arc<engine::Engine>,
    users: Arc<auth::Users>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    connections: Arc<Semaphore>,
    manager: Arc<ConnectionManager>,
}

/// Opens a local root only if it exists (a read-only server creates nothing).
fn open_root(root: &DataRoot, key: &str) -> Result<Root, ServeError> {
    if let DataRoot::Local(dir) = root {
        if !dir.is_dir() {
            return Err(ServeError::Config(format!(
                "{key} {} is not a directory",
                dir.display()
            )));
        }
    }
    Ok(Root::open(root)?)
}

impl Server {
    /// Opens the tables and binds the listener.
    pub async fn bind(config: &ServeConfig) -> Result<Server, ServeError> {
        let data = config
            .root()
            .map_err(|e| ServeError::Config(e.to_string()))?;
        let root = open_root(&data, "data_root")?;
        let exports = match &config.exports_dir {
            Some(dir) => open_root(&DataRoot::Local(dir.clone()), "exports_dir")?,
            None => root.clone(),
        };
        let catalog = Arc::new(catalog::Catalog::new(
            root.clone(),
            exports.clone(),
            config.registry.clone(),
        ));
        catalog.refresh().await?;
        let limits = engine::Limits {
            timeout: config.timeout().map_err(ServeError::Config)?,
            memory_bytes: (config.query_memory_mib as usize).saturating_mul(1 << 20),
            row_limit: config.row_limit,
        };
        let engine = Arc::new(engine::Engine::new(catalog, vec![root, exports], limits)?);
        let users = Arc::new(auth::Users::new(
            config.credentials().map_err(ServeError::Config)?,
        ));
        let tls = config.tls.as_ref().map(tls::acceptor).transpose()?;
        let addr = config.listen_addr().map_err(ServeError::Config)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Listen { addr, source })?;
        Ok(Server {
            listener,
            engine,
            users,
            tls,
            connections: Arc::new(Semaphore::new(config.max_connections)),
            manager: Arc::new(ConnectionManager::new()),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The engine queries run on.
    pub fn engine(&self) -> &Arc<engine::Engine> {
        &self.engine
    }

    /// The SQL names of the tables served now.
    pub fn tables(&self) -> Vec<String> {
        self.engine.catalog().names()
    }

    /// Accepts connections until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        tokio::pin!(shutdown);
        let catalog = self.engine.catalog().clone();
        let refresher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(REFRESH_EVERY).await;
                match catalog.refresh().await {
                    Ok(added) if !added.is_empty() => tracing::info!(?added, "new tables"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "looking for new tables failed"),
                }
            }
        });
        let handler = Arc::new(pg::Handler::new(self.engine.clone()));
        let cancel = Arc::new(DefaultCancelHandler::new(self.manager.clone()));
        loop {
            let (socket, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "connection refused: max_connections reached");
                continue;
            };
            let handlers = Connection {
                handler: handler.clone(),
                startup: Arc::new(auth::Startup::new(
                    self.users.clone(),
                    self.manager.clone(),
                    self.tls.is_some(),
                )),
                cancel: cancel.clone(),
            };
            let tls = self.tls.clone();
            tokio::spawn(async move {
                let _ = socket.set_nodelay(true);
                if let Err(e) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
                drop(permit);
            });
        }
        refresher.abort();
        Ok(())
    }
}

/// The handlers of one connection (its own authentication state).
struct Connection {
    handler: Arc<pg::Handler>,
    startup: Arc<auth::Startup>,
    cancel: Arc<DefaultCancelHandler>,
}

impl PgWireServerHandlers for Connection {
    fn simple_query_handler(&self) -> Arc<impl pgwire::api::query::SimpleQueryHandler> {
        self.handler.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl pgwire::api::query::ExtendedQueryHandler> {
        self.handler.clone()
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        self.startup.clone()
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.cancel.clone()
    }
}

/// Loads `serve.toml` (relative paths are relative to the working directory).
pub fn load_config(
    path: &std::path::Path,
) -> Result<ServeConfig, gridmeter_core::config::ConfigError> {
    gridmeter_core::config::load(path)
}
