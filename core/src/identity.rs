//! Who a certificate says its holder is: a role and a name, and the names each role may take.
//!
//! The broker knows a client only by its certificate's common name (CN): it becomes the MQTT
//! username and client id, and the ACLs grant rights by it. So the names are split into
//! namespaces that cannot overlap:
//!
//! | role | CN | OU | may |
//! |---|---|---|---|
//! | device | its `device_id` (never starting with `collector`) | `device` | publish `gridmeter/v1/<CN>/readings`, read its confirmations |
//! | collector | `collector-<name>` | `collector` | read every device's readings, publish confirmations |
//! | broker | `gridmeter-broker` | `broker` | serve TLS (server certificate) |
//! | client | any other name (never starting with `collector`) | `client` | what any certificate may: its own device topic |
//!
//! The role is written twice into every certificate the PKI issues: as the OU and in the CN
//! namespace. Brokers' ACLs check the CN (Mosquitto and EMQX can only see the CN), the
//! components check the OU of their own certificate at start-up, and the PKI refuses to put
//! a reserved name in a certificate of the wrong role (`gridmeter pki device collector-1`).

use std::fmt;

use crate::model::{DeviceId, IdError};
use crate::tls::CertInfo;

/// The CN prefix of every collector identity (`collector-<name>`).
pub const COLLECTOR_PREFIX: &str = "collector-";
/// The CN of the broker's server certificate.
pub const BROKER_CN: &str = "gridmeter-broker";

/// What a certificate's holder is allowed to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A metering device (one edge agent).
    Device,
    /// A collector: reads every device's readings.
    Collector,
    /// The MQTT broker (server certificate).
    Broker,
    /// Any other client (tools, tests); the ACLs give it no more than a device.
    Client,
}

impl Role {
    /// The organizational unit (OU) the PKI writes for this role.
    pub fn ou(self) -> &'static str {
        match self {
            Role::Device => "device",
            Role::Collector => "collector",
            Role::Broker => "broker",
            Role::Client => "client",
        }
    }

    /// The role an OU names, if any.
    pub fn from_ou(ou: &str) -> Option<Role> {
        [Role::Device, Role::Collector, Role::Broker, Role::Client]
            .into_iter()
            .find(|r| r.ou() == ou)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.ou())
    }
}

/// Why a name cannot go into a certificate of a role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Not a valid identifier.
    #[error("{name:?} {source}")]
    Invalid { name: String, source: IdError },
    /// A leading `.` (hidden files, `..`).
    #[error("{0:?} must start with a letter or a digit")]
    LeadingDot(String),
    /// A name in another role's namespace.
    #[error(
        "{name:?} is reserved: names starting with \"collector\" belong to collectors, and \
         the broker ACL grants collector rights by that name; a {role} may not take it \
         (issue a collector with `gridmeter pki collector NAME`)"
    )]
    ReservedForCollectors { name: String, role: Role },
    /// The broker's own name.
    #[error("{0:?} is the broker's name and cannot be a client's")]
    ReservedForBroker(String),
    /// A collector name outside `[a-z0-9-]`.
    #[error("collector name {0:?} must be 1 to 54 characters of [a-z0-9-], starting with a letter or digit")]
    Collector(String),
}

/// True when `name` lies in the collectors' namespace (any case: `Collector-1` too, so that
/// a broker with case-insensitive matching cannot be fooled either).
pub fn is_collector_name(name: &str) -> bool {
    name.len() >= 9 && name[..9].eq_ignore_ascii_case("collector")
}

fn check_client_like(name: &str, role: Role) -> Result<(), NameError> {
    DeviceId::new(name).map_err(|source| NameError::Invalid {
        name: name.chars().take(80).collect(),
        source,
    })?;
    if name.starts_with('.') {
        return Err(NameError::LeadingDot(name.to_string()));
    }
    if is_collector_name(name) {
        return Err(NameError::ReservedForCollectors {
            name: name.to_string(),
            role,
        });
    }
    if name.eq_ignore_ascii_case(BROKER_CN) {
        return Err(NameError::ReservedForBroker(name.to_string()));
    }
    Ok(())
}

/// Checks that a device certificate may be issued for `id` (CN = `id`).
pub fn check_device_id(id: &DeviceId) -> Result<(), NameError> {
    check_client_like(id.as_str(), Role::Device)
}

/// Checks the name of a plain client certificate: a valid identifier (it is also a file
/// name, so no `/`, no leading `.`), outside the collectors' and the broker's names.
pub fn check_client_name(name: &str) -> Result<(), NameError> {
    check_client_like(name, Role::Client)
}

/// The CN of collector `name`: `collector-<name>`. `name` may be given with or without the
/// prefix (`1` and `collector-1` both give `collector-1`).
pub fn collector_common_name(name: &str) -> Result<String, NameError> {
    let bare = name.strip_prefix(COLLECTOR_PREFIX).unwrap_or(name);
    let ok = !bare.is_empty()
        && bare.len() <= 64 - COLLECTOR_PREFIX.len()
        && bare
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !bare.starts_with('-');
    if !ok {
        return Err(NameError::Collector(name.chars().take(80).collect()));
    }
    Ok(format!("{COLLECTOR_PREFIX}{bare}"))
}

/// Checks that a certificate can serve as `role`, and (for a device) that its CN is
/// `expected_cn`. A certificate without an OU (from another PKI) is judged by its CN alone.
/// The message names what is wrong and how to get the right certificate.
pub fn check_certificate_role(
    info: &CertInfo,
    role: Role,
    expected_cn: Option<&str>,
) -> Result<(), String> {
    let cn = info.common_name.as_deref().unwrap_or("");
    if let Some(ou) = info.organizational_unit.as_deref() {
        if let Some(actual) = Role::from_ou(ou) {
            if actual != role {
                return Err(format!(
                    "is a {actual} certificate (CN {cn:?}, OU {ou:?}), not a {role} certificate; \
                     issue one with `gridmeter pki {}`",
                    issue_hint(role)
                ));
            }
        }
    }
    match role {
        Role::Collector if !cn.starts_with(COLLECTOR_PREFIX) => {
            return Err(format!(
                "has CN {cn:?}: a collector's CN must be collector-<name>, which the broker ACL \
                 lists; issue one with `gridmeter pki collector NAME`"
            ))
        }
        Role::Device | Role::Client if is_collector_name(cn) => {
            return Err(format!(
                "has CN {cn:?}, a collector's name: a {role} must not hold a collector identity"
            ))
        }
        _ => {}
    }
    if let Some(want) = expected_cn {
        if cn != want {
            return Err(format!(
                "has CN {cn:?}, but this {role} is {want:?}: the broker takes the identity \
                 from the CN, so every publish would be refused; use the certificate issued \
                 for {want:?} (`gridmeter pki {} {want}`)",
                issue_hint(role)
            ));
        }
    }
    Ok(())
}

fn issue_hint(role: Role) -> &'static str {
    match role {
        Role::Device => "device",
        Role::Collector => "collector",
        Role::Broker => "init --server-name HOST",
        Role::Client => "client",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_cannot_enter_the_collector_namespace() {
        for bad in [
            "collector",
            "collector-1",
            "Collector-2",
            "COLLECTORX",
            "gridmeter-broker",
        ] {
            let id = DeviceId::new(bad).unwrap();
            let err = check_device_id(&id).unwrap_err().to_string();
            assert!(
                err.contains("reserved") || err.contains("broker"),
                "{bad}: {err}"
            );
        }
        for ok in ["dev-1", "inv-042", "meter.7", "colle", "my-collector"] {
            check_device_id(&DeviceId::new(ok).unwrap()).unwrap();
        }
    }

    #[test]
    fn client_names_are_file_names() {
        for bad in ["../x", "a/b", "..", ".hidden", "", "a b", "collector-9"] {
            assert!(check_client_name(bad).is_err(), "{bad}");
        }
        check_client_name("ops-tool").unwrap();
    }

    #[test]
    fn collector_names() {
        assert_eq!(collector_common_name("1").unwrap(), "collector-1");
        assert_eq!(collector_common_name("collector-1").unwrap(), "collector-1");
        for bad in ["", "-x", "A", "a/b", "../x", &"x".repeat(60)] {
            assert!(collector_common_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn roles_round_trip_through_the_ou() {
        for r in [Role::Device, Role::Collector, Role::Broker, Role::Client] {
            assert_eq!(Role::from_ou(r.ou()), Some(r));
        }
        assert_eq!(Role::from_ou("admins"), None);
    }
}
