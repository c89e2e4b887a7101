//! Arrays read under a budget: what bounds the decoder's allocations by [`super::Limits`]
//! instead of by the structure of the input.
//!
//! A batch may hold at most `max_readings` entries (readings, gap records and, in the
//! compact encoding, series entries). [`BoundedVec`] stores elements while the shared
//! [`Budget`] lasts; past it, elements are still read (so the error can say how many the
//! batch held) but dropped at once, and nothing is allocated for them.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

/// Entries a batch may hold, shared by its arrays.
pub(crate) struct Budget {
    limit: usize,
    seen: Cell<usize>,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Budget {
        Budget {
            limit,
            seen: Cell::new(0),
        }
    }

    /// Entries read so far (stored or not).
    pub(crate) fn seen(&self) -> usize {
        self.seen.get()
    }

    /// Whether the batch held more entries than the limit.
    pub(crate) fn exceeded(&self) -> bool {
        self.seen.get() > self.limit
    }

    fn remaining(&self) -> usize {
        self.limit.saturating_sub(self.seen.get())
    }

    /// Counts one entry; `true` if it may be stored.
    fn take(&self) -> bool {
        let n = self.seen.get().saturating_add(1);
        self.seen.set(n);
        n <= self.limit
    }
}

/// A seed reading an array into a `Vec<T>` under a [`Budget`].
pub(crate) struct BoundedVec<'b, T> {
    budget: &'b Budget,
    _t: PhantomData<T>,
}

impl<'b, T> BoundedVec<'b, T> {
    pub(crate) fn new(budget: &'b Budget) -> Self {
        BoundedVec {
            budget,
            _t: PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for BoundedVec<'_, T> {
    type Value = Vec<T>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<T>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for BoundedVec<'_, T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        // A declared length (postcard) preallocates at most what the budget allows.
        let hint = seq.size_hint().unwrap_or(0).min(self.budget.remaining());
        let mut out = Vec::with_capacity(hint);
        while let Some(x) = seq.next_element::<T>()? {
            if self.budget.take() {
                out.push(x);
            }
        }
        Ok(out)
    }
}

/// A seed for an optional value (`null` or absent is `None`).
pub(crate) struct Nullable<S>(pub S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Nullable<S> {
    type Value = Option<S::Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for Nullable<S> {
    type Value = Option<S::Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array or null")
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.deserialize(d).map(Some)
    }
}
