//! Stage 1, plan: the customers of the run in id order with their local period bounds, tariff
//! and issuer; their devices in (customer, site, device) order with the billed range of each;
//! and the chunks of customers the later stages work through one at a time.

use std::collections::HashMap;
use std::ops::Range;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;

use crate::config::ExportConfig;
use crate::error::BillingError;
use crate::period::Period;
use crate::registry::{parse_instant, ChannelSpec, Customer, Issuer};
use crate::tables::Selection;
use crate::tariff::Tariff;

/// A registry device with its billed range, in (customer, site, device) order.
pub(crate) struct Dev<'a> {
    pub customer: usize,
    pub site: &'a str,
    pub id: &'a str,
    pub multiplier: Decimal,
    pub channels: Vec<(String, ChannelSpec)>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// A customer with its local period bounds, tariff and issuer.
pub(crate) struct Cust<'a> {
    pub c: &'a Customer,
    pub tz: Tz,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub tariff: &'a Tariff,
    pub issuer: Issuer,
    pub payment_terms_days: u32,
    /// Its devices: a range of [`Plan::devs`].
    pub devs: Range<usize>,
}

/// What the run bills.
pub(crate) struct Plan<'a> {
    pub custs: Vec<Cust<'a>>,
    pub devs: Vec<Dev<'a>>,
}

/// Customers in id order with their local period bounds, and their devices in (customer,
/// site, device) order with the billed range of each.
pub(crate) fn plan<'a>(cfg: &'a ExportConfig, period: &Period) -> Result<Plan<'a>, BillingError> {
    let reg = &cfg.registry;
    let mut custs: Vec<Cust> = Vec::new();
    let mut order: Vec<&Customer> = reg.customers.iter().collect();
    order.sort_by(|a, b| a.id.cmp(&b.id));
    for c in order {
        let tz: Tz = c.time_zone.parse().map_err(|_| {
            BillingError::Input(format!(
                "bad time zone {}",
                crate::error::excerpt(&c.time_zone)
            ))
        })?;
        let (from, to) = period.bounds(tz).map_err(BillingError::Input)?;
        let tariff = cfg.tariffs.tariffs.get(&c.tariff).ok_or_else(|| {
            BillingError::Input(format!("customer {}: unknown tariff {}", c.id, c.tariff))
        })?;
        custs.push(Cust {
            c,
            tz,
            from,
            to,
            tariff,
            issuer: reg.issuer_of(c),
            payment_terms_days: reg.payment_terms_days(c),
            devs: 0..0,
        });
    }
    let cust_idx: HashMap<&str, usize> = custs
        .iter()
        .enumerate()
        .map(|(i, c)| (c.c.id.as_str(), i))
        .collect();
    let site_cust: HashMap<&str, usize> = reg
        .sites
        .iter()
        .filter_map(|s| {
            cust_idx
                .get(s.customer.as_str())
                .map(|&i| (s.id.as_str(), i))
        })
        .collect();
    let mut devs: Vec<Dev> = Vec::new();
    for d in &reg.devices {
        let Some(&ci) = site_cust.get(d.site.as_str()) else {
            continue;
        };
        let cu = &custs[ci];
        let inst = d
            .installed
            .as_deref()
            .map(|t| parse_instant(t, cu.tz))
            .transpose()
            .map_err(BillingError::Input)?;
        let rem = d
            .removed
            .as_deref()
            .map(|t| parse_instant(t, cu.tz))
            .transpose()
            .map_err(BillingError::Input)?;
        // Windows starting in [installed, removed): the billed range runs from the first such
        // window's start to the last one's end (15-minute boundaries).
        let from = ceil_15m(inst.map_or(cu.from, |t| t.max(cu.from)));
        let to = ceil_15m(rem.map_or(cu.to, |t| t.min(cu.to)));
        devs.push(Dev {
            customer: ci,
            site: &d.site,
            id: &d.id,
            multiplier: d.multiplier,
            channels: reg.channels_of(d).into_iter().collect(),
            from,
            to: to.max(from),
        });
    }
    devs.sort_by(|a, b| (a.customer, a.site, a.id).cmp(&(b.customer, b.site, b.id)));
    let mut i = 0;
    for (ci, cu) in custs.iter_mut().enumerate() {
        let start = i;
        while i < devs.len() && devs[i].customer == ci {
            i += 1;
        }
        cu.devs = start..i;
    }
    Ok(Plan { custs, devs })
}

impl Plan<'_> {
    /// The customers in consecutive chunks of at most `size` (at least 1), in id order.
    pub fn chunks(&self, size: usize) -> Vec<Range<usize>> {
        let size = size.max(1);
        (0..self.custs.len())
            .step_by(size)
            .map(|a| a..(a + size).min(self.custs.len()))
            .collect()
    }

    /// The devices of the customers `custs` (a contiguous range of [`Plan::devs`]).
    pub fn devs_of(&self, custs: &Range<usize>) -> Range<usize> {
        match (self.custs.get(custs.start), custs.end.checked_sub(1)) {
            (Some(first), Some(last)) if custs.start < custs.end => {
                first.devs.start..self.custs[last].devs.end
            }
            _ => 0..0,
        }
    }

    /// The rows the customers `custs` need: their devices' channels over each device's billed
    /// range.
    pub fn selection(&self, custs: &Range<usize>) -> Selection {
        let devs = self.devs_of(custs);
        let base = devs.start as u32;
        let ds = &self.devs[devs.clone()];
        Selection {
            devices: ds
                .iter()
                .zip(devs)
                .map(|(d, i)| (d.id.to_string(), i as u32))
                .collect(),
            base,
            channels: ds
                .iter()
                .map(|d| d.channels.iter().map(|(c, _)| c.clone()).collect())
                .collect(),
            range_us: ds
                .iter()
                .map(|d| (d.from.timestamp_micros(), d.to.timestamp_micros()))
                .collect(),
        }
    }

    /// The earliest start and latest end of all devices' billed ranges (the whole run: the
    /// raw partitions read for the boundary readings do not depend on the chunking).
    pub fn span(&self) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let lo = self.devs.iter().map(|d| d.from).min()?;
        let hi = self.devs.iter().map(|d| d.to).max()?;
        Some((lo, hi))
    }
}

/// `t` rounded up to a 15-minute boundary (UTC; every time zone offset is a multiple of 15
/// minutes, so local period bounds already are).
pub(crate) fn ceil_15m(t: DateTime<Utc>) -> DateTime<Utc> {
    let q = 900_000_000i64;
    let us = t.timestamp_micros();
    DateTime::from_timestamp_micros(us.div_euclid(q) * q + if us.rem_euclid(q) > 0 { q } else { 0 })
        .unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use crate::tariff::Tariffs;

    #[test]
    fn rounds_up_to_15_minutes() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert_eq!(
            ceil_15m(t("2026-10-25T01:37:00Z")),
            t("2026-10-25T01:45:00Z")
        );
        assert_eq!(
            ceil_15m(t("2026-10-25T01:45:00Z")),
            t("2026-10-25T01:45:00Z")
        );
    }

    fn config(n: usize) -> ExportConfig {
        let reg: Registry = gridmeter_core::config::parse(
            &(0..n)
                .map(|i| {
                    // Ids sort differently from the registry order; customer 1 has two sites.
                    let c = format!("C{}", n - i);
                    let extra = if i == 1 {
                        format!(
                            "[[sites]]\nid = \"{c}-b\"\ncustomer = \"{c}\"\n[[devices]]\nid = \"{c}-m2\"\nsite = \"{c}-b\"\ninstalled = \"2026-10-10T07:10:00Z\"\n"
                        )
                    } else {
                        String::new()
                    };
                    format!(
                        "[[customers]]\nid = \"{c}\"\ntariff = \"t\"\ncurrency = \"EUR\"\ntax_rate = \"0.19\"\ntime_zone = \"Europe/Berlin\"\n\
                         [[sites]]\nid = \"{c}-a\"\ncustomer = \"{c}\"\n[[devices]]\nid = \"{c}-m1\"\nsite = \"{c}-a\"\n{extra}"
                    )
                })
                .collect::<String>(),
            "registry",
        )
        .unwrap();
        let tariffs: Tariffs = gridmeter_core::config::parse(
            "[tariffs.t]\ncomponents = [ { type = \"fixed\", name = \"f\", monthly = \"1\" } ]\n",
            "tariffs",
        )
        .unwrap();
        ExportConfig::new("/nonexistent", "/nonexistent", reg, tariffs)
    }

    #[test]
    fn customers_in_id_order_devices_grouped_and_chunks_cover_everything_once() {
        let cfg = config(5);
        let p = plan(&cfg, &"2026-10".parse::<Period>().unwrap()).unwrap();
        let ids: Vec<&str> = p.custs.iter().map(|c| c.c.id.as_str()).collect();
        assert_eq!(ids, ["C1", "C2", "C3", "C4", "C5"]);
        // C4 (registry index 1) has two devices; the second is billed from its installation,
        // rounded up to the next 15-minute boundary.
        let c4 = &p.custs[3];
        assert_eq!(c4.devs.len(), 2);
        let m2 = &p.devs[c4.devs.end - 1];
        assert_eq!(m2.id, "C4-m2");
        assert_eq!(m2.from.to_rfc3339(), "2026-10-10T07:15:00+00:00");
        assert_eq!(m2.to, c4.to);
        for size in [1, 2, 3, 5, 100] {
            let chunks = p.chunks(size);
            let mut seen_c = Vec::new();
            let mut seen_d = Vec::new();
            for ch in &chunks {
                assert!(ch.len() <= size && !ch.is_empty());
                seen_c.extend(ch.clone());
                let sel = p.selection(ch);
                let mut ds: Vec<u32> = sel.devices.values().copied().collect();
                ds.sort();
                assert_eq!(ds, p.devs_of(ch).map(|d| d as u32).collect::<Vec<_>>());
                seen_d.extend(ds);
            }
            assert_eq!(seen_c, (0..5).collect::<Vec<_>>(), "size {size}");
            assert_eq!(seen_d, (0..6).collect::<Vec<_>>(), "size {size}");
        }
        assert!(p.chunks(0).iter().all(|c| c.len() == 1));
    }
}
