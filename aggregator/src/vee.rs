//! The VEE stage of one series: validation (rules → failures, readings left out), the
//! estimation plan (shapes of long gaps, the open end) and the edits, turned into a
//! [`series::Vee`] for [`series::Prepared::with_vee`]. Pure functions of the loaded readings,
//! the config and the `edits` table, so a rebuild gives the same rows.

use std::collections::HashMap;
use std::sync::Arc;

use gridmeter_core::Kind;
use gridmeter_tables::edits::{EditAction, EditRow};

use crate::config::{parse_duration_us, AggregatorConfig, VeeConfig};
use crate::estimation::{self, StandardProfile};
use crate::raw::SeriesData;
use crate::series::{self, EditSpec, Point, Prepared, SeriesParams, Shape};
use crate::validation::{self, Failure};

/// What a run adds to every series: the edits (by device and channel) and the open end.
#[derive(Debug, Clone, Default)]
pub struct RunInputs {
    /// Edits per (device, channel), in id order.
    pub edits: HashMap<(String, String), Vec<EditSpec>>,
    /// Estimate counters past their last reading up to this time (`close`).
    pub open_end_until: Option<i64>,
}

impl RunInputs {
    /// The edits of the `edits` table as series edits (edits of unknown window sizes are
    /// skipped with a warning).
    pub fn with_edits(rows: &[EditRow]) -> RunInputs {
        let mut edits: HashMap<(String, String), Vec<EditSpec>> = HashMap::new();
        for e in rows {
            let Ok(size_us) = parse_duration_us(&e.window) else {
                tracing::warn!(
                    edit = e.edit_id,
                    "edit skipped: its window size is not readable"
                );
                continue;
            };
            let (set, scale) = match e.action {
                EditAction::Set => (Some(e.value), None),
                EditAction::Scale => (None, Some(e.value)),
            };
            edits
                .entry((e.device_id.clone(), e.channel.clone()))
                .or_default()
                .push(EditSpec {
                    from: e.from,
                    to: e.to,
                    size_us,
                    set,
                    scale,
                });
        }
        RunInputs {
            edits,
            open_end_until: None,
        }
    }
}

const WEEK_US: i64 = 7 * crate::config::DAY_US;

/// How far before the first window to recompute the rules need readings (any series).
pub fn rules_context_us(vee: &VeeConfig, base_us: i64) -> i64 {
    vee.rules
        .iter()
        .map(|r| match r.rule.as_str() {
            "spike" => i64::from(r.trailing.unwrap_or(96)) * base_us,
            "stuck" => i64::from(r.hours.unwrap_or(0)) * 3_600_000_000,
            _ => 0,
        })
        .max()
        .unwrap_or(0)
}

/// The earliest time whose readings the series' windows from `from` depend on with VEE:
/// the rules' context, `profile_weeks` before every long gap and the open end, the start
/// of every edit reaching past `from`.
pub fn needs_from(
    config: &AggregatorConfig,
    vee: &VeeConfig,
    inputs: &RunInputs,
    s: &SeriesData,
    from: i64,
    rules_ctx: i64,
) -> i64 {
    let mut need = from - rules_ctx;
    let weeks = i64::from(vee.profile_weeks) * WEEK_US;
    let long = vee.max_interpolation_us().max(config.max_gap_us());
    let p = &s.points;
    let lo = p.partition_point(|x| x.ts < need).max(1);
    for j in lo..p.len() {
        if p[j].ts - p[j - 1].ts > long {
            need = need.min(p[j - 1].ts - weeks);
        }
    }
    if inputs.open_end_until.is_some() {
        if let Some(last) = p.last() {
            need = need.min(last.ts - weeks);
        }
    }
    if let Some(edits) = inputs.edits.get(&(s.device_id.clone(), s.channel.clone())) {
        for e in edits.iter().filter(|e| e.to > from) {
            need = need.min(e.from);
        }
    }
    need
}

/// The prepared series with VEE, the readings it was prepared from, and the failures.
pub struct Planned {
    /// The readings kept (those a rule replaces are left out).
    pub points: Vec<Point>,
    /// The estimation plan.
    pub vee: series::Vee,
    /// The failures of the intervals in `[from, to)`.
    pub failures: Vec<Failure>,
}

/// Validates the series and plans its estimation and edits for windows in `[from, to)`;
/// `base_us` is the smallest window size.
#[allow(clippy::too_many_arguments)]
pub fn plan(
    config: &AggregatorConfig,
    vee: &VeeConfig,
    inputs: &RunInputs,
    s: &SeriesData,
    params: &SeriesParams,
    base_us: i64,
    from: i64,
    to: i64,
) -> Planned {
    let rules = validation::rules_for(vee, config.max_gap_us(), &s.device_id, &s.channel);
    let failures = if rules.is_empty() {
        Vec::new()
    } else {
        let ctx = validation::context_us(&rules, base_us);
        let eval_from = (from - ctx).div_euclid(base_us) * base_us;
        let windows = Prepared::new(&s.points, params).windows(base_us, eval_from, to);
        validation::evaluate(&rules, s.kind, &s.points, &windows)
    };
    let keep = validation::keep_mask(&s.points, &failures);
    let points: Vec<Point> = s
        .points
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(p, _)| *p)
        .collect();
    // Steps of the kept readings that span a reading left out.
    let mut replaced_steps = std::collections::HashSet::new();
    let mut kept = 0usize;
    for k in &keep {
        if *k {
            kept += 1;
        } else if kept > 0 {
            replaced_steps.insert(kept);
        }
    }
    let mut plan = series::Vee {
        max_interpolation_us: vee.max_interpolation_us(),
        base_size_us: base_us,
        window_flags: validation::window_flags(&failures),
        replaced_steps,
        ..Default::default()
    };
    if s.kind == Kind::Counter {
        let standard = vee
            .class_of(&s.device_id)
            .and_then(|c| c.standard_profile.as_deref())
            .and_then(StandardProfile::from_name);
        let long = plan.max_interpolation_us.max(params.max_gap_us);
        let shaped = |j: usize| {
            let (t0, t1) = (points[j - 1].ts, points[j].ts);
            t1 - t0 > long && t1 > from && t0 < to
        };
        let open_end = inputs
            .open_end_until
            .is_some_and(|u| points.last().is_some_and(|l| l.ts < u));
        // The curve of the kept readings, only when a profile needs it.
        let base =
            (open_end || (1..points.len()).any(shaped)).then(|| Prepared::new(&points, params));
        let step = |j: usize| base.as_ref().map_or(0, |b| b.step_usage(j));
        for j in 1..points.len() {
            if shaped(j) {
                if let Some(shape) = estimation::gap_shape(
                    &points,
                    step,
                    points[j - 1].ts,
                    vee.profile_weeks,
                    params.max_gap_us,
                    standard,
                ) {
                    plan.shapes.insert(j, shape);
                }
            }
        }
        if let (Some(until), Some(last)) = (inputs.open_end_until, points.last()) {
            if last.ts < until {
                let shape: Option<Arc<dyn Shape>> = estimation::open_end_shape(
                    &points,
                    step,
                    last.ts,
                    vee.profile_weeks,
                    params.max_gap_us,
                    standard,
                );
                plan.open_end = shape.map(|s| (until, s));
            }
        }
        if let Some(edits) = inputs.edits.get(&(s.device_id.clone(), s.channel.clone())) {
            plan.edits = edits.iter().filter(|e| e.to > from).copied().collect();
        }
    }
    let failures = failures
        .into_iter()
        .filter(|f| f.start >= from && f.end <= to)
        .collect();
    Planned {
        points,
        vee: plan,
        failures,
    }
}
