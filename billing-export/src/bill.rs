//! Billing one customer: each device channel priced ([`crate::stage::price`]) and
//! reconciled ([`crate::stage::reconcile`]), each site's fixed charges and the taxes added
//! ([`crate::stage::charges`]), the Green Button points and the meter table of its invoice.
//! Whatever makes the customer unbillable, or what a `[hold]` rule sends to review
//! ([`crate::stage::hold`]), is returned as exceptions (the export holds the customer), never
//! as an error of the whole run.

use std::collections::HashMap;

use crate::config::ExportConfig;
use crate::error::excerpt;
use crate::espi;
use crate::exceptions::Exception;
use crate::invoice::Meter;
use crate::period::Period;
use crate::reconcile::{self, RawSummary};
use crate::registry::{Device, Site};
use crate::stage::charges;
use crate::stage::hold;
use crate::stage::plan::{Cust, Dev};
use crate::stage::price::{self, Channel};
use crate::stage::reconcile as check;
use crate::statement::Line;
use crate::tables::{Failure, Raw, Series, Usage};
use crate::tariff::TouCache;

/// What the billing of every customer of a run reads.
pub(crate) struct Run<'a> {
    pub cfg: &'a ExportConfig,
    pub period: Period,
    pub label: &'a str,
    pub custs: &'a [Cust<'a>],
    pub devs: &'a [Dev<'a>],
    pub dev_cfgs: HashMap<&'a str, &'a Device>,
    pub site_cfgs: HashMap<&'a str, &'a Site>,
    /// Site ids per customer id, sorted.
    pub sites_of: HashMap<&'a str, Vec<&'a str>>,
}

impl<'a> Run<'a> {
    /// The lookups of `cfg`'s registry.
    pub fn new(
        cfg: &'a ExportConfig,
        period: Period,
        label: &'a str,
        custs: &'a [Cust<'a>],
        devs: &'a [Dev<'a>],
    ) -> Self {
        let reg = &cfg.registry;
        let mut sites_of: HashMap<&str, Vec<&str>> = HashMap::new();
        for s in &reg.sites {
            sites_of
                .entry(s.customer.as_str())
                .or_default()
                .push(s.id.as_str());
        }
        for v in sites_of.values_mut() {
            v.sort();
        }
        Run {
            cfg,
            period,
            label,
            custs,
            devs,
            dev_cfgs: reg.devices.iter().map(|d| (d.id.as_str(), d)).collect(),
            site_cfgs: reg.sites.iter().map(|s| (s.id.as_str(), s)).collect(),
            sites_of,
        }
    }
}

/// The usage and raw rows and the validation failures of one chunk of customers.
pub(crate) struct Loaded<'a> {
    pub usage: &'a Usage,
    pub series_by: HashMap<(u32, u16), &'a Series>,
    pub raw: Option<&'a Raw<RawSummary>>,
    /// The failures per (device, channel), in window order.
    pub failures_by: HashMap<(u32, u16), &'a [Failure]>,
}

impl<'a> Loaded<'a> {
    /// Indexes `usage` and `failures` (sorted by device and channel) by (device, channel).
    pub fn new(
        usage: &'a Usage,
        raw: Option<&'a Raw<RawSummary>>,
        failures: &'a [Failure],
    ) -> Self {
        Loaded {
            usage,
            series_by: usage
                .series
                .iter()
                .map(|s| ((s.device, s.channel), s))
                .collect(),
            raw,
            failures_by: failures
                .chunk_by(|a, b| (a.device, a.channel) == (b.device, b.channel))
                .map(|g| ((g[0].device, g[0].channel), g))
                .collect(),
        }
    }
}

/// What billing one customer produced. With `exceptions` non-empty the customer is held:
/// nothing of it is published except its reconciliation rows.
pub(crate) struct Outcome {
    pub lines: Vec<Line>,
    pub recon: Vec<reconcile::Row>,
    pub espi: Vec<espi::UsagePoint>,
    pub meters: Vec<Meter>,
    pub exceptions: Vec<Exception>,
}

impl Outcome {
    fn empty() -> Self {
        Outcome {
            lines: Vec::new(),
            recon: Vec::new(),
            espi: Vec::new(),
            meters: Vec::new(),
            exceptions: Vec::new(),
        }
    }
}

/// Bills customer `ci`; a panic while pricing (an arithmetic overflow on absurd values) holds
/// the customer instead of ending the run.
pub(crate) fn bill_isolated(run: &Run, data: &Loaded, tou: &TouCache, ci: usize) -> Outcome {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| bill(run, data, tou, ci))) {
        Ok(outcome) => outcome,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            let customer_id = run.custs[ci].c.id.clone();
            tracing::error!(customer = %customer_id, "pricing failed: {}", excerpt(&msg));
            let mut out = Outcome::empty();
            out.exceptions.push(Exception {
                customer_id,
                site_id: String::new(),
                device_id: String::new(),
                channel: String::new(),
                reason: format!(
                    "pricing failed ({}): a value is out of the range exact decimals can hold",
                    excerpt(&msg)
                ),
            });
            out
        }
    }
}

fn bill(run: &Run, data: &Loaded, tou: &TouCache, ci: usize) -> Outcome {
    let cfg = run.cfg;
    let cu = &run.custs[ci];
    let c = cu.c;
    let mut out = Outcome::empty();
    let exception = |site: &str, device: &str, channel: &str, reason: String| Exception {
        customer_id: c.id.clone(),
        site_id: site.to_string(),
        device_id: device.to_string(),
        channel: channel.to_string(),
        reason,
    };
    let mut energy = hold::EnergyTally::default();
    // Sites of this customer in id order, each with its devices.
    let sites = run.sites_of.get(c.id.as_str()).cloned().unwrap_or_default();
    for site in sites {
        let mut devices_span: Option<charges::Span> = None;
        for di in cu.devs.clone().filter(|&i| run.devs[i].site == site) {
            let d = &run.devs[di];
            if let Some(dc) = run.dev_cfgs.get(d.id).copied() {
                devices_span = Some(charges::widen_span(devices_span, dc, cu.tz));
            }
            for (chi, (channel, spec)) in d.channels.iter().enumerate() {
                let key = (di as u32, chi as u16);
                let priced_quantity = price::is_priced(cu, spec);
                let bad = data
                    .usage
                    .bad
                    .get(&key)
                    .or_else(|| data.raw.and_then(|r| r.bad.get(&key)));
                if let Some(reason) = bad {
                    if priced_quantity {
                        out.exceptions
                            .push(exception(site, d.id, channel, reason.clone()));
                    } else {
                        tracing::warn!(customer = %c.id, device = d.id, channel = %channel, "unbilled channel has bad data: {reason}");
                    }
                    continue;
                }
                let Some(series) = data.series_by.get(&key).copied() else {
                    continue;
                };
                if priced_quantity {
                    let failures = data.failures_by.get(&key).copied().unwrap_or_default();
                    for reason in hold::open_exceptions(&cfg.hold, data.usage, series, failures) {
                        out.exceptions.push(exception(site, d.id, channel, reason));
                    }
                }
                let ch = Channel {
                    cust: cu,
                    dev: d,
                    site,
                    name: channel,
                    spec,
                    series,
                };
                let mut priced =
                    price::price_channel(&ch, data.usage, run.label, cfg.rounding, tou);
                let failed = !priced.failures.is_empty();
                for reason in std::mem::take(&mut priced.failures) {
                    out.exceptions.push(exception(site, d.id, channel, reason));
                }
                out.lines.append(&mut priced.lines);
                if failed || priced.gauge {
                    continue;
                }
                let raw = data.raw.map(|raw| {
                    raw.channels
                        .get(&key)
                        .cloned()
                        .unwrap_or_else(check::no_readings)
                });
                let rec = check::reconcile_channel(&ch, &priced, raw.as_ref());
                if let Some(reason) = rec.mismatch {
                    out.exceptions.push(exception(site, d.id, channel, reason));
                }
                out.recon.push(rec.row);
                if priced_quantity {
                    out.meters.push(check::meter(&ch, &priced, raw.as_ref()));
                    let place = (site.to_string(), d.id.to_string(), channel.clone());
                    energy.add(place, &series.unit, &priced.intervals);
                }
                if cfg.green_button {
                    out.espi.extend(price::usage_point(&ch, &priced));
                }
            }
        }
        let span = charges::site_span(run.site_cfgs.get(site).copied(), devices_span, cu.tz);
        out.lines.extend(charges::fixed_charges(
            cu,
            run.label,
            &run.period,
            cfg.rounding,
            site,
            span,
        ));
    }
    if let Some(((site, device, channel), reason)) = hold::estimated_share(&cfg.hold, &energy) {
        out.exceptions
            .push(exception(&site, &device, &channel, reason));
    }
    let tax = charges::taxes(cu, run.label, cfg.rounding, &out.lines);
    out.lines.extend(tax);
    out
}
