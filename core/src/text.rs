//! Bounded excerpts of untrusted text for error messages and dead-letter details.
//!
//! An error never embeds unbounded input: a 1 MB channel name becomes its first
//! [`EXCERPT_CHARS`] characters, escaped, followed by `…` and its length in bytes.

/// Most characters of an offending value shown in an error.
pub const EXCERPT_CHARS: usize = 64;

/// Most characters of a message taken from a third party (a parser's error text).
pub const MESSAGE_CHARS: usize = 300;

/// `s` escaped and quoted (as `{:?}` prints it) when it has at most [`EXCERPT_CHARS`]
/// characters; otherwise its first [`EXCERPT_CHARS`] characters escaped and quoted, then
/// `…` and the whole length: `"aaaa…"… (1048576 bytes)`.
pub fn excerpt(s: &str) -> String {
    match s.char_indices().nth(EXCERPT_CHARS) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &s[..cut], s.len()),
    }
}

/// `s` cut to at most `max` characters (on a character boundary), with `…` when cut.
pub fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((cut, _)) => format!("{}…", &s[..cut]),
    }
}

/// The prefix of `bytes` of at most `max` bytes that ends on a UTF-8 character boundary
/// when `bytes` is UTF-8 text (a plain byte prefix otherwise).
pub fn prefix(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_bounded_and_escaped() {
        assert_eq!(excerpt("abc"), "\"abc\"");
        assert_eq!(excerpt("a\"b\n"), "\"a\\\"b\\n\"");
        let long = "é".repeat(1_000_000);
        let e = excerpt(&long);
        assert!(e.ends_with("… (2000000 bytes)"), "{e}");
        assert_eq!(e.chars().filter(|c| *c == 'é').count(), EXCERPT_CHARS);
        assert_eq!(excerpt(&"x".repeat(64)), format!("{:?}", "x".repeat(64)));
        assert_eq!(clip("abcdef", 3), "abc…");
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(prefix("aé", 2), "a");
        assert_eq!(prefix("aé", 3), "aé");
    }
}
