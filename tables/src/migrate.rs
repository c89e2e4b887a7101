//! Conversion of a data root in the pre-Delta layout (filled in below).
