//! An ordered value tree, the shape of every report (`info`, `check`, `map`, `inspect`):
//! printed as JSON in qemu's 4-space pretty style or the way qemu-img prints "Format
//! specific information", and handed as it is to other front ends (the Python module).

use std::io::Write;

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::ser::{Formatter, PrettyFormatter};

use super::text::{is_shown, Printable};

/// A JSON-like value whose object keys keep their insertion order.
#[derive(Debug, Clone)]
pub enum Node {
    /// A string.
    Str(String),
    /// An unsigned number.
    Int(u64),
    /// A boolean.
    Bool(bool),
    /// No value (JSON `null`).
    Null,
    /// A list.
    List(Vec<Node>),
    /// An object, in order.
    Dict(Vec<(String, Node)>),
}

impl Node {
    /// An empty object.
    pub fn dict() -> Node {
        Node::Dict(Vec::new())
    }

    /// Append `key: value` to an object (no-op on other values).
    pub fn put(&mut self, key: &str, value: impl Into<Node>) -> &mut Self {
        if let Node::Dict(v) = self {
            v.push((key.to_string(), value.into()));
        }
        self
    }

    /// Append `key: value` when `value` is `Some`.
    pub fn put_opt(&mut self, key: &str, value: Option<impl Into<Node>>) -> &mut Self {
        if let Some(v) = value {
            self.put(key, v);
        }
        self
    }

    /// The value under `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Dict(v) => v.iter().find(|(k, _)| k == key).map(|(_, n)| n),
            _ => None,
        }
    }

    /// Print as qemu's pretty JSON (4-space indent) followed by a newline. Characters a
    /// terminal must not see raw are written as `\uXXXX` escapes (serde_json escapes only
    /// C0 controls), so the output is safe to show and parses to the same strings.
    pub fn print_json(&self, out: &mut impl Write) -> std::io::Result<()> {
        let fmt = TerminalSafe(serde_json::ser::PrettyFormatter::with_indent(b"    "));
        let mut ser = serde_json::Serializer::with_formatter(&mut *out, fmt);
        self.serialize(&mut ser).map_err(std::io::Error::other)?;
        writeln!(out)
    }

    /// One entry of a dict or list under `label` (a key or `[i]`): a scalar on the same
    /// line, a dict or list on the lines after, one level deeper.
    fn print_human_entry(
        &self,
        label: &str,
        indent: usize,
        out: &mut impl Write,
    ) -> std::io::Result<()> {
        let composite = matches!(self, Node::Dict(_) | Node::List(_));
        write!(
            out,
            "{:w$}{label}:{}",
            "",
            if composite { '\n' } else { ' ' },
            w = indent * 4
        )?;
        self.print_human(indent + 1, out)
    }

    /// Print an object's entries the way qemu's `dump_qdict` does: keys with `-` shown as
    /// spaces, nested values indented by four spaces per level, list items as `[i]:`.
    pub fn print_human(&self, indent: usize, out: &mut impl Write) -> std::io::Result<()> {
        match self {
            Node::Dict(entries) => {
                for (k, v) in entries {
                    v.print_human_entry(&k.replace('-', " "), indent, out)?;
                }
                Ok(())
            }
            Node::List(items) => {
                for (i, v) in items.iter().enumerate() {
                    v.print_human_entry(&format!("[{i}]"), indent, out)?;
                }
                Ok(())
            }
            Node::Str(s) => writeln!(out, "{}", Printable(s)),
            Node::Int(n) => writeln!(out, "{n}"),
            Node::Bool(b) => writeln!(out, "{b}"),
            Node::Null => writeln!(out, "null"),
        }
    }
}

/// qemu's pretty formatter, with every character [`is_shown`] refuses inside strings written
/// as a `\uXXXX` escape (all of them are in the Basic Multilingual Plane).
struct TerminalSafe<'a>(PrettyFormatter<'a>);

impl Formatter for TerminalSafe<'_> {
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut rest = fragment;
        while let Some((i, c)) = rest.char_indices().find(|&(_, c)| !is_shown(c)) {
            w.write_all(&rest.as_bytes()[..i])?;
            write!(w, "\\u{:04x}", c as u32)?;
            rest = &rest[i + c.len_utf8()..];
        }
        w.write_all(rest.as_bytes())
    }
    fn begin_array<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_array(w)
    }
    fn end_array<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_array(w)
    }
    fn begin_array_value<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.0.begin_array_value(w, first)
    }
    fn end_array_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_array_value(w)
    }
    fn begin_object<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_object(w)
    }
    fn end_object<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_object(w)
    }
    fn begin_object_key<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.0.begin_object_key(w, first)
    }
    fn end_object_key<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_object_key(w)
    }
    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_object_value(w)
    }
    fn end_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_object_value(w)
    }
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Str(v) => s.serialize_str(v),
            Node::Int(v) => s.serialize_u64(*v),
            Node::Bool(v) => s.serialize_bool(*v),
            Node::Null => s.serialize_none(),
            Node::List(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for i in items {
                    seq.serialize_element(i)?;
                }
                seq.end()
            }
            Node::Dict(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl From<String> for Node {
    fn from(v: String) -> Node {
        Node::Str(v)
    }
}
impl From<&str> for Node {
    fn from(v: &str) -> Node {
        Node::Str(v.to_string())
    }
}
impl From<u64> for Node {
    fn from(v: u64) -> Node {
        Node::Int(v)
    }
}
impl From<u32> for Node {
    fn from(v: u32) -> Node {
        Node::Int(v as u64)
    }
}
impl From<bool> for Node {
    fn from(v: bool) -> Node {
        Node::Bool(v)
    }
}
impl<T: Into<Node>> From<Option<T>> for Node {
    fn from(v: Option<T>) -> Node {
        v.map_or(Node::Null, Into::into)
    }
}
impl From<Vec<Node>> for Node {
    fn from(v: Vec<Node>) -> Node {
        Node::List(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_dump_matches_qemu_layout() {
        let mut ext = Node::dict();
        ext.put("virtual-size", 10485760u64)
            .put("filename", "a.vmdk")
            .put("format", "");
        let mut data = Node::dict();
        data.put("cid", 1u32)
            .put("create-type", "monolithicSparse")
            .put("extents", vec![ext]);
        let mut out = Vec::new();
        data.print_human(1, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "    cid: 1\n    create type: monolithicSparse\n    extents:\n        [0]:\n            \
             virtual size: 10485760\n            filename: a.vmdk\n            format: \n"
        );
        let mut out = Vec::new();
        data.print_json(&mut out).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.starts_with("{\n    \"cid\": 1,\n    \"create-type\""),
            "{s}"
        );
    }

    #[test]
    fn printers_escape_what_a_terminal_must_not_see() {
        let name = "a\u{1b}]0;t\u{7}\u{9b}\u{202e}\u{7f}\nb.vmdk";
        let mut n = Node::dict();
        n.put("filename", name);
        let mut out = Vec::new();
        n.print_human(0, &mut out).unwrap();
        let human = String::from_utf8(out).unwrap();
        assert_eq!(
            human,
            "filename: a\\x1b]0;t\\x07\\xc2\\x9b\\xe2\\x80\\xae\\x7f\\x0ab.vmdk\n"
        );
        let mut out = Vec::new();
        n.print_json(&mut out).unwrap();
        let json = String::from_utf8(out).unwrap();
        assert!(json.chars().all(|c| c == '\n' || is_shown(c)), "{json:?}");
        assert!(
            json.contains(r"\u001b]0;t\u0007\u009b\u202e\u007f\nb.vmdk"),
            "{json}"
        );
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["filename"], name);
    }
}
