//! Who may connect: SCRAM-SHA-256 passwords, or a client certificate whose CN is the user
//! name; TLS required unless the config allows plaintext.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::Sink;
use pgwire::api::auth::sasl::scram::{gen_salted_password, ScramAuth};
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::{
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata, AuthSource,
    DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::{
    ClientInfo, ConnectionManager, PgWireConnectionState, PidSecretKeyGenerator,
    RandomPidSecretKeyGenerator, METADATA_USER,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use crate::config::Credential;

/// PBKDF2 iterations of the SCRAM verifiers (PostgreSQL's default).
const ITERATIONS: usize = 4096;

/// A user's stored credential.
#[derive(Debug, Clone)]
enum Stored {
    /// SCRAM salt and salted password.
    Scram {
        salt: Vec<u8>,
        salted: Vec<u8>,
    },
    ClientCert,
}

/// The users of a server.
#[derive(Debug)]
pub struct Users {
    users: BTreeMap<String, Stored>,
    /// Salted password of no one: unknown users fail exactly like a wrong password.
    nobody: (Vec<u8>, Vec<u8>),
}

impl Users {
    /// The users and their credentials (passwords are kept only as SCRAM verifiers).
    pub fn new(credentials: Vec<(String, Credential)>) -> Users {
        let salt = rand_bytes;
        let users = credentials
            .into_iter()
            .map(|(name, c)| {
                let stored = match c {
                    Credential::Password(p) => {
                        let s = salt();
                        let salted = gen_salted_password(&p, &s, ITERATIONS);
                        Stored::Scram { salt: s, salted }
                    }
                    Credential::ClientCert => Stored::ClientCert,
                };
                (name, stored)
            })
            .collect();
        let s = salt();
        let nobody = gen_salted_password(&hex(&rand_bytes()), &s, ITERATIONS);
        Users {
            users,
            nobody: (s, nobody),
        }
    }
}

fn rand_bytes() -> Vec<u8> {
    rand::random::<[u8; 16]>().to_vec()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[async_trait]
impl AuthSource for Users {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        match login.user().and_then(|u| self.users.get(u)) {
            Some(Stored::Scram { salt, salted }) => {
                Ok(Password::new(Some(salt.clone()), salted.clone()))
            }
            _ => Ok(Password::new(
                Some(self.nobody.0.clone()),
                self.nobody.1.clone(),
            )),
        }
    }
}

fn fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_owned(),
        code.to_owned(),
        message,
    )))
}

/// The common name of a DER certificate.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// The startup (authentication) handler of one connection.
pub struct Startup {
    users: Arc<Users>,
    sasl: SASLAuthStartupHandler<DefaultServerParameterProvider>,
    params: Arc<DefaultServerParameterProvider>,
    manager: Arc<ConnectionManager>,
    require_tls: bool,
}

/// Server parameters: read-only, UTC.
pub fn parameters() -> DefaultServerParameterProvider {
    let mut p = DefaultServerParameterProvider::default();
    p.default_transaction_read_only = true;
    p.is_superuser = false;
    p.server_version = format!("16.6 (gridmeter serve {})", env!("CARGO_PKG_VERSION"));
    p
}

impl Startup {
    /// A handler for one new connection.
    pub fn new(users: Arc<Users>, manager: Arc<ConnectionManager>, require_tls: bool) -> Startup {
        let params = Arc::new(parameters());
        let mut scram = ScramAuth::new(users.clone());
        scram.set_iterations(ITERATIONS);
        let sasl = SASLAuthStartupHandler::new(params.clone())
            .with_scram(scram)
            .with_connection_manager(manager.clone());
        Startup {
            users,
            sasl,
            params,
            manager,
            require_tls,
        }
    }
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let PgWireFrontendMessage::Startup(ref startup) = message {
            if self.require_tls && !client.is_secure() {
                return Err(fatal(
                    "28000",
                    "gridmeter serve requires TLS (connect with sslmode=require or verify-full)"
                        .into(),
                ));
            }
            let user = startup
                .parameters
                .get(METADATA_USER)
                .cloned()
                .unwrap_or_default();
            if let Some(Stored::ClientCert) = self.users.users.get(&user) {
                let cn = client
                    .client_certificates()
                    .and_then(|certs| certs.first().and_then(|c| common_name(c.as_ref())));
                if cn.as_deref() != Some(user.as_str()) {
                    return Err(fatal(
                        "28000",
                        format!(
                            "certificate authentication failed for user \"{}\": no client certificate with CN = the user name",
                            user.chars().take(64).collect::<String>()
                        ),
                    ));
                }
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                let (pid, secret) = RandomPidSecretKeyGenerator::default().generate(client);
                client.set_pid_and_secret_key(pid, secret.clone());
                let (handle, guard) = self.manager.register(pid, secret);
                client.session_extensions().insert(handle);
                client.session_extensions().insert(guard);
                return finish_authentication(client, self.params.as_ref()).await;
            }
        }
        self.sasl.on_startup(client, message).await
    }
}
