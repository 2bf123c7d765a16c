//! The layer rule, checked: a module never names a module of a higher layer.
//!
//! The order below is the architecture (see ARCHITECTURE.md): each folder may use its own
//! layer and those below, never one above, so a reader can understand a layer without the
//! ones on top of it and a lower layer can be reused (fuzzed, embedded) without them. This
//! test reads the crate's sources and checks every `crate::` path against the order, so the
//! rule cannot quietly erode. It is a text scan, not a compiler pass: it sees `crate::X`
//! paths (in `use` lines, braced groups included, and in expressions), skips `//` comments,
//! and asks that code below the top layer name items by their home module
//! (`crate::image::Image`, not the root re-export `crate::Image`), which is what lets it see
//! every edge.

use std::path::Path;

/// The top-level modules, each with its layer: a module may name modules of its own layer
/// and of lower ones only.
const LAYERS: &[(&str, u32)] = &[
    // The base: errors, the escaping errors use, and the pure on-disk formats.
    ("error", 0),
    ("text", 0),
    ("qemu_syntax", 0),
    ("format", 0),
    // Bytes and names: Storage, namespaces, the path gate, locks. The only std::fs users.
    ("storage", 1),
    // Archives as namespaces of byte ranges, and the archive-writing primitives.
    ("ova", 2),
    // Extents and the map's target types they produce.
    ("extent", 3),
    // Image, its one read mapping and one write walk, Disk, raw files.
    ("image", 4),
    // qcow2 as a Disk (backing files of any format) and as a convert target.
    ("qcow2", 5),
    // Every operation.
    ("ops", 6),
    // The top: reports and the NBD adapter.
    ("report", 7),
    ("export", 7),
];

/// Names no code outside the extent layer may use: the grain directory is the extent's
/// internals (raw entries, the write verbs and their order). Operations call the extent's
/// verbs instead (`SparseExtent::grow`, `compact`, `fix_tables`, `make_empty`, ...), so
/// what is written to a sparse extent, and in which order, is decided in one layer.
const EXTENT_INTERNALS: &[&str] = &["extent::grain_directory", "GrainDirectory"];

fn layer_of(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// The source text of a file without its `//` comments (doc comments included: a doc link
/// to a higher layer explains, it does not depend). A `//` inside a string literal
/// ("s3://") is code.
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let (mut in_string, mut escaped, mut prev) = (false, false, ' ');
        let mut end = line.len();
        for (i, c) in line.char_indices() {
            if in_string {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => in_string = false,
                    _ => {}
                }
            } else if c == '"' {
                in_string = true;
            } else if c == '/' && prev == '/' {
                end = i - 1;
                break;
            }
            prev = c;
        }
        out.push_str(&line[..end]);
        out.push('\n');
    }
    out
}

/// The first path segment of every `crate::` path in `code`: `crate::a::b` gives `a`,
/// `crate::{a::b, c}` gives `a` and `c`.
fn crate_roots(code: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut roots = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `mycrate::`, not ours
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 || (depth == 1 && c == ',') {
                    roots.push(ident(item.trim()));
                    item.clear();
                    if depth == 0 {
                        break;
                    }
                } else {
                    item.push(c);
                }
            }
        } else {
            roots.push(ident(rest));
        }
    }
    roots.retain(|r| !r.is_empty() && r != "self");
    roots
}

fn visit(dir: &Path, src: &Path, problems: &mut Vec<String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            visit(&path, src, problems);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = path.strip_prefix(src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let top = top.trim_end_matches(".rs");
        if top == "lib" || top == "layers" {
            continue; // the root: declares and re-exports every layer
        }
        let Some(own) = layer_of(top) else {
            problems.push(format!(
                "{}: the top-level module `{top}` has no layer in LAYERS",
                rel.display()
            ));
            continue;
        };
        let code = code_of(&std::fs::read_to_string(&path).unwrap());
        // Only the storage layer touches the host's files; tests (at the end of a file)
        // may make fixtures.
        let before_tests = code.split("#[cfg(test)]").next().unwrap_or_default();
        if top != "storage" && before_tests.contains("std::fs") {
            problems.push(format!(
                "{}: uses std::fs outside the storage layer",
                rel.display()
            ));
        }
        if top != "extent" {
            // The extent layer is named by its face only (`crate::extent::X`, re-exported
            // in extent/mod.rs), never by one of its files.
            for (i, _) in code.match_indices("crate::extent::") {
                let rest = &code[i + "crate::extent::".len()..];
                let seg: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                // A lower-case segment followed by `::` is a module (a file); types and
                // their variants (`ExtentKind::Sparse`) are the face.
                let module = seg.starts_with(|c: char| c.is_ascii_lowercase());
                if module && rest[seg.len()..].starts_with("::") {
                    problems.push(format!(
                        "{}: names `crate::extent::{seg}::`, a file of the extent layer: \
                         name what extent/mod.rs re-exports instead",
                        rel.display()
                    ));
                }
            }
            for name in EXTENT_INTERNALS {
                if code.contains(name) {
                    problems.push(format!(
                        "{}: names `{name}`, the extent layer's internals: call a \
                         `SparseExtent` verb instead",
                        rel.display()
                    ));
                }
            }
        }
        for root in crate_roots(&code) {
            match layer_of(&root) {
                Some(l) if l > own => problems.push(format!(
                    "{}: names `crate::{root}` (layer {l}) from `{top}` (layer {own})",
                    rel.display()
                )),
                Some(_) => {}
                None if own < 7 => problems.push(format!(
                    "{}: names `crate::{root}`, a re-export at the crate root: name it by its \
                     home module so the layer rule can see the edge",
                    rel.display()
                )),
                None => {}
            }
        }
    }
}

#[test]
fn no_module_names_a_higher_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut problems = Vec::new();
    visit(&src, &src, &mut problems);
    assert!(
        problems.is_empty(),
        "layer rule broken:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_scan_sees_braced_groups_and_skips_comments() {
    let code = code_of(
        "use crate::{ops::create, storage::{self, FileId},\n    image};\n\
         // crate::report in a comment\nlet x = crate::ova::f(\"s3://x\"); // crate::ops\n",
    );
    assert_eq!(crate_roots(&code), ["ops", "storage", "image", "ova"]);
}
