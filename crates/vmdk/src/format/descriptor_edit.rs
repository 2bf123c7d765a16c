//! Editing descriptor text in place: set, replace or remove `key=value` lines and keep every
//! other byte (comments, unknown keys, line endings, the order VMware wrote), so that an
//! edited descriptor differs from the original only in the lines that had to change.

/// One edit: the key (`CID`, `parentFileNameHint`, `ddb.adapterType`, ...) and its new value
/// as it is to appear after `=` (quoted by the caller where the format quotes it), or `None`
/// to remove the line.
pub type Edit<'a> = (&'a str, Option<String>);

/// The key of a `key=value` line, if it is one (comments and extent lines are not).
fn key_of(line: &str) -> Option<&str> {
    let t = line.trim_start();
    if t.starts_with('#') {
        return None;
    }
    let (k, _) = t.split_once('=')?;
    let k = k.trim_end();
    (!k.is_empty() && !k.contains(char::is_whitespace) && !k.contains('"')).then_some(k)
}

/// The line ending `line` uses, or the one the text mostly uses when `line` has none.
fn ending(line: &str, default: &'static str) -> &'static str {
    if line.ends_with("\r\n") {
        "\r\n"
    } else if line.ends_with('\n') {
        "\n"
    } else {
        default
    }
}

/// Apply `edits` to descriptor `text`. A key present is rewritten where it stands (its first
/// occurrence; later duplicates are dropped); a key absent is added: `ddb.*` keys after the
/// last `ddb.` line (or at the end), others after the last header key before the extent
/// lines. Keys compare case-sensitively, as VMware writes them. `None` for non-UTF-8 text.
pub fn apply(text: &[u8], edits: &[Edit]) -> Option<Vec<u8>> {
    let s = std::str::from_utf8(text).ok()?;
    let eol = if s.contains("\r\n") { "\r\n" } else { "\n" };
    let lines: Vec<&str> = s.split_inclusive('\n').collect();
    let mut out: Vec<String> = Vec::with_capacity(lines.len() + edits.len());
    let mut seen = vec![false; edits.len()];
    // Where absent keys go: after the last header key, after the last ddb key.
    let mut last_header: Option<usize> = None;
    let mut last_ddb: Option<usize> = None;
    let mut in_header = true;
    for line in &lines {
        let t = line.trim();
        let key = key_of(line);
        if key.is_none() && !t.is_empty() && !t.starts_with('#') {
            // An extent line ends the header.
            in_header = false;
        }
        let edit = key.and_then(|k| edits.iter().position(|(ek, _)| *ek == k));
        match edit {
            Some(i) if seen[i] => continue,
            Some(i) => {
                seen[i] = true;
                if let Some(v) = &edits[i].1 {
                    out.push(format!(
                        "{}{}{}",
                        format_key(edits[i].0),
                        v,
                        ending(line, eol)
                    ));
                } else {
                    continue;
                }
            }
            None => out.push(line.to_string()),
        }
        if let Some(k) = key {
            if k.starts_with("ddb.") {
                last_ddb = Some(out.len() - 1);
            } else if in_header {
                last_header = Some(out.len() - 1);
            }
        }
    }
    // A last line without a newline must get one before anything follows it.
    let mut header_adds = Vec::new();
    let mut ddb_adds = Vec::new();
    for (i, (k, v)) in edits.iter().enumerate() {
        if let (false, Some(v)) = (seen[i], v) {
            let l = format!("{}{}{eol}", format_key(k), v);
            if k.starts_with("ddb.") {
                ddb_adds.push(l);
            } else {
                header_adds.push(l);
            }
        }
    }
    let terminate = |out: &mut Vec<String>, at: usize| {
        if let Some(l) = out.get_mut(at) {
            if !l.ends_with('\n') {
                l.push_str(eol);
            }
        }
    };
    if !ddb_adds.is_empty() {
        let at = last_ddb.unwrap_or(out.len().saturating_sub(1));
        terminate(&mut out, at);
        let pos = if out.is_empty() { 0 } else { at + 1 };
        for (j, l) in ddb_adds.into_iter().enumerate() {
            out.insert(pos + j, l);
        }
    }
    if !header_adds.is_empty() {
        let pos = match last_header {
            Some(at) => {
                terminate(&mut out, at);
                at + 1
            }
            None => 0,
        };
        for (j, l) in header_adds.into_iter().enumerate() {
            out.insert(pos + j, l);
        }
    }
    Some(out.concat().into_bytes())
}

/// Whether `line` is an extent line (`RW 2048 SPARSE "x.vmdk"` and friends).
fn is_extent_line(line: &str) -> bool {
    let mut w = line.split_whitespace();
    matches!(w.next(), Some("RW" | "RDONLY" | "NOACCESS"))
        && w.next().is_some_and(|n| n.parse::<u64>().is_ok())
}

/// Set the sector counts of the extent lines (in order; `sectors[i]` for the i-th line,
/// keeping every other byte of it), drop the lines past `sectors.len()`, and append
/// `new_lines` after the last kept extent line. `None` for non-UTF-8 text or when the text
/// has more `sectors` than extent lines.
pub fn set_extents(text: &[u8], sectors: &[u64], new_lines: &[String]) -> Option<Vec<u8>> {
    let s = std::str::from_utf8(text).ok()?;
    let eol = if s.contains("\r\n") { "\r\n" } else { "\n" };
    let mut out: Vec<String> = Vec::new();
    let mut index = 0;
    let mut last_extent = None;
    for line in s.split_inclusive('\n') {
        if !is_extent_line(line) {
            out.push(line.to_string());
            continue;
        }
        let Some(&n) = sectors.get(index) else {
            index += 1;
            continue;
        };
        index += 1;
        // Replace the second token, keeping the spacing around it.
        let lead = line.len() - line.trim_start().len();
        let rest = &line[lead..];
        let access_end = rest.find(char::is_whitespace)?;
        let after_access = &rest[access_end..];
        let gap = after_access.len() - after_access.trim_start().len();
        let num_start = lead + access_end + gap;
        let num_len = line[num_start..]
            .find(char::is_whitespace)
            .unwrap_or(line.len() - num_start);
        out.push(format!(
            "{}{}{}",
            &line[..num_start],
            n,
            &line[num_start + num_len..]
        ));
        last_extent = Some(out.len() - 1);
    }
    if index < sectors.len() {
        return None;
    }
    if !new_lines.is_empty() {
        let at = last_extent?;
        if !out[at].ends_with('\n') {
            out[at].push_str(eol);
        }
        for (j, l) in new_lines.iter().enumerate() {
            out.insert(at + 1 + j, format!("{l}{eol}"));
        }
    }
    Some(out.concat().into_bytes())
}

/// `ddb.` keys are written `key = value` as VMware does; header keys `key=value`.
fn format_key(k: &str) -> String {
    if k.starts_with("ddb.") {
        format!("{k} = ")
    } else {
        format!("{k}=")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "# Disk DescriptorFile\r\nversion=1\r\nCID=1234\r\nparentCID=ffffffff\r\n\
createType=\"monolithicSparse\"\r\n# a comment\r\n\r\n# Extent description\r\n\
RW 2048 SPARSE \"a.vmdk\"\r\n\r\n#DDB\r\nddb.virtualHWVersion = \"4\"\r\nddb.x = \"y\"";

    fn apply_str(text: &str, edits: &[Edit]) -> String {
        String::from_utf8(apply(text.as_bytes(), edits).unwrap()).unwrap()
    }

    #[test]
    fn replaces_in_place_and_keeps_the_rest() {
        let n = apply_str(T, &[("CID", Some("abcdef01".into()))]);
        assert_eq!(n, T.replace("CID=1234", "CID=abcdef01"));
        let n = apply_str(T, &[("ddb.virtualHWVersion", Some("\"6\"".into()))]);
        assert_eq!(
            n,
            T.replace(
                "ddb.virtualHWVersion = \"4\"",
                "ddb.virtualHWVersion = \"6\""
            )
        );
    }

    #[test]
    fn adds_and_removes() {
        let n = apply_str(
            T,
            &[
                ("parentFileNameHint", Some("\"base.vmdk\"".into())),
                ("ddb.adapterType", Some("\"lsilogic\"".into())),
            ],
        );
        assert!(n.contains("createType=\"monolithicSparse\"\r\nparentFileNameHint=\"base.vmdk\"\r\n# a comment"), "{n}");
        assert!(
            n.ends_with("ddb.x = \"y\"\r\nddb.adapterType = \"lsilogic\"\r\n"),
            "{n}"
        );
        let back = apply_str(
            &n,
            &[("parentFileNameHint", None), ("ddb.adapterType", None)],
        );
        assert_eq!(back, format!("{T}\r\n"));
        assert!(apply(b"\xff\xfe", &[]).is_none());
    }

    #[test]
    fn extent_lines_resized_and_added() {
        let n = String::from_utf8(
            set_extents(T.as_bytes(), &[4096], &["RW 2048 SPARSE \"b.vmdk\"".into()]).unwrap(),
        )
        .unwrap();
        assert_eq!(
            n,
            T.replace(
                "RW 2048 SPARSE \"a.vmdk\"\r\n",
                "RW 4096 SPARSE \"a.vmdk\"\r\nRW 2048 SPARSE \"b.vmdk\"\r\n"
            )
        );
        let t = "RW 10 FLAT \"a\" 0\nRW 20 FLAT \"b\" 0\n#DDB\n";
        let n = set_extents(t.as_bytes(), &[5], &[]).unwrap();
        assert_eq!(String::from_utf8(n).unwrap(), "RW 5 FLAT \"a\" 0\n#DDB\n");
        assert!(set_extents(t.as_bytes(), &[1, 2, 3], &[]).is_none());
    }

    #[test]
    fn header_keys_stay_before_extents_even_without_ddb() {
        let t = "version=1\nCID=1\ncreateType=\"x\"\nRW 1 FLAT \"f\" 0\n";
        let n = apply_str(t, &[("parentCID", Some("00000001".into()))]);
        assert_eq!(
            n,
            "version=1\nCID=1\ncreateType=\"x\"\nparentCID=00000001\nRW 1 FLAT \"f\" 0\n"
        );
    }
}
