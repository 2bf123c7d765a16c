//! A user's own OVF descriptor as the template of an OVA (`ova create --from-ovf`): every
//! byte is kept except the attributes only the writer knows, which are set (or added) in
//! place: `ovf:size` of each disk's `References/File`, and `ovf:capacity` (in bytes),
//! `ovf:capacityAllocationUnits`, `ovf:populatedSize` and `ovf:format` of each
//! `DiskSection/Disk`.

use std::ops::Range;
use std::path::{Path, PathBuf};

use roxmltree::{Document, Node, ParsingOptions};

use super::compose::{DiskFacts, STREAM_FORMAT_URI};
use super::ovf::{self, OVF_NS_1, OVF_NS_2};
use crate::error::{Error, Result};

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    text: String,
    path: PathBuf,
    members: Vec<String>,
}

fn parse_doc<'a>(text: &'a str, path: &Path) -> Result<Document<'a>> {
    Document::parse_with_options(
        text,
        ParsingOptions {
            allow_dtd: false,
            nodes_limit: 1_000_000,
        },
    )
    .map_err(|e| Error::corrupt(format!("OVF template is not usable XML: {e}")).with_path(path))
}

/// The `(Disk, File)` element pairs of the template, in `DiskSection` order.
fn disk_nodes<'a, 'i>(doc: &'a Document<'i>) -> Vec<(Node<'a, 'i>, Node<'a, 'i>)> {
    let root = doc.root_element();
    let section = |name: &str| {
        root.children()
            .find(|c| c.is_element() && c.tag_name().name() == name)
    };
    let files: Vec<Node> = section("References")
        .map(|r| {
            r.children()
                .filter(|c| c.is_element() && c.tag_name().name() == "File")
                .collect()
        })
        .unwrap_or_default();
    let Some(disks) = section("DiskSection") else {
        return Vec::new();
    };
    disks
        .children()
        .filter(|c| c.is_element() && c.tag_name().name() == "Disk")
        .filter_map(|d| {
            let r = ovf::attr(d, "fileRef")?;
            let f = files.iter().find(|f| ovf::attr(**f, "id") == Some(r))?;
            Some((d, *f))
        })
        .collect()
}

impl Template {
    /// Parse the template `text` (read from `path`), refusing what an OVA cannot carry.
    pub fn parse(text: Vec<u8>, path: &Path) -> Result<Template> {
        let env = ovf::parse(&text, path)?;
        let text = String::from_utf8(text)
            .map_err(|_| Error::corrupt("OVF template is not UTF-8").with_path(path))?;
        for (_, f) in env.disk_files() {
            let Some(f) = f else { continue };
            if f.chunk_size.is_some() || f.compression.is_some() {
                return Err(Error::unsupported(format!(
                    "the template stores disk \"{}\" chunked or compressed (ovf:chunkSize, \
                     ovf:compression); disks are written whole and uncompressed",
                    f.href
                ))
                .with_path(path));
            }
        }
        let members: Vec<String> = {
            let doc = parse_doc(&text, path)?;
            disk_nodes(&doc)
                .iter()
                .map(|(_, f)| ovf::attr(*f, "href").unwrap_or_default().to_string())
                .collect()
        };
        if members.is_empty() {
            return Err(Error::invalid(
                "the template's DiskSection names no disk backed by a References file",
            )
            .with_path(path));
        }
        for m in &members {
            if m.is_empty() || m.starts_with('/') || m.split('/').any(|c| c == "..") {
                return Err(Error::invalid(format!(
                    "the template names disk file \"{m}\", which cannot be an archive member"
                ))
                .with_path(path));
            }
        }
        Ok(Template {
            text,
            path: path.to_path_buf(),
            members,
        })
    }

    /// The member names of the disks, in `DiskSection` order (one per DISK argument).
    pub fn disk_members(&self) -> &[String] {
        &self.members
    }

    /// The template with `disks`' facts filled in.
    pub fn render(&self, disks: &[DiskFacts]) -> Result<String> {
        let doc = parse_doc(&self.text, &self.path)?;
        let pairs = disk_nodes(&doc);
        if pairs.len() != disks.len() {
            return Err(Error::invalid(format!(
                "the template has {} disks but {} were given",
                pairs.len(),
                disks.len()
            )));
        }
        let mut edits: Vec<(Range<usize>, String)> = Vec::new();
        for ((disk, file), facts) in pairs.into_iter().zip(disks) {
            self.set(&mut edits, file, "size", &facts.file_size.to_string())?;
            self.set(&mut edits, disk, "capacity", &facts.capacity.to_string())?;
            self.set(&mut edits, disk, "capacityAllocationUnits", "byte")?;
            self.set(
                &mut edits,
                disk,
                "populatedSize",
                &facts.populated.to_string(),
            )?;
            self.set(&mut edits, disk, "format", STREAM_FORMAT_URI)?;
        }
        // Insertions at one point keep their order: sort stably by position, apply from
        // the end.
        edits.sort_by_key(|(r, _)| (r.start, r.end));
        let mut out = self.text.clone();
        for (r, s) in edits.into_iter().rev() {
            out.replace_range(r, &s);
        }
        Ok(out)
    }

    /// Set attribute `local` (in the OVF namespace) of `node` to `value`, or add it.
    fn set(
        &self,
        edits: &mut Vec<(Range<usize>, String)>,
        node: Node,
        local: &str,
        value: &str,
    ) -> Result<()> {
        let existing = node.attributes().find(|a| {
            a.name() == local && matches!(a.namespace(), None | Some(OVF_NS_1) | Some(OVF_NS_2))
        });
        if let Some(a) = existing {
            edits.push((a.range_value(), value.to_string()));
            return Ok(());
        }
        let ns = node
            .document()
            .root_element()
            .tag_name()
            .namespace()
            .unwrap_or(OVF_NS_1);
        // The OVF namespace is usually both the default namespace and `ovf:`; attributes
        // need the prefix.
        let prefix = node
            .namespaces()
            .find(|n| n.uri() == ns && n.name().is_some())
            .and_then(|n| n.name())
            .ok_or_else(|| {
                Error::invalid("the template declares no prefix for the OVF namespace (xmlns:ovf)")
                    .with_path(&self.path)
            })?;
        let at = match node.attributes().next_back() {
            Some(a) => a.range().end,
            None => {
                let start = node.range().start + 1;
                let rest = &self.text[start..];
                start
                    + rest
                        .find(|c: char| c.is_whitespace() || c == '/' || c == '>')
                        .unwrap_or(rest.len())
            }
        };
        edits.push((at..at, format!(" {prefix}:{local}=\"{value}\"")));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = r#"<?xml version="1.0"?>
<!-- mine -->
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References><File ovf:href="a.vmdk" ovf:id="f1" ovf:size="0"/><File ovf:id="f2" ovf:href="b.vmdk"/></References>
  <DiskSection><Info>x</Info>
    <Disk ovf:diskId="d2" ovf:fileRef="f2" ovf:capacity="2" ovf:capacityAllocationUnits="byte * 2^30"/>
    <Disk ovf:diskId="d1" ovf:fileRef="f1" ovf:capacity="1"/>
  </DiskSection>
</Envelope>
"#;

    #[test]
    fn fills_in_sizes_and_keeps_the_rest() {
        let t = Template::parse(T.as_bytes().to_vec(), Path::new("t.ovf")).unwrap();
        assert_eq!(t.disk_members(), ["b.vmdk", "a.vmdk"]);
        let facts = |m: &str, n: u64| DiskFacts {
            member: m.into(),
            file_size: n,
            capacity: n * 10,
            populated: n * 2,
        };
        let out = t.render(&[facts("b.vmdk", 7), facts("a.vmdk", 9)]).unwrap();
        assert!(out.contains("<!-- mine -->"));
        let env = ovf::parse(out.as_bytes(), Path::new("t.ovf")).unwrap();
        assert_eq!(env.file("f2").unwrap().size, Some(7));
        assert_eq!(env.file("f1").unwrap().size, Some(9));
        assert_eq!(env.disks[0].capacity, Some(70));
        assert_eq!(env.disks[0].populated_size, Some(14));
        assert_eq!(env.disks[1].capacity, Some(90));
        assert_eq!(env.disks[1].format.as_deref(), Some(STREAM_FORMAT_URI));
        assert!(t.render(&[facts("b.vmdk", 7)]).is_err());
    }
}
