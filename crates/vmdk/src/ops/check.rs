//! Consistency checks, at least what `qemu-img check` finds for VMDK.
//!
//! For every sparse extent of the image (not its backing chain) the check walks the grain
//! directory, the redundant grain directory when there is one, every grain table and every
//! grain-table entry, and reports:
//!
//! * **corruptions**: grains pointing past the end of the file (what QEMU reports as "cluster
//!   offset for sector N points after EOF"), grain tables lying past the end of the file or
//!   overlapping the header, descriptor, directories or each other, grains overlapping
//!   metadata or each other (two entries sharing a grain), compressed grains whose marker is
//!   unreadable, claims more bytes than a grain can compress to, names the wrong sector or
//!   runs past the end of the file, and undecodable seSparse entries;
//! * **leaks**: space in the file that neither metadata nor any grain uses (stale
//!   end-of-stream markers left behind by appends to QEMU-layout stream files, VMware
//!   stream footers, and other metadata markers between grains, such as the type-4 markers
//!   of ovftool streams, are metadata, not leaks);
//! * **warnings**: a redundant grain directory or redundant grain tables that disagree with
//!   the primary ones. The primary copy is the one every reader uses, and a crash between
//!   the two table updates leaves exactly this state, so it does not count as corruption.
//!
//! Memory stays bounded by the file size: overlaps are found with two bitmaps of one bit
//! per 512-byte sector of the extent file (metadata and grains), allocated zeroed so only
//! the parts the file actually uses are ever touched. Time is bounded as well: a grain table
//! that overlaps other metadata is reported and not walked, so a directory pointing many
//! times at one table costs one walk.

use crate::error::Result;
use crate::extent::Region;
use crate::extent::{ExtentFindings, ExtentKind, SparseExtent, SparseFlavor};
use crate::format::marker::{
    is_end_of_stream, GrainMarker, MetadataMarker, FOOTER_SIZE, GRAIN_MARKER_SIZE, MARKER_EOS,
    MARKER_GD, MARKER_GT,
};
use crate::format::SECTOR_SIZE;
use crate::image::Image;
use crate::storage::scan_holes;

/// The filesystem block size leaked space is judged by: a zeroed piece of unused space
/// smaller than this cannot be given back to the filesystem, so it is not counted.
const HOST_BLOCK: u64 = 4096;

/// At most this many corruption (and, separately, leak and warning) descriptions are kept;
/// further ones are only counted.
pub const MAX_MESSAGES: usize = 1000;

/// Largest file offset (in sectors) tracked for overlaps: VMDK4 and COWD offsets are 32-bit
/// sector numbers, plus room for the largest grain after the last one.
const MAX_TRACKED_SECTORS: u64 = (1 << 32) + (1 << 21);

/// What a check found. Exit codes follow qemu-img: 0 clean, 2 corruptions, 3 leaks only
/// (and 1 when the check itself failed, see [`CheckReport::exit_code`]).
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// Human-readable descriptions of corruptions (each one counts), at most
    /// [`MAX_MESSAGES`]; see [`CheckReport::corruption_count`].
    pub corruptions: Vec<String>,
    /// Corruptions found beyond the [`MAX_MESSAGES`] described ones.
    pub more_corruptions: u64,
    /// Human-readable descriptions of leaked space.
    pub leaks: Vec<String>,
    /// Number of leaked clusters (unused stretches, counted in grains, rounded up).
    pub leaked_clusters: u64,
    /// Harmless inconsistencies: redundant metadata disagreeing with the primary copy.
    pub warnings: Vec<String>,
    /// Errors that prevented checking parts of the image.
    pub check_errors: u64,
    /// Descriptions of those errors.
    pub errors: Vec<String>,
    /// Allocated grains.
    pub allocated_clusters: u64,
    /// Total grains.
    pub total_clusters: u64,
    /// Compressed grains.
    pub compressed_clusters: u64,
    /// Grains not contiguous with their predecessor.
    pub fragmented_clusters: u64,
    /// End of the used part of the image file (single sparse extent images only).
    pub image_end_offset: Option<u64>,
    /// Leaked clusters a repair gave back (see [`crate::ops::repair`]); 0 for a plain check.
    pub leaks_fixed: u64,
    /// Corruptions (and redundant-copy disagreements) a repair fixed; 0 for a plain check.
    pub corruptions_fixed: u64,
}

impl CheckReport {
    /// Corruptions found, described or not.
    pub fn corruption_count(&self) -> u64 {
        self.corruptions.len() as u64 + self.more_corruptions
    }

    /// Whether nothing at all was found.
    pub fn is_clean(&self) -> bool {
        self.corruption_count() == 0 && self.leaked_clusters == 0 && self.check_errors == 0
    }

    /// qemu-img's exit status: 1 check failed, 2 corruptions, 3 leaks only, 0 clean.
    pub fn exit_code(&self) -> i32 {
        if self.check_errors > 0 {
            1
        } else if self.corruption_count() > 0 {
            2
        } else if self.leaked_clusters > 0 {
            3
        } else {
            0
        }
    }

    fn corruption(&mut self, msg: String) {
        if self.corruptions.len() < MAX_MESSAGES {
            self.corruptions.push(msg);
        } else {
            self.more_corruptions += 1;
        }
    }

    fn warning(&mut self, msg: String) {
        if self.warnings.len() < MAX_MESSAGES {
            self.warnings.push(msg);
        }
    }

    fn error(&mut self, msg: String) {
        self.check_errors += 1;
        if self.errors.len() < MAX_MESSAGES {
            self.errors.push(msg);
        }
    }
}

/// Check `image` (not its backing chain).
///
/// Problems found are reported in the [`CheckReport`]; an `Err` is never returned for a
/// damaged image, only for failures that leave nothing to report.
pub fn check(image: &Image) -> Result<CheckReport> {
    Ok(check_with_findings(image).0)
}

/// [`check`], plus the per-extent [`ExtentFindings`] a repair works from.
pub(crate) fn check_with_findings(image: &Image) -> (CheckReport, Vec<ExtentFindings>) {
    let mut r = CheckReport::default();
    let multi = image.extents().len() > 1;
    let mut ends = Vec::new();
    let mut findings = Vec::new();
    for (index, e) in image.extents().iter().enumerate() {
        if let ExtentKind::Sparse(s) = &e.kind {
            let prefix = if multi {
                format!("{}: ", s.file().path().display())
            } else {
                String::new()
            };
            let mut c = ExtentCheck::new(s, e.start, prefix, &mut r);
            ends.push(c.run());
            let mut f = c.f;
            f.extent = index;
            findings.push(f);
        }
    }
    if let [Some(end)] = ends[..] {
        r.image_end_offset = Some(end);
    }
    (r, findings)
}

/// What already uses a stretch of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hit {
    Free,
    Meta,
    Grain,
}

/// One bit per sector of a file, for metadata and for grains.
struct SpaceMap {
    sectors: u64,
    meta: Vec<u64>,
    grain: Vec<u64>,
    /// End (bytes) of the furthest claim.
    end: u64,
}

impl SpaceMap {
    fn new(file_len: u64) -> SpaceMap {
        let sectors = file_len.div_ceil(SECTOR_SIZE).min(MAX_TRACKED_SECTORS);
        let words = sectors.div_ceil(64) as usize;
        SpaceMap {
            sectors,
            meta: vec![0; words],
            grain: vec![0; words],
            end: 0,
        }
    }

    /// Mark `[start, end)` (bytes, widened to whole sectors) as used by `what`. Stops at the
    /// first sector something else already uses and says what that is; the part before it
    /// stays marked, so repeated claims of the same stretch cost O(1) each.
    fn claim(&mut self, what: Hit, start: u64, end: u64) -> Hit {
        self.end = self.end.max(end.next_multiple_of(SECTOR_SIZE));
        let s = start / SECTOR_SIZE;
        let e = end.div_ceil(SECTOR_SIZE).min(self.sectors);
        if s >= e {
            return Hit::Free;
        }
        let (first_w, last_w) = ((s / 64) as usize, ((e - 1) / 64) as usize);
        for w in first_w..=last_w {
            let lo = if w == first_w { s % 64 } else { 0 };
            let hi = if w == last_w { (e - 1) % 64 } else { 63 };
            let mask = (u64::MAX >> (63 - hi)) & (u64::MAX << lo);
            if self.meta[w] & mask != 0 {
                return Hit::Meta;
            }
            if self.grain[w] & mask != 0 {
                return Hit::Grain;
            }
            match what {
                Hit::Meta => self.meta[w] |= mask,
                _ => self.grain[w] |= mask,
            }
        }
        Hit::Free
    }

    /// Maximal runs of unused sectors at or after sector `from`, as byte ranges, up to
    /// `file_len` (sectors past the tracked range count as unused).
    fn unused(&self, from: u64, file_len: u64) -> Vec<(u64, u64)> {
        let mut runs = Vec::new();
        let mut run_start: Option<u64> = None;
        let mut sector = from;
        while sector < self.sectors {
            let w = (sector / 64) as usize;
            let used = self.meta[w] | self.grain[w];
            if sector & 63 == 0 && sector + 64 <= self.sectors && (used == 0 || used == u64::MAX) {
                // Whole word at once.
                if used == 0 {
                    run_start.get_or_insert(sector);
                } else if let Some(rs) = run_start.take() {
                    runs.push((rs * SECTOR_SIZE, sector * SECTOR_SIZE));
                }
                sector += 64;
                continue;
            }
            if used & (1 << (sector % 64)) == 0 {
                run_start.get_or_insert(sector);
            } else if let Some(rs) = run_start.take() {
                runs.push((rs * SECTOR_SIZE, sector * SECTOR_SIZE));
            }
            sector += 1;
        }
        let tracked_end = self.sectors * SECTOR_SIZE;
        let file_end = file_len.next_multiple_of(SECTOR_SIZE).max(tracked_end);
        match run_start {
            Some(rs) => runs.push((rs * SECTOR_SIZE, file_end)),
            None if file_end > tracked_end => runs.push((tracked_end, file_end)),
            None => {}
        }
        runs
    }
}

struct ExtentCheck<'a> {
    s: &'a SparseExtent,
    ext_start: u64,
    prefix: String,
    r: &'a mut CheckReport,
    /// Length of the extent file.
    file_len: u64,
    /// What each sector of the file is used by so far.
    space: SpaceMap,
    /// Whether unused space can be told apart from used space (and so reported as leaked).
    leak_check: bool,
    /// Where grains may start: the end of the header's overhead.
    data_start: u64,
    /// Offset of the end-of-stream marker that may close a QEMU-layout stream file.
    eos_candidate: Option<u64>,
    /// Sectors holding metadata markers (before tables and directories), claimed last.
    markers: Vec<u64>,
    /// What a repair needs (see [`ExtentFindings`]); `table_ok` says which tables to walk.
    f: ExtentFindings,
}

impl<'a> ExtentCheck<'a> {
    fn new(
        s: &'a SparseExtent,
        ext_start: u64,
        prefix: String,
        r: &'a mut CheckReport,
    ) -> ExtentCheck<'a> {
        ExtentCheck {
            s,
            ext_start,
            prefix,
            r,
            file_len: 0,
            space: SpaceMap::new(0),
            leak_check: true,
            data_start: 0,
            eos_candidate: None,
            markers: Vec::new(),
            f: ExtentFindings::default(),
        }
    }

    fn corruption(&mut self, msg: String) {
        let m = format!("{}{msg}", self.prefix);
        self.r.corruption(m);
    }

    fn warning(&mut self, msg: String) {
        let m = format!("{}{msg}", self.prefix);
        self.r.warning(m);
    }

    fn error(&mut self, msg: String) {
        let m = format!("{}{msg}", self.prefix);
        self.unreliable(&m);
        self.r.error(m);
    }

    /// Note that unclaimed space may still be in use (the first reason is kept).
    fn unreliable(&mut self, why: &str) {
        self.f
            .leaks_unreliable
            .get_or_insert_with(|| why.to_string());
    }

    fn read(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.s.file().storage.read_exact_at(buf, offset)
    }

    /// The sector just before `offset`, if it holds a metadata marker of `kind`.
    ///
    /// Markers are claimed only after the grains (see `run`): a sector that merely looks
    /// like a marker (the tail of a compressed grain can) belongs to the grain.
    fn marker_before(&self, offset: u64, kind: u32) -> Option<u64> {
        if !self.s.has_markers() || offset < SECTOR_SIZE {
            return None;
        }
        let mut buf = [0u8; 512];
        (self.read(&mut buf, offset - SECTOR_SIZE).is_ok()
            && matches!(MetadataMarker::parse(&buf), Some(m) if m.kind == kind))
        .then_some(offset - SECTOR_SIZE)
    }

    fn describe(hit: Hit) -> &'static str {
        match hit {
            Hit::Meta => "metadata",
            _ => "a grain",
        }
    }

    /// Check the extent; returns the end of its used space.
    ///
    /// The phases run in this order because each claims space the later ones test against:
    /// fixed metadata, then grain tables, then grains, then the markers that only count
    /// where no grain is, and what is left unclaimed is leaked.
    fn run(&mut self) -> Option<u64> {
        self.file_len = match self.s.file().storage.len() {
            Ok(l) => l,
            Err(e) => {
                self.error(format!("cannot get the file size: {e}"));
                return None;
            }
        };
        self.r.total_clusters += self.s.capacity().div_ceil(self.s.grain_size());
        self.space = SpaceMap::new(self.file_len);
        self.f.file_len = self.file_len;
        self.claim_header_and_descriptor();
        self.claim_flavor_metadata();
        self.claim_directories();
        self.claim_tables();
        self.check_grains();
        let eos_at = self.claim_markers();
        let used_end = self
            .space
            .end
            .max(self.data_start)
            .min(self.file_len.next_multiple_of(SECTOR_SIZE));
        if self.leak_check {
            self.find_leaks(eos_at);
        }
        Some(used_end)
    }

    /// Header and embedded descriptor (the directories are claimed after the footer).
    fn claim_header_and_descriptor(&mut self) {
        for (region, start, end) in self.s.directory().fixed_regions() {
            if matches!(region, Region::Header | Region::Descriptor)
                && self.space.claim(Hit::Meta, start, end) != Hit::Free
            {
                self.unreliable("metadata overlaps");
                self.corruption(format!(
                    "{region} at offset {start} overlaps other metadata"
                ));
            }
        }
    }

    /// What each flavour adds: VMDK4's overhead, footer or end-of-stream marker; seSparse
    /// and marker-less compressed extents cannot be checked for leaks.
    fn claim_flavor_metadata(&mut self) {
        let s = self.s;
        let file_len = self.file_len;
        match s.flavor() {
            SparseFlavor::Vmdk4 => {
                if let Some(h) = s.header() {
                    self.data_start = h.overhead.saturating_mul(SECTOR_SIZE).min(file_len);
                }
                let footer = FOOTER_SIZE as u64;
                if s.has_footer() && file_len >= footer {
                    self.space.claim(Hit::Meta, file_len - footer, file_len);
                } else if s.has_markers() && file_len >= SECTOR_SIZE {
                    let mut buf = [0u8; 512];
                    let eos = file_len - SECTOR_SIZE;
                    if self.read(&mut buf, eos).is_ok() && is_end_of_stream(&buf) {
                        // Claimed after the grains, like the other markers.
                        self.eos_candidate = Some(eos);
                    }
                }
            }
            SparseFlavor::Cowd => {}
            SparseFlavor::SeSparse => {
                // The journal, bitmaps and preallocated areas are not described well enough
                // to tell free space from used: overlaps are checked, leaks are not.
                self.leak_check = false;
            }
        }
        if s.is_compressed() && !s.has_markers() {
            // Compressed grains without markers have no recorded length.
            self.leak_check = false;
        }
    }

    /// The grain directory and its redundant copy.
    fn claim_directories(&mut self) {
        for (region, start, end) in self.s.directory().fixed_regions() {
            if region == Region::Directory {
                let m = self.marker_before(start, MARKER_GD);
                self.markers.extend(m);
            }
            if matches!(region, Region::Directory | Region::RedundantDirectory)
                && self.space.claim(Hit::Meta, start, end) != Hit::Free
            {
                self.unreliable("metadata overlaps");
                self.corruption(format!(
                    "{region} at offset {start} overlaps other metadata"
                ));
            }
        }
    }

    /// Pass 1: grain tables (and their redundant copies) are metadata. Tables that lie
    /// inside the file and overlap nothing are marked to be walked.
    fn claim_tables(&mut self) {
        let dir = self.s.directory();
        let file_len = self.file_len;
        let gt_bytes = dir.coding().table_bytes();
        self.f.table_ok = vec![false; dir.len()];
        self.f.redundant_ok = vec![false; dir.len()];
        for i in 0..dir.len() {
            let rgt = dir.redundant_table_offset(i);
            let gt = match dir.table_offset(i) {
                Ok(gt) => gt,
                Err(e) => {
                    self.unreliable("a grain directory entry cannot be decoded");
                    self.corruption(format!("grain directory entry {i}: {}", e.message()));
                    continue;
                }
            };
            if let Some(rgt) = rgt {
                self.check_redundant_table(i, gt, rgt, gt_bytes);
            }
            let Some(gt) = gt else { continue };
            if gt.checked_add(gt_bytes).is_none_or(|end| end > file_len) {
                self.f.table_past_eof.push(i);
                self.corruption(format!(
                    "grain table {i} at offset {gt} lies past the end of the file ({file_len} bytes)"
                ));
                continue;
            }
            let m = self.marker_before(gt, MARKER_GT);
            self.markers.extend(m);
            match self.space.claim(Hit::Meta, gt, gt + gt_bytes) {
                Hit::Free => self.f.table_ok[i] = true,
                hit => {
                    self.unreliable("a grain table overlaps other metadata");
                    self.corruption(format!(
                        "grain table {i} at offset {gt} overlaps {}",
                        Self::describe(hit)
                    ))
                }
            }
        }
    }

    /// Pass 2: every entry of every walkable table, against the end of the file, the
    /// metadata and the other grains.
    fn check_grains(&mut self) {
        let dir = self.s.directory();
        let mut next_contiguous: Option<u64> = None;
        for i in 0..self.f.table_ok.len() {
            if !self.f.table_ok[i] {
                continue;
            }
            let table = match dir.table(i) {
                Ok(Some(t)) => t,
                Ok(None) => continue,
                Err(e) => {
                    self.error(format!("cannot read grain table {i}: {e:#}"));
                    continue;
                }
            };
            let gt_entries = dir.coding().gt_entries;
            for j in 0..(gt_entries as usize).min(table.len()) {
                let grain = i as u64 * gt_entries + j as u64;
                if grain.saturating_mul(self.s.grain_size()) >= self.s.capacity() {
                    break;
                }
                let entry = match dir.decode(table.get(j)) {
                    Ok(e) => e,
                    Err(e) => {
                        self.unreliable("a grain table entry cannot be decoded");
                        self.corruption(format!("grain table {i} entry {j}: {}", e.message()));
                        continue;
                    }
                };
                let Some(off) = entry.offset() else {
                    continue;
                };
                if !self.check_grain(grain, off, &mut next_contiguous) {
                    self.f.bad_grains.push((i, j));
                }
            }
        }
    }

    /// One allocated grain at file offset `off`: counted, then checked against the end of
    /// the file and claimed. Returns `false` when the grain points past the end of the file
    /// or into metadata (what a repair sets to unallocated).
    fn check_grain(&mut self, grain: u64, off: u64, next_contiguous: &mut Option<u64>) -> bool {
        let s = self.s;
        let (gs, file_len) = (s.grain_size(), self.file_len);
        let sector = (self.ext_start + grain * gs) / SECTOR_SIZE;
        self.r.allocated_clusters += 1;
        if s.is_compressed() {
            self.r.compressed_clusters += 1;
        }
        if off >= file_len {
            self.corruption(format!(
                "cluster offset for sector {sector} points after end of file \
                 ({off} >= {file_len})"
            ));
            return false;
        }
        let end = if s.is_compressed() {
            match self.compressed_end(grain, off, file_len, sector) {
                Some(end) => end,
                None => {
                    self.unreliable("a compressed grain is damaged");
                    return true;
                }
            }
        } else {
            off + gs
        };
        if next_contiguous.is_some_and(|n| n != off) {
            self.r.fragmented_clusters += 1;
        }
        *next_contiguous = Some(end);
        match self.space.claim(Hit::Grain, off, end) {
            Hit::Free => true,
            hit => {
                // The claim stopped at the overlap: the rest of this grain is unclaimed.
                self.unreliable("a grain overlaps metadata or another grain");
                self.corruption(format!(
                    "grain for sector {sector} at offset {off} overlaps {}",
                    if hit == Hit::Meta {
                        "metadata"
                    } else {
                        "another grain"
                    }
                ));
                hit != Hit::Meta
            }
        }
    }

    /// Markers, last: what a grain already covers is not a marker (and a "marker" that is
    /// really the tail of other metadata is not our business either). Returns where the
    /// end-of-stream marker closing the file is, if there is one.
    fn claim_markers(&mut self) -> Option<u64> {
        for m in std::mem::take(&mut self.markers) {
            let _ = self.space.claim(Hit::Meta, m, m + SECTOR_SIZE);
        }
        let eos = self.eos_candidate?;
        (self.space.claim(Hit::Meta, eos, self.file_len) == Hit::Free).then_some(eos)
    }

    /// Report every unclaimed stretch after the header's overhead as leaked, except the
    /// slack and stale markers stream writers leave.
    fn find_leaks(&mut self, eos_at: Option<u64>) {
        let s = self.s;
        let gs = s.grain_size();
        let file_end = self.file_len.next_multiple_of(SECTOR_SIZE);
        for (start, end) in self
            .space
            .unused(self.data_start / SECTOR_SIZE, self.file_len)
        {
            let end = end.min(file_end);
            let start = if s.has_markers() {
                self.skip_metadata_markers(start, end)
            } else {
                start
            };
            if end <= start {
                continue;
            }
            if s.has_markers()
                && !s.has_footer()
                && end - start <= gs
                && self.is_zero_sector(end - SECTOR_SIZE)
            {
                // An end-of-stream marker left behind when grains were appended, with
                // QEMU's slack before it.
                continue;
            }
            if eos_at == Some(end) && end - start < gs {
                // QEMU ends its stream files one grain after the last grain's sector,
                // leaving slack before the end-of-stream marker.
                continue;
            }
            for (start, end) in self.allocated_parts(start, end) {
                self.leak(start, end);
            }
        }
    }

    fn leak(&mut self, start: u64, end: u64) {
        self.r.leaked_clusters += (end - start).div_ceil(self.s.grain_size());
        self.f.leaks.push((start, end));
        if self.r.leaks.len() < MAX_MESSAGES {
            let m = format!(
                "{}leaked space: {} bytes at offset {start} are used by no grain or metadata",
                self.prefix,
                end - start
            );
            self.r.leaks.push(m);
        }
    }

    /// The parts of the unused stretch `[start, end)` that take space on the host: holes
    /// (what `check -r leaks` punches) are not leaked, and neither is a zeroed piece smaller
    /// than a filesystem block, which punching a hole zeroes but cannot give back.
    fn allocated_parts(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let storage = &*self.s.file().storage;
        let mut parts = Vec::new();
        let data_end = end.min(self.file_len);
        scan_holes(storage, start.min(data_end), data_end, |at, len, data| {
            if data {
                parts.push((at, at + len));
            }
            true
        });
        // The sector-rounding past the end of the file belongs to the last piece.
        if end > data_end {
            match parts.last_mut() {
                Some(p) if p.1 == data_end => p.1 = end,
                _ => parts.push((data_end, end)),
            }
        }
        parts.retain(|&(s, e)| {
            e - s >= HOST_BLOCK || {
                let mut buf = vec![0u8; (e - s) as usize];
                storage.read_up_to(&mut buf, s).is_err() || buf.iter().any(|&b| b != 0)
            }
        });
        parts
    }

    /// Skip the metadata markers (and the sectors they announce) that start the unused
    /// stretch `[start, end)` back to back; returns where the rest of the stretch begins.
    ///
    /// Stream writers put metadata the directories do not point at between grains: VMware's
    /// ovftool writes undocumented type-4 markers (one sector each, a disk position in the
    /// payload) before the grain-directory marker. Any marker other than end-of-stream is
    /// taken as metadata as long as what it announces fits in the stretch; an all-zero
    /// sector parses as an end-of-stream marker and is left to the stale-marker rules.
    fn skip_metadata_markers(&self, start: u64, end: u64) -> u64 {
        let mut pos = start;
        let mut buf = [0u8; 512];
        while end.saturating_sub(pos) >= SECTOR_SIZE && self.read(&mut buf, pos).is_ok() {
            let Some(m) = MetadataMarker::parse(&buf) else {
                break;
            };
            let room = (end - pos) / SECTOR_SIZE - 1;
            if m.kind == MARKER_EOS || m.num_sectors > room {
                break;
            }
            pos += (1 + m.num_sectors) * SECTOR_SIZE;
        }
        pos
    }

    fn is_zero_sector(&self, offset: u64) -> bool {
        let mut buf = [0u8; 512];
        self.read(&mut buf, offset).is_ok() && buf.iter().all(|&b| b == 0)
    }

    /// Validate the compressed grain at `off`; returns the end of its record (sector
    /// aligned), or `None` after reporting a corruption.
    fn compressed_end(&mut self, grain: u64, off: u64, file_len: u64, sector: u64) -> Option<u64> {
        let s = self.s;
        if !s.has_markers() {
            return Some(off + SECTOR_SIZE);
        }
        let mut m = [0u8; GRAIN_MARKER_SIZE];
        if off + GRAIN_MARKER_SIZE as u64 > file_len || self.read(&mut m, off).is_err() {
            self.corruption(format!(
                "compressed grain for sector {sector} at offset {off}: marker is unreadable"
            ));
            return None;
        }
        let marker = match GrainMarker::parse_checked(&m, s.grain_size()) {
            Ok(m) => m,
            Err(why) => {
                self.corruption(format!(
                    "compressed grain for sector {sector} at offset {off}: {why}"
                ));
                return None;
            }
        };
        let expect_lba = grain * s.grain_size() / SECTOR_SIZE;
        if marker.lba != expect_lba {
            self.corruption(format!(
                "compressed grain for sector {sector} at offset {off}: marker names sector {} \
                 of the extent, expected {expect_lba}",
                marker.lba
            ));
        }
        let end = off + GRAIN_MARKER_SIZE as u64 + marker.size as u64;
        if end > file_len {
            self.corruption(format!(
                "compressed grain for sector {sector} at offset {off} runs past the end of the \
                 file ({end} > {file_len})"
            ));
            return None;
        }
        Some(end.next_multiple_of(SECTOR_SIZE))
    }

    /// Claim redundant table `i` and compare it with the primary.
    fn check_redundant_table(&mut self, i: usize, gt: Option<u64>, rgt: u64, gt_bytes: u64) {
        let dir = self.s.directory();
        let file_len = self.file_len;
        match (gt, rgt) {
            (None, 0) => return,
            (Some(_), 0) => {
                self.warning(format!(
                    "redundant grain directory entry {i} is empty but the primary one is not"
                ));
                return;
            }
            (None, _) => {
                self.warning(format!(
                    "redundant grain directory entry {i} points at a table but the primary one \
                     is empty"
                ));
            }
            _ => {}
        }
        if rgt.checked_add(gt_bytes).is_none_or(|end| end > file_len) {
            self.corruption(format!(
                "redundant grain table {i} at offset {rgt} lies past the end of the file \
                 ({file_len} bytes)"
            ));
            return;
        }
        let hit = self.space.claim(Hit::Meta, rgt, rgt + gt_bytes);
        if hit != Hit::Free {
            self.unreliable("a redundant grain table overlaps other metadata");
            self.corruption(format!(
                "redundant grain table {i} at offset {rgt} overlaps {}",
                Self::describe(hit)
            ));
            return;
        }
        self.f.redundant_ok[i] = true;
        let Some(gt) = gt else { return };
        if gt.checked_add(gt_bytes).is_none_or(|end| end > file_len) {
            return; // reported by the caller
        }
        let redundant = match self.s.raw_table_at(rgt) {
            Ok(r) => r,
            Err(e) => {
                self.error(format!("cannot read redundant grain table {i}: {e:#}"));
                return;
            }
        };
        let primary = match dir.table(i) {
            Ok(Some(t)) => t,
            Ok(None) => return,
            Err(e) => {
                self.error(format!("cannot read grain table {i}: {e:#}"));
                return;
            }
        };
        let differing = redundant
            .iter()
            .enumerate()
            .filter(|&(j, &raw)| j < primary.len() && raw != primary.get(j))
            .count();
        if differing > 0 {
            self.warning(format!(
                "redundant grain table {i} differs from the primary in {differing} entries"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_map_claims_and_overlaps() {
        let mut m = SpaceMap::new(1 << 20);
        assert_eq!(m.claim(Hit::Meta, 0, 512), Hit::Free);
        assert_eq!(m.claim(Hit::Grain, 65536, 131072), Hit::Free);
        assert_eq!(m.claim(Hit::Grain, 65536 + 512, 65536 + 1024), Hit::Grain);
        assert_eq!(m.claim(Hit::Grain, 0, 100), Hit::Meta);
        // Unaligned end widens to the sector.
        assert_eq!(m.claim(Hit::Grain, 131072, 131073), Hit::Free);
        assert_eq!(m.claim(Hit::Grain, 131072 + 511, 131072 + 600), Hit::Grain);
        assert_eq!(m.end, 131072 + 1024);
        let unused = m.unused(1, 1 << 20);
        assert_eq!(
            unused,
            vec![(512, 65536), (131072 + 512, 1 << 20)],
            "{unused:?}"
        );
    }

    #[test]
    fn space_map_word_edges() {
        let mut m = SpaceMap::new(64 * 512 * 3);
        assert_eq!(m.claim(Hit::Meta, 63 * 512, 129 * 512), Hit::Free);
        assert_eq!(m.claim(Hit::Grain, 128 * 512, 130 * 512), Hit::Meta);
        assert_eq!(m.claim(Hit::Grain, 129 * 512, 130 * 512), Hit::Free);
        assert_eq!(
            m.unused(0, 64 * 512 * 3),
            vec![(0, 63 * 512), (130 * 512, 192 * 512)]
        );
        assert_eq!(SpaceMap::new(0).unused(0, 0), vec![]);
    }
}
