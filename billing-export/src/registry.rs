//! The registry: who is billed for which device channel, under which tariff, in which
//! currency and time zone. TOML (see README.md); build it in code with the plain structs.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use gridmeter_core::config::{Problems, Validate};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Customers, their sites and devices, and what each channel means.
/// `Registry::default()` is empty but has the built-in [`default_channel_map`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    #[serde(default)]
    pub customers: Vec<Customer>,
    #[serde(default)]
    pub sites: Vec<Site>,
    #[serde(default)]
    pub devices: Vec<Device>,
    /// Channel name -> billed quantity name, for devices that list no `channels` of their own.
    /// Defaults to [`default_channel_map`].
    #[serde(default = "default_channel_map")]
    pub channel_map: BTreeMap<String, String>,
    /// Counter register maximum for rollover, as configured in the aggregator
    /// (`default_register_max`); the raw reconciliation must apply the same rules.
    #[serde(default)]
    pub default_register_max: Option<Decimal>,
    /// Per channel name, like the aggregator's `[register_max]`.
    #[serde(default)]
    pub register_max: BTreeMap<String, Decimal>,
    /// Meter swaps, like the aggregator's `[[meter_swaps]]`.
    #[serde(default)]
    pub meter_swaps: Vec<MeterSwap>,
    /// Who issues the invoices (numbering, payment terms, the letterhead). None listed: one
    /// built-in issuer ([`Issuer::fallback`]).
    #[serde(default)]
    pub issuers: Vec<Issuer>,
}

/// An invoice issuer: its invoice numbers are unique and sequential across all periods and
/// runs (`<invoice_prefix><number>`, the number zero-padded to `number_width` digits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issuer {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// Postal address lines of the letterhead.
    #[serde(default)]
    pub address: Vec<String>,
    /// VAT or tax registration number, printed on the invoice.
    #[serde(default)]
    pub tax_id: String,
    /// Default `<id>-`.
    #[serde(default)]
    pub invoice_prefix: Option<String>,
    #[serde(default = "six")]
    pub number_width: u32,
    /// The first number (e.g. to continue the sequence of an earlier system).
    #[serde(default = "one_u64")]
    pub first_invoice_number: u64,
    /// Due date = issue date (local) + this many days, unless the customer has its own.
    #[serde(default = "fourteen")]
    pub payment_terms_days: u32,
}

fn six() -> u32 {
    6
}
fn one_u64() -> u64 {
    1
}
fn fourteen() -> u32 {
    14
}

impl Issuer {
    /// The issuer of a registry that lists none: id `default`, numbers `INV-000001`, 14 days.
    pub fn fallback() -> Issuer {
        Issuer {
            id: "default".into(),
            name: String::new(),
            address: Vec::new(),
            tax_id: String::new(),
            invoice_prefix: Some("INV-".into()),
            number_width: 6,
            first_invoice_number: 1,
            payment_terms_days: 14,
        }
    }

    /// The invoice number text of sequence number `n`.
    pub fn invoice_number(&self, n: u64) -> String {
        let prefix = self
            .invoice_prefix
            .clone()
            .unwrap_or_else(|| format!("{}-", self.id));
        format!("{prefix}{n:0w$}", w = self.number_width as usize)
    }
}

/// A register replaced between two readings: the type of the aggregator's `[[meter_swaps]]`
/// (`gridmeter_tables::counter`).
pub use gridmeter_tables::counter::MeterSwap;

impl Default for Registry {
    fn default() -> Self {
        Registry {
            customers: Vec::new(),
            sites: Vec::new(),
            devices: Vec::new(),
            channel_map: default_channel_map(),
            default_register_max: None,
            register_max: BTreeMap::new(),
            meter_swaps: Vec::new(),
            issuers: Vec::new(),
        }
    }
}

/// The built-in mapping of well-known channel names to quantity names used by tariffs.
pub fn default_channel_map() -> BTreeMap<String, String> {
    [
        ("energy_import", "import_energy"),
        ("energy_export", "export_energy"),
        ("energy_yield", "export_energy"),
        ("cpu_seconds", "cpu"),
        ("net_rx_bytes", "network"),
        ("net_tx_bytes", "network"),
        ("net.rx_bytes", "network"),
        ("net.tx_bytes", "network"),
        ("http_requests", "requests"),
        ("memory_bytes", "memory"),
        ("memory_used_bytes", "memory"),
        ("water_volume", "water"),
        ("gas_volume", "gas"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Customer {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// Key into the tariff file's `[tariffs.<name>]`.
    pub tariff: String,
    /// ISO 4217 code, e.g. "EUR".
    pub currency: String,
    /// Currency minor units (decimal places of amounts); 2 by default.
    #[serde(default = "two")]
    pub minor_units: u32,
    /// Default tax rate for the customer's lines, e.g. "0.19".
    #[serde(default)]
    pub tax_rate: Decimal,
    /// IANA time zone, e.g. "Europe/Berlin": periods, time-of-use and dates are local.
    pub time_zone: String,
    /// Issuer id; may be left out when the registry lists at most one issuer.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Billing address lines printed on the invoice.
    #[serde(default)]
    pub address: Vec<String>,
    /// Overrides the issuer's payment terms.
    #[serde(default)]
    pub payment_terms_days: Option<u32>,
    /// The Stripe customer (`cus_…`) that `push --to stripe` bills.
    #[serde(default)]
    pub stripe_customer: Option<String>,
    /// Optional Stripe subscription (`sub_…`) the invoice items and invoices belong to.
    #[serde(default)]
    pub stripe_subscription: Option<String>,
    /// The Zuora account number (`A00000001`) of `push --to zuora-file`.
    #[serde(default)]
    pub zuora_account: Option<String>,
    /// The Zuora subscription number of the usage (optional).
    #[serde(default)]
    pub zuora_subscription: Option<String>,
    /// Zuora charge numbers per tariff component (`"energy"`) or component and band
    /// (`"energy.peak"`, which wins).
    #[serde(default)]
    pub zuora_charges: BTreeMap<String, String>,
}

fn two() -> u32 {
    2
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    pub id: String,
    pub customer: String,
    #[serde(default)]
    pub name: String,
    /// When the site started/stopped being billed: RFC 3339 instant or local date
    /// (`YYYY-MM-DD`, midnight in the customer's time zone). Unset: derived from its devices.
    #[serde(default)]
    pub installed: Option<String>,
    #[serde(default)]
    pub removed: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    pub id: String,
    pub site: String,
    /// Only usage windows starting in `[installed, removed)` are billed. RFC 3339 or local date.
    #[serde(default)]
    pub installed: Option<String>,
    #[serde(default)]
    pub removed: Option<String>,
    /// CT/PT ratio: billed usage = measured usage × multiplier.
    #[serde(default = "one")]
    pub multiplier: Decimal,
    /// Channel -> quantity mapping of this device; empty: the registry's `channel_map`.
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelSpec>,
}

fn one() -> Decimal {
    Decimal::ONE
}

/// What a channel of a device is billed as.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSpec {
    /// Quantity name tariffs refer to (e.g. `import_energy`).
    pub quantity: String,
    /// Register maximum of this counter (rollover); overrides the registry-wide settings.
    #[serde(default)]
    pub register_max: Option<Decimal>,
}

/// Parses an RFC 3339 instant or a local date (midnight in `tz`).
pub fn parse_instant(text: &str, tz: Tz) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
        format!(
            "{} is neither an RFC 3339 instant nor a YYYY-MM-DD date",
            crate::error::excerpt(text)
        )
    })?;
    local_midnight(date, tz)
}

/// The first instant of local date `date` in `tz` (the earliest one if midnight is ambiguous,
/// the first existing one if it does not exist).
pub fn local_midnight(date: NaiveDate, tz: Tz) -> Result<DateTime<Utc>, String> {
    let naive = date.and_hms_opt(0, 0, 0).ok_or("bad date")?;
    match tz.from_local_datetime(&naive) {
        chrono::LocalResult::Single(t) => Ok(t.with_timezone(&Utc)),
        chrono::LocalResult::Ambiguous(a, _) => Ok(a.with_timezone(&Utc)),
        chrono::LocalResult::None => {
            // Midnight skipped by a DST jump: the day starts at the first valid minute.
            for m in 1..=180 {
                let n = naive + chrono::Duration::minutes(m);
                if let Some(t) = tz.from_local_datetime(&n).earliest() {
                    return Ok(t.with_timezone(&Utc));
                }
            }
            Err(format!("no local midnight on {date} in {tz}"))
        }
    }
}

impl Registry {
    /// The counter rules of one device channel for the raw reconciliation.
    pub fn counter_rules(
        &self,
        device: &str,
        channel: &str,
        spec: &ChannelSpec,
    ) -> crate::reconcile::CounterRules {
        crate::reconcile::CounterRules {
            register_max: spec
                .register_max
                .or_else(|| self.register_max.get(channel).copied())
                .or(self.default_register_max),
            swaps: self
                .meter_swaps
                .iter()
                .filter(|s| s.device_id == device && s.channel == channel)
                .map(|s| (s.at.timestamp_micros(), s.old_final, s.new_start))
                .collect(),
        }
    }

    pub fn customer(&self, id: &str) -> Option<&Customer> {
        self.customers.iter().find(|c| c.id == id)
    }

    /// The issuer of `customer`'s invoices: the one it names, else the only one listed, else
    /// [`Issuer::fallback`] (validation refuses a missing choice among several).
    pub fn issuer_of(&self, customer: &Customer) -> Issuer {
        match &customer.issuer {
            Some(id) => self.issuers.iter().find(|i| &i.id == id).cloned(),
            None => self.issuers.first().cloned(),
        }
        .unwrap_or_else(Issuer::fallback)
    }

    /// Days from the issue date to the due date for `customer`.
    pub fn payment_terms_days(&self, customer: &Customer) -> u32 {
        customer
            .payment_terms_days
            .unwrap_or_else(|| self.issuer_of(customer).payment_terms_days)
    }

    /// The channel mapping of `device`.
    pub fn channels_of(&self, device: &Device) -> BTreeMap<String, ChannelSpec> {
        if !device.channels.is_empty() {
            return device.channels.clone();
        }
        self.channel_map
            .iter()
            .map(|(ch, q)| {
                (
                    ch.clone(),
                    ChannelSpec {
                        quantity: q.clone(),
                        register_max: None,
                    },
                )
            })
            .collect()
    }
}

/// Customer and site ids name files (`invoices/<customer>.json`, `espi/<customer>.xml`), so
/// they are 1-64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit: no `/`, no `..`, no
/// hidden files. Returns the problem, if any.
pub fn path_safe_id(id: &str) -> Option<String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let first_ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !id.is_empty() && id.len() <= 64 && first_ok && id.chars().all(ok_char) {
        return None;
    }
    Some(format!(
        "{} cannot name a file: use 1-64 of A-Z a-z 0-9 . _ - starting with a letter or digit",
        crate::error::excerpt(id)
    ))
}

/// An id of another system: 1-255 printable ASCII characters without spaces, with `prefix`.
fn external_id_ok(v: &str, prefix: &str) -> bool {
    v.len() > prefix.len()
        && v.len() <= 255
        && v.starts_with(prefix)
        && v.chars().all(|c| c.is_ascii_graphic())
}

/// Rates and tax rates are shown with 9 decimal places (the statement files' scale); a rate
/// with more would be shown rounded and the amounts could not be reproduced from it.
pub fn check_rate_scale(p: &mut Problems, key: String, rate: Decimal) {
    if rate.normalize().scale() > crate::money::QUANTITY_SCALE {
        p.push(
            key,
            format!(
                "{rate} has more than {} decimal places (the statements show rates exactly)",
                crate::money::QUANTITY_SCALE
            ),
        );
    }
}

/// Ids that differ only in letter case name the same file on case-insensitive file systems.
fn check_ids<'a>(p: &mut Problems, what: &str, ids: impl Iterator<Item = (String, &'a str)>) {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for (at, id) in ids {
        if let Some(problem) = path_safe_id(id) {
            p.push(format!("{at}.id"), format!("{what} id {problem}"));
            continue;
        }
        match seen.insert(id.to_ascii_lowercase(), id) {
            Some(prev) if prev == id => {
                p.push(format!("{at}.id"), format!("duplicate {what} id {id:?}"))
            }
            Some(prev) => p.push(
                format!("{at}.id"),
                format!("{what} ids {prev:?} and {id:?} differ only in case (they name files)"),
            ),
            None => {}
        }
    }
}

impl Validate for Registry {
    fn validate(&self, p: &mut Problems) {
        check_ids(
            p,
            "customer",
            self.customers
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("customers[{i}]"), c.id.as_str())),
        );
        check_ids(
            p,
            "site",
            self.sites
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("sites[{i}]"), s.id.as_str())),
        );
        let mut issuers = BTreeSet::new();
        for (i, is) in self.issuers.iter().enumerate() {
            let at = format!("issuers[{i}]");
            if is.id.is_empty() || is.id.len() > 64 || is.id.chars().any(char::is_control) {
                p.push(format!("{at}.id"), "must be 1-64 printable characters");
            }
            if !issuers.insert(is.id.as_str()) {
                p.push(
                    format!("{at}.id"),
                    format!("duplicate issuer id {}", crate::error::excerpt(&is.id)),
                );
            }
            if let Some(pre) = &is.invoice_prefix {
                if pre.len() > 32 || pre.chars().any(char::is_control) {
                    p.push(
                        format!("{at}.invoice_prefix"),
                        "must be at most 32 printable characters",
                    );
                }
            }
            if !(1..=12).contains(&is.number_width) {
                p.push(format!("{at}.number_width"), "must be 1..=12");
            }
            if is.payment_terms_days > 365 {
                p.push(format!("{at}.payment_terms_days"), "must be 0..=365");
            }
        }
        let mut customers = BTreeMap::new();
        for (i, c) in self.customers.iter().enumerate() {
            let at = format!("customers[{i}]");
            customers.insert(c.id.as_str(), c);
            match &c.issuer {
                Some(id) if !issuers.contains(id.as_str()) => p.push(
                    format!("{at}.issuer"),
                    format!("unknown issuer {}", crate::error::excerpt(id)),
                ),
                None if self.issuers.len() > 1 => p.push(
                    format!("{at}.issuer"),
                    "must be set: the registry lists several issuers",
                ),
                _ => {}
            }
            if c.payment_terms_days.is_some_and(|d| d > 365) {
                p.push(format!("{at}.payment_terms_days"), "must be 0..=365");
            }
            check_rate_scale(p, format!("{at}.tax_rate"), c.tax_rate);
            if c.time_zone.parse::<Tz>().is_err() {
                p.push(
                    format!("{at}.time_zone"),
                    format!("unknown time zone {}", crate::error::excerpt(&c.time_zone)),
                );
            }
            if c.currency.len() != 3 || !c.currency.chars().all(|ch| ch.is_ascii_uppercase()) {
                p.push(
                    format!("{at}.currency"),
                    "must be an ISO 4217 code like \"EUR\"",
                );
            }
            if c.minor_units > 4 {
                p.push(format!("{at}.minor_units"), "must be 0..=4");
            }
            if c.tax_rate.is_sign_negative() || c.tax_rate >= Decimal::ONE {
                p.push(format!("{at}.tax_rate"), "must be in [0, 1)");
            }
            for (k, v, prefix) in [
                ("stripe_customer", &c.stripe_customer, "cus_"),
                ("stripe_subscription", &c.stripe_subscription, "sub_"),
                ("zuora_account", &c.zuora_account, ""),
                ("zuora_subscription", &c.zuora_subscription, ""),
            ] {
                if let Some(v) = v {
                    if !external_id_ok(v, prefix) {
                        p.push(
                            format!("{at}.{k}"),
                            format!(
                                "{} must be 1-255 printable ASCII characters without spaces{}",
                                crate::error::excerpt(v),
                                if prefix.is_empty() {
                                    String::new()
                                } else {
                                    format!(", starting with {prefix}")
                                }
                            ),
                        );
                    }
                }
            }
            for (k, v) in &c.zuora_charges {
                if !external_id_ok(v, "") || k.is_empty() {
                    p.push(
                        format!("{at}.zuora_charges"),
                        format!(
                            "{} = {} is not a charge number",
                            crate::error::excerpt(k),
                            crate::error::excerpt(v)
                        ),
                    );
                }
            }
        }
        let mut sites = BTreeMap::new();
        for (i, s) in self.sites.iter().enumerate() {
            let at = format!("sites[{i}]");
            sites.insert(s.id.as_str(), s);
            match customers.get(s.customer.as_str()) {
                None => p.push(
                    format!("{at}.customer"),
                    format!("unknown customer {}", crate::error::excerpt(&s.customer)),
                ),
                Some(c) => {
                    let tz = c.time_zone.parse::<Tz>().unwrap_or(Tz::UTC);
                    for (k, v) in [("installed", &s.installed), ("removed", &s.removed)] {
                        if let Some(Err(e)) = v.as_deref().map(|t| parse_instant(t, tz)) {
                            p.push(format!("{at}.{k}"), e);
                        }
                    }
                }
            }
        }
        let mut devices = BTreeSet::new();
        for (i, d) in self.devices.iter().enumerate() {
            let at = format!("devices[{i}]");
            if !devices.insert(d.id.as_str()) {
                p.push(
                    format!("{at}.id"),
                    format!("duplicate device id {}", crate::error::excerpt(&d.id)),
                );
            }
            if gridmeter_core::DeviceId::new(d.id.clone()).is_err() {
                p.push(format!("{at}.id"), "must match [A-Za-z0-9._-]{1,64}");
            }
            if d.multiplier <= Decimal::ZERO {
                p.push(format!("{at}.multiplier"), "must be positive");
            }
            let tz = sites
                .get(d.site.as_str())
                .and_then(|s| customers.get(s.customer.as_str()))
                .and_then(|c| c.time_zone.parse::<Tz>().ok());
            match tz {
                None if !sites.contains_key(d.site.as_str()) => p.push(
                    format!("{at}.site"),
                    format!("unknown site {}", crate::error::excerpt(&d.site)),
                ),
                _ => {
                    let tz = tz.unwrap_or(Tz::UTC);
                    let mut parsed = Vec::new();
                    for (k, v) in [("installed", &d.installed), ("removed", &d.removed)] {
                        match v.as_deref().map(|t| parse_instant(t, tz)) {
                            Some(Err(e)) => p.push(format!("{at}.{k}"), e),
                            Some(Ok(t)) => parsed.push(t),
                            None => {}
                        }
                    }
                    if let (Some(_), Some(_), [a, b]) =
                        (&d.installed, &d.removed, parsed.as_slice())
                    {
                        if b <= a {
                            p.push(format!("{at}.removed"), "must be after installed");
                        }
                    }
                }
            }
            for ch in d.channels.keys() {
                if gridmeter_core::Channel::new(ch.clone()).is_err() {
                    p.push(
                        format!("{at}.channels"),
                        format!("{} is not a valid channel name", crate::error::excerpt(ch)),
                    );
                }
            }
        }
    }
}
