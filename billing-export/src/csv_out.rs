//! CSV cells as the export writes them: RFC 4180 quoting, and text cells neutralised so that a
//! spreadsheet never evaluates them as formulas.
//!
//! A *text* cell (ids, names, units, messages; never a decimal, date or count) that begins with
//! `=`, `+`, `-`, `@`, a tab or a carriage return is written with a leading `'` (the OWASP
//! advice for CSV injection): Excel, LibreOffice and Google Sheets show it as text. So that the
//! rule can be undone exactly, a text cell that already begins with `'` gets one more. A reader
//! that wants the original value removes one leading `'` from a text cell that starts with
//! one; the Parquet files hold the original text.

/// Characters that make a spreadsheet read a cell as a formula (or a leading `'` that this
/// rule itself adds).
const TRIGGERS: [char; 7] = ['=', '+', '-', '@', '\t', '\r', '\''];

/// RFC 4180 field: quoted when it contains a comma, quote, CR or LF. For decimals, dates and
/// counts; text goes through [`text`].
pub fn field(s: &str) -> String {
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A text cell: neutralised (see the module docs), then quoted as [`field`] does.
pub fn text(s: &str) -> String {
    if s.starts_with(TRIGGERS) {
        field(&format!("'{s}"))
    } else {
        field(s)
    }
}

/// The original text of a cell written by [`text`] (after CSV unquoting).
pub fn untext(s: &str) -> &str {
    s.strip_prefix('\'').unwrap_or(s)
}

/// One CSV record with CRLF: `cells` are (value, is_text).
pub fn row(out: &mut String, cells: &[(&str, bool)]) {
    for (i, (v, is_text)) in cells.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&if *is_text { text(v) } else { field(v) });
    }
    out.push_str("\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_become_text_and_the_rule_is_reversible() {
        assert_eq!(text("=1+1"), "'=1+1");
        assert_eq!(text("+49 30"), "'+49 30");
        assert_eq!(text("-meter"), "'-meter");
        assert_eq!(text("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(text("\tx"), "'\tx");
        assert_eq!(text("'quoted"), "''quoted");
        assert_eq!(
            text("=HYPERLINK(\"http://x\",\"y\")"),
            "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\""
        );
        assert_eq!(text("C-1001"), "C-1001");
        assert_eq!(field("-5.00"), "-5.00");
        for s in ["=1", "'=1", "''", "plain", "-", ""] {
            assert_eq!(untext(text(s).trim_matches('"')), s);
        }
    }
}
