//! A hosted sparse (`KDMV`) file: monolithicSparse or streamOptimized when it is safe.
//!
//! Three readers look at such a file differently, and each view is checked:
//! * QEMU decides from the *first* header whether the file is a disk or (capacity 0 with a
//!   descriptor offset) a descriptor file whose extents it opens; takes a stream's footer
//!   whole; and scans the text at sector 1, whatever the header says, for the backing file
//!   and the CIDs;
//! * VMware and this library read the embedded descriptor where the header puts it, line
//!   by line;
//! * everyone follows the grain directory and tables, which must stay inside the file and
//!   apart from each other.

use std::collections::HashSet;

use super::descriptor::{
    check_create_type, check_descriptor_hint, qemu_hint, strict_descriptor_lines,
};
use super::{
    extent_names, shown, Counted, InspectPolicy, InspectReport, MAX_GD_BYTES, MAX_SAMPLED_TABLES,
};
use crate::error::Result;
use crate::format::descriptor::{Descriptor, ExtentType, MAX_DESCRIPTOR_SIZE};
use crate::format::marker::{MetadataMarker, MARKER_EOS, MARKER_FOOTER};
use crate::format::qemu_view::{self, SPARSE_DESC_OFFSET};
use crate::format::sparse_header::{SparseHeader, GD_AT_END};
use crate::format::SECTOR_SIZE;

/// One stretch of the file holding metadata, for the overlap checks.
#[derive(Debug, Clone)]
pub(super) struct Region {
    pub start: u64,
    pub end: u64,
    pub what: String,
}

pub(super) fn inspect_sparse(
    r: &Counted<'_>,
    file_size: u64,
    policy: &InspectPolicy,
    rep: &mut InspectReport,
) -> Result<()> {
    let head = r.bytes(0, SECTOR_SIZE)?;
    let first = match SparseHeader::parse(&head) {
        Ok(h) => h,
        Err(e) => {
            rep.add("bad-header", format!("sparse header: {e}"));
            return Ok(());
        }
    };
    capacity_zero(r, file_size, &first, rep)?;
    let qemu_found = qemu_scans(r, rep)?;

    let mut h = first.clone();
    let mut regions = vec![Region {
        start: 0,
        end: SECTOR_SIZE,
        what: "the header".into(),
    }];
    if h.gd_offset == GD_AT_END {
        // A stream: the footer near the end holds the real header (QEMU uses it whole).
        match read_footer(r, file_size)? {
            Err(why) => {
                rep.add("footer-missing", why);
                return Ok(());
            }
            Ok(f) => {
                let diffs = footer_differences(&h, &f);
                if !diffs.is_empty() {
                    rep.add(
                        "footer-mismatch",
                        format!(
                            "the stream footer disagrees with the header on {}; readers that \
                             trust the footer see another disk than those that trust the header",
                            diffs.join(", ")
                        ),
                    );
                }
                regions.push(Region {
                    start: file_size - 3 * SECTOR_SIZE,
                    end: file_size,
                    what: "the footer".into(),
                });
                h = f;
            }
        }
    }
    if let Err(e) = h.validate() {
        rep.add("bad-header", format!("sparse header: {e}"));
        return Ok(());
    }
    let capacity = h.capacity.saturating_mul(SECTOR_SIZE);
    rep.virtual_size = Some(capacity);
    if policy.strict && h.unclean_shutdown {
        rep.add(
            "unclean-shutdown",
            "the header says the image was not closed cleanly",
        );
    }

    // The embedded descriptor, where the header puts it (VMware's and our reading).
    let mut create_type = None;
    if h.desc_offset == 0 || h.desc_size == 0 {
        if policy.strict {
            rep.add(
                "no-descriptor",
                "a sparse file without an embedded descriptor",
            );
        }
        if h.capacity == 0 {
            rep.add("bad-header", "capacity 0 and no descriptor");
        }
    } else {
        let start = h.desc_offset.saturating_mul(SECTOR_SIZE);
        let len = h.desc_size.saturating_mul(SECTOR_SIZE);
        let end = start.saturating_add(len);
        if start != SPARSE_DESC_OFFSET {
            rep.add(
                "descriptor-location",
                format!(
                    "the header puts the descriptor at byte {start}, but QEMU reads descriptor \
                     text (CID, parentCID, parentFileNameHint) at byte {SPARSE_DESC_OFFSET} \
                     whatever the header says: QEMU and VMware would read different text"
                ),
            );
        }
        if len > MAX_DESCRIPTOR_SIZE as u64 {
            rep.add(
                "descriptor-too-large",
                format!(
                    "the embedded descriptor is {len} bytes (QEMU and this library read at \
                     most {MAX_DESCRIPTOR_SIZE})"
                ),
            );
        } else if end > file_size {
            rep.add(
                "past-eof",
                format!(
                    "the embedded descriptor ({len} bytes at offset {start}) ends past the \
                     end of the {file_size}-byte file"
                ),
            );
        } else {
            regions.push(Region {
                start,
                end,
                what: "the embedded descriptor".into(),
            });
            let text = r.bytes(start, len)?;
            match Descriptor::parse(&text) {
                Err(e) => rep.add("bad-descriptor", format!("embedded descriptor: {e}")),
                Ok(desc) => {
                    create_type = Some(desc.create_type.clone());
                    check_embedded(&h, &desc, rep);
                    check_descriptor_hint(&desc, qemu_found.as_deref(), policy, rep);
                    if policy.strict {
                        strict_descriptor_lines(&text, rep);
                    }
                }
            }
        }
    }
    let ct = create_type.unwrap_or_else(|| "monolithicSparse".into());
    check_create_type(&ct, policy, rep);
    if policy.strict {
        let stream_layout = h.compressed() && h.has_markers();
        let is_stream = ct.eq_ignore_ascii_case("streamOptimized");
        if stream_layout != is_stream || (h.compressed() != h.has_markers()) {
            rep.add(
                "flags-mismatch",
                format!(
                    "header flags (compressed: {}, markers: {}) do not fit createType \"{}\"",
                    h.compressed(),
                    h.has_markers(),
                    shown(ct.as_bytes())
                ),
            );
        }
    }
    rep.subformat = Some(ct);
    if h.capacity == 0 {
        return Ok(());
    }
    check_tables(r, file_size, &h, regions, rep)
}

/// QEMU's first branch: a first header with capacity 0 and a descriptor offset makes it
/// read up to 1 MiB there as a descriptor *file* and open every extent that text names
/// (the footer, the descriptor size and the rest of the header are never looked at).
fn capacity_zero(
    r: &Counted<'_>,
    file_size: u64,
    first: &SparseHeader,
    rep: &mut InspectReport,
) -> Result<()> {
    if first.capacity != 0 || first.desc_offset == 0 {
        return Ok(());
    }
    let at = first.desc_offset.saturating_mul(SECTOR_SIZE);
    let want = file_size.min(qemu_view::READ_DESC_MAX as u64);
    let text = if at < file_size {
        r.bytes(at, want)?
    } else {
        Vec::new()
    };
    let open = qemu_view::open_descriptor_file(&text);
    let opens = if open.extents.is_empty() {
        "whichever extent files it names".to_string()
    } else {
        format!("the extent file(s) {}", extent_names(&open))
    };
    rep.add(
        "capacity-zero-descriptor",
        format!(
            "the header's capacity is 0, so QEMU reads the text at byte {at} as a descriptor \
             file and opens {opens}"
        ),
    );
    Ok(())
}

/// QEMU's scans of the text at sector 1 (`vmdk_parent_open`, `vmdk_read_cid`), whatever
/// the header says about the descriptor: the backing file name it takes, if any.
fn qemu_scans(r: &Counted<'_>, rep: &mut InspectReport) -> Result<Option<Vec<u8>>> {
    let text = r.bytes(SPARSE_DESC_OFFSET, qemu_view::DESC_SCAN_BYTES as u64)?;
    let found = qemu_hint(&text, SPARSE_DESC_OFFSET, rep);
    let missing: Vec<&str> = [("CID", false), ("parentCID", true)]
        .iter()
        .filter(|&&(_, parent)| qemu_view::read_cid(&text, parent).is_none())
        .map(|&(key, _)| key)
        .collect();
    if !missing.is_empty() {
        rep.add(
            "qemu-cannot-open",
            format!(
                "QEMU reads {} from the text at byte {SPARSE_DESC_OFFSET} and finds none \
                 there: qemu-img refuses the file",
                missing.join(" and ")
            ),
        );
    }
    Ok(found)
}

/// The embedded descriptor against the header: VMware follows every extent it lists, and
/// the descriptor's size must be the header's.
fn check_embedded(h: &SparseHeader, desc: &Descriptor, rep: &mut InspectReport) {
    for (i, e) in desc.extents.iter().enumerate() {
        let external = i > 0 || e.kind != ExtentType::Sparse;
        match (&e.file, external) {
            (Some(f), true) => rep.add(
                "external-extent",
                format!(
                    "the embedded descriptor names a further {} extent \"{}\": a file \
                     besides this one",
                    e.kind.keyword(),
                    shown(f.as_bytes())
                ),
            ),
            (Some(f), false) if f.contains('/') || f.contains('\\') => rep.add(
                "external-extent",
                format!(
                    "the embedded descriptor's extent \"{}\" names a path",
                    shown(f.as_bytes())
                ),
            ),
            (None, true) => rep.add(
                "extent-layout",
                format!(
                    "the embedded descriptor lists a {} extent besides the sparse one",
                    e.kind.keyword()
                ),
            ),
            _ => {}
        }
    }
    if desc.extents.is_empty() {
        rep.add("extent-layout", "the embedded descriptor lists no extent");
    }
    let described = desc.total_sectors();
    if h.capacity != 0 && described != h.capacity {
        rep.add(
            "size-mismatch",
            format!(
                "the descriptor's extents add up to {described} sectors but the header's \
                 capacity is {} sectors",
                h.capacity
            ),
        );
    }
}

/// The footer of a stream (marker, header copy, end-of-stream marker in the last three
/// sectors), or why there is none.
fn read_footer(
    r: &Counted<'_>,
    file_size: u64,
) -> Result<std::result::Result<SparseHeader, String>> {
    if file_size < 4 * SECTOR_SIZE {
        return Ok(Err(format!(
            "the header says the grain directory is in a footer, but the {file_size}-byte \
             file is too short to have one"
        )));
    }
    if !file_size.is_multiple_of(SECTOR_SIZE) {
        // QEMU looks for the footer relative to the size rounded up to a sector, this
        // library relative to the size itself: they would read different bytes.
        return Ok(Err(format!(
            "the header says the grain directory is in a footer, but the {file_size}-byte \
             file is not a whole number of sectors, so readers disagree on where the footer is"
        )));
    }
    let b = r.bytes(file_size - 3 * SECTOR_SIZE, 3 * SECTOR_SIZE)?;
    let marker = MetadataMarker::parse(&b[..512]);
    let eos = MetadataMarker::parse(&b[1024..]);
    if !matches!(marker, Some(m) if m.kind == MARKER_FOOTER)
        || !matches!(eos, Some(m) if m.kind == MARKER_EOS && m.num_sectors == 0)
    {
        return Ok(Err(
            "the header says the grain directory is in a footer, but the file does not end \
             with a footer marker, footer and end-of-stream marker (cut short?)"
                .into(),
        ));
    }
    Ok(match SparseHeader::parse(&b[512..1024]) {
        Ok(f) if f.gd_offset != GD_AT_END => Ok(f),
        Ok(_) => Err("the stream footer does not say where the grain directory is".into()),
        Err(e) => Err(format!("stream footer: {e}")),
    })
}

fn footer_differences(h: &SparseHeader, f: &SparseHeader) -> Vec<&'static str> {
    let mut d = Vec::new();
    if h.version != f.version {
        d.push("version");
    }
    if h.capacity != f.capacity {
        d.push("capacity");
    }
    if h.grain_size != f.grain_size {
        d.push("grain size");
    }
    if h.num_gtes_per_gt != f.num_gtes_per_gt {
        d.push("grain table size");
    }
    if h.desc_offset != f.desc_offset || h.desc_size != f.desc_size {
        d.push("descriptor location");
    }
    if h.compress_algorithm != f.compress_algorithm {
        d.push("compression");
    }
    d
}

/// The grain directories, a bounded sample of grain tables and the grains they point at:
/// inside the file, not overlapping each other or other metadata, no grain pointed at twice.
fn check_tables(
    r: &Counted<'_>,
    file_size: u64,
    h: &SparseHeader,
    mut regions: Vec<Region>,
    rep: &mut InspectReport,
) -> Result<()> {
    let entries = h.gd_entries();
    let gd_bytes = entries.saturating_mul(4);
    let gt_bytes = u64::from(h.num_gtes_per_gt) * 4;
    if gd_bytes > MAX_GD_BYTES {
        rep.add(
            "metadata-too-large",
            format!(
                "a {gd_bytes}-byte grain directory is more than this inspector reads \
                 ({MAX_GD_BYTES}); it cannot vouch for the image"
            ),
        );
        return Ok(());
    }
    let mut dirs = vec![("grain directory", h.gd_offset)];
    if h.rgd_offset != 0 && h.rgd_offset != GD_AT_END && h.rgd_offset != h.gd_offset {
        dirs.push(("redundant grain directory", h.rgd_offset));
    }
    let mut tables: Vec<(u64, &'static str)> = Vec::new();
    for (what, sector) in dirs {
        let start = sector.saturating_mul(SECTOR_SIZE);
        let end = start.saturating_add(gd_bytes);
        if sector == 0 {
            rep.add("bad-header", format!("the {what} is at offset 0"));
            continue;
        }
        if end > file_size {
            rep.add(
                "past-eof",
                format!(
                    "the {what} ({gd_bytes} bytes at offset {start}) ends past the end of the \
                     {file_size}-byte file"
                ),
            );
            continue;
        }
        regions.push(Region {
            start,
            end,
            what: format!("the {what}"),
        });
        let gd = r.bytes(start, gd_bytes)?;
        for (i, e) in gd.chunks_exact(4).enumerate() {
            let gt = u64::from(u32::from_le_bytes(e.try_into().unwrap()));
            if gt == 0 {
                continue;
            }
            let off = gt * SECTOR_SIZE;
            if off.saturating_add(gt_bytes) > file_size {
                rep.add(
                    "past-eof",
                    format!(
                        "{what} entry {i} points at a grain table at offset {off}, past the \
                         end of the {file_size}-byte file"
                    ),
                );
                continue;
            }
            regions.push(Region {
                start: off,
                end: off + gt_bytes,
                what: format!("grain table {i} of the {what}"),
            });
            if what == "grain directory" {
                tables.push((off, what));
            }
        }
    }
    rep.grain_tables = tables.len() as u64;
    check_overlaps(&mut regions, "metadata-overlap", rep);

    // A sample of the primary tables, spread evenly; the grains they point at.
    let n = tables.len();
    let picks: Vec<usize> = if n <= MAX_SAMPLED_TABLES {
        (0..n).collect()
    } else {
        (0..MAX_SAMPLED_TABLES)
            .map(|k| k * (n - 1) / (MAX_SAMPLED_TABLES - 1))
            .collect()
    };
    let grain_bytes = h.grain_size * SECTOR_SIZE;
    let compressed = h.compressed();
    let mut seen = HashSet::new();
    let mut grains: Vec<Region> = Vec::new();
    for k in picks {
        let (off, _) = tables[k];
        let gt = r.bytes(off, gt_bytes)?;
        rep.grain_tables_checked += 1;
        for (j, e) in gt.chunks_exact(4).enumerate() {
            let g = u64::from(u32::from_le_bytes(e.try_into().unwrap()));
            // 0: unallocated; 1: a zeroed grain (with the zero-grain flag, and harmless
            // without it: QEMU reads the sector-1 grain, i.e. the descriptor, only if the
            // flag is off; it is flagged as an overlap below then).
            if g == 0 || (g == 1 && h.zero_grain()) {
                continue;
            }
            rep.grains_allocated += 1;
            let start = g * SECTOR_SIZE;
            // A compressed grain's length is in its marker, which is not read: only its
            // start is checked.
            let end = if compressed {
                start + 1
            } else {
                start + grain_bytes
            };
            if end > file_size {
                rep.add(
                    "past-eof",
                    format!(
                        "grain table at offset {off}, entry {j}: a grain at offset {start} \
                         ends past the end of the {file_size}-byte file"
                    ),
                );
                continue;
            }
            if !seen.insert(g) {
                rep.add(
                    "grain-shared",
                    format!("grain at offset {start} is pointed at by two table entries"),
                );
                continue;
            }
            grains.push(Region {
                start,
                end,
                what: format!("the grain at offset {start}"),
            });
        }
    }
    // Grains against metadata (grains against grains are the shared case above, or an
    // overlap of two uncompressed grains).
    grains.extend(regions);
    check_overlaps(&mut grains, "grain-overlap", rep);
    Ok(())
}

/// Report every pair of regions that share bytes.
pub(super) fn check_overlaps(regions: &mut [Region], code: &'static str, rep: &mut InspectReport) {
    regions.sort_by_key(|g| (g.start, g.end));
    let mut reach: Option<&Region> = None;
    for g in regions.iter() {
        if let Some(prev) = reach {
            if g.start < prev.end {
                rep.add(
                    code,
                    format!(
                        "{} (bytes {}..{}) overlaps {} (bytes {}..{})",
                        g.what, g.start, g.end, prev.what, prev.start, prev.end
                    ),
                );
            }
        }
        if reach.is_none_or(|p| g.end > p.end) {
            reach = Some(g);
        }
    }
}
