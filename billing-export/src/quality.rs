//! The quality of a billed 15-minute interval, in one byte: whether its usage is estimated,
//! whether it carries a billing-team edit, and the estimation method. Derived from the usage
//! row's flags ([`gridmeter_tables::Flags`], the one bit scheme of every table) when the rows
//! are loaded, so a month of rows stays compact.
//!
//! Only [`Flags::ESTIMATED`] makes an interval estimated: [`Flags::INTERPOLATED`] says that a
//! window boundary fell between two readings (the boundary's register value lies on the
//! straight line between them), which every window whose readings are not aligned to the
//! quarter hour has, and which is no estimate of the window's usage.

use gridmeter_tables::Flags;

/// How an estimated interval was estimated (the aggregator's `method_*` flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `method_linear`: the straight line between the readings on both sides.
    Linear,
    /// `method_history`: shaped by the same meter's own history.
    History,
    /// `method_standard_profile`: shaped by a standard load profile (BDEW H0/G0).
    StandardProfile,
    /// `method_open_end`: projected past the last reading up to the period end.
    OpenEnd,
}

impl Method {
    /// Its name (the flag without `method_`).
    pub fn name(self) -> &'static str {
        match self {
            Method::Linear => "linear",
            Method::History => "history",
            Method::StandardProfile => "standard_profile",
            Method::OpenEnd => "open_end",
        }
    }
}

/// The quality byte: bit 0 estimated, bit 1 edited, bits 2..5 the method (0 none, then
/// [`Method`] in declaration order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Quality(u8);

const ESTIMATED: u8 = 1;
const EDITED: u8 = 2;
const METHOD_SHIFT: u8 = 2;

impl Quality {
    /// Measured, not edited.
    pub const MEASURED: Quality = Quality(0);

    /// The quality of a usage row with `flags`.
    pub fn of_flags(flags: Flags) -> Quality {
        let mut q = 0;
        if flags.contains(Flags::ESTIMATED) {
            q |= ESTIMATED;
            let method = [
                (Flags::METHOD_LINEAR, 1),
                (Flags::METHOD_HISTORY, 2),
                (Flags::METHOD_STANDARD_PROFILE, 3),
                (Flags::METHOD_OPEN_END, 4),
            ]
            .into_iter()
            .find(|(f, _)| flags.contains(*f))
            .map_or(0, |(_, m)| m);
            q |= method << METHOD_SHIFT;
        }
        if flags.contains(Flags::EDITED) {
            q |= EDITED;
        }
        Quality(q)
    }

    /// An estimated interval by `method` (`None`: estimated by the device, or across a gap
    /// without VEE).
    pub fn estimated(method: Option<Method>) -> Quality {
        let m = match method {
            None => 0,
            Some(Method::Linear) => 1,
            Some(Method::History) => 2,
            Some(Method::StandardProfile) => 3,
            Some(Method::OpenEnd) => 4,
        };
        Quality(ESTIMATED | (m << METHOD_SHIFT))
    }

    /// The same with the edited bit set.
    pub fn with_edited(self) -> Quality {
        Quality(self.0 | EDITED)
    }

    /// Whether the usage is estimated (flag `estimated`).
    pub fn is_estimated(self) -> bool {
        self.0 & ESTIMATED != 0
    }

    /// Whether the row carries a billing-team edit (flag `edited`).
    pub fn is_edited(self) -> bool {
        self.0 & EDITED != 0
    }

    /// Whether the interval is left out when its channel's usage is compared with the raw
    /// register difference: an edited one (the edit moves the curve away from the readings)
    /// or one estimated past the last reading (no reading backs it yet). See
    /// [`crate::reconcile`].
    pub fn left_out_of_reconciliation(self) -> bool {
        self.is_edited() || self.method() == Some(Method::OpenEnd)
    }

    /// The estimation method of an estimated interval, if the row names one.
    pub fn method(self) -> Option<Method> {
        match self.0 >> METHOD_SHIFT {
            1 => Some(Method::Linear),
            2 => Some(Method::History),
            3 => Some(Method::StandardProfile),
            4 => Some(Method::OpenEnd),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_the_flags_of_the_usage_row() {
        let q = |text: &str| Quality::of_flags(Flags::parse(text).unwrap());
        // A window boundary between two readings is no estimate.
        assert_eq!(q("interpolated"), Quality::MEASURED);
        assert!(!q("interpolated,late").is_estimated());
        let h = q("estimated,gap,method_history");
        assert!(h.is_estimated() && !h.is_edited());
        assert_eq!(h.method(), Some(Method::History));
        assert_eq!(q("estimated").method(), None);
        assert!(q("estimated").is_estimated());
        assert_eq!(
            q("estimated,gap,method_open_end"),
            Quality::estimated(Some(Method::OpenEnd))
        );
        assert_eq!(
            q("estimated,method_standard_profile").method(),
            Some(Method::StandardProfile)
        );
        let e = q("edited,estimated,method_linear");
        assert!(e.is_edited() && e.is_estimated());
        assert_eq!(e.method(), Some(Method::Linear));
        assert_eq!(e, Quality::estimated(Some(Method::Linear)).with_edited());
        let only_edited = q("edited");
        assert!(only_edited.is_edited() && !only_edited.is_estimated());
        assert_eq!(only_edited.method(), None);
        assert!(q("edited").left_out_of_reconciliation());
        assert!(q("estimated,method_open_end").left_out_of_reconciliation());
        assert!(!q("estimated,method_history").left_out_of_reconciliation());
        // A method flag without `estimated` is not an estimate.
        assert_eq!(q("method_linear"), Quality::MEASURED);
    }
}
