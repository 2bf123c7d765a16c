//! Text that came out of a file (tar member names, manifest lines, OVF hrefs, extent and
//! backing file names), made safe to show on a terminal.
//!
//! A name is chosen by whoever made the file. Printed raw, an escape sequence in it can
//! retitle or rewrite the user's terminal, a newline can forge a line of our own output
//! ("disk.vmdk: ok"), and bidirectional overrides can make one name read as another. So
//! every character that is not plainly visible is shown as the `\xNN` escapes of its UTF-8
//! bytes: C0 and C1 controls and DEL, line and paragraph separators, and the invisible
//! formatting characters (zero-width and bidirectional marks and overrides, the BOM).
//! Everything else, non-ASCII letters included, is shown as it is.
//!
//! Reports keep the true names ([`Node`](crate::report::Node) trees, the Python module's dicts); the
//! escaping happens where text meets a terminal: [`Node`](crate::report::Node)'s printers (its JSON
//! writes `\uXXXX` for these characters, so parsers still get the true name), the library's
//! error messages, and the CLI's printers.

use std::borrow::Cow;
use std::fmt;

/// Whether `c` is shown as it is.
pub fn is_shown(c: char) -> bool {
    !(c.is_control()
        || matches!(c,
            '\u{00ad}'                 // soft hyphen
            | '\u{061c}'               // Arabic letter mark
            | '\u{180e}'               // Mongolian vowel separator
            | '\u{200b}'..='\u{200f}'  // zero-width space, joiners, LRM, RLM
            | '\u{2028}'..='\u{202e}'  // line and paragraph separators, bidi embeddings
            | '\u{2060}'..='\u{206f}'  // word joiner, invisible operators, bidi isolates
            | '\u{feff}'               // BOM / zero-width no-break space
            | '\u{fff9}'..='\u{fffb}')) // interlinear annotation
}

/// `s` with every character that is not [shown](is_shown) written as `\xNN` per UTF-8
/// byte; borrowed when there is nothing to escape. Escaping twice changes nothing more.
pub fn escape(s: &str) -> Cow<'_, str> {
    if s.chars().all(is_shown) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_shown(c) {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
    }
    Cow::Owned(out)
}

/// Bytes from a file shown as text: valid UTF-8 [escaped](escape), every byte that is not
/// UTF-8 as `\xNN`.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(&escape(chunk.valid()));
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Formats its text [escaped](escape): `write!(out, "file: {}", Printable(name))`.
#[derive(Debug, Clone, Copy)]
pub struct Printable<'a>(pub &'a str);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_and_invisible_marks_only() {
        assert!(matches!(escape("disk-1.vmdk"), Cow::Borrowed(_)));
        assert_eq!(escape("Größe ✓ диск.vmdk"), "Größe ✓ диск.vmdk");
        assert_eq!(escape("a\u{1b}]0;x\u{7}b"), "a\\x1b]0;x\\x07b");
        assert_eq!(escape("a\nb\0c\td\u{7f}"), "a\\x0ab\\x00c\\x09d\\x7f");
        // C1 CSI, a right-to-left override, a zero-width space.
        assert_eq!(escape("\u{9b}2J"), "\\xc2\\x9b2J");
        assert_eq!(escape("x\u{202e}kdmv.exe"), "x\\xe2\\x80\\xaekdmv.exe");
        assert_eq!(escape("a\u{200b}b"), "a\\xe2\\x80\\x8bb");
        let once = escape("\u{1b}[2J\u{202e}").into_owned();
        assert_eq!(escape(&once), once);
        assert_eq!(Printable("a\rb").to_string(), "a\\x0db");
        assert_eq!(escape_bytes(b"a\xff\x1bz\xc3\xa9"), "a\\xff\\x1bz\u{e9}");
    }
}
