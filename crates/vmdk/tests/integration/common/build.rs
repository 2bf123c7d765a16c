//! Builders for the VMDK variants qemu-img cannot create (COWD/vmfsSparse, seSparse, VMware-layout
//! streamOptimized, hand-written descriptors). Each takes the raw virtual disk as a byte slice
//! and produces the files, written from the documented on-disk layout with plain byte pokes
//! (not the library's own encoders, so a shared misreading would not go unnoticed; qemu reads
//! most of these too and is the cross-check).

use std::io::Write;
use std::path::Path;

pub const SECTOR: usize = 512;

pub fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
pub fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
pub fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

fn pad_to_sector(v: &mut Vec<u8>) {
    let n = v.len().next_multiple_of(SECTOR);
    v.resize(n, 0);
}

/// What a builder stores for one grain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grain {
    /// Nothing: unallocated (falls through to a parent).
    Skip,
    /// An explicit zero grain (seSparse 0x2 entry; COWD/VMDK4 have none and store zeros).
    Zero,
    /// seSparse "SCSI-unmapped" entry (0x1 nibble): reads as zeros too.
    Unmapped,
    /// The grain's bytes.
    Data,
}

/// Default policy: store grains that have any non-zero byte.
pub fn nonzero(_index: u64, bytes: &[u8]) -> Grain {
    if bytes.iter().any(|&b| b != 0) {
        Grain::Data
    } else {
        Grain::Skip
    }
}

/// The bytes of grain `g` of `disk` (the last one may be short: zero-padded).
pub fn grain_bytes(disk: &[u8], g: u64, grain: usize) -> Vec<u8> {
    let s = g as usize * grain;
    let e = (s + grain).min(disk.len());
    let mut v = disk[s..e].to_vec();
    v.resize(grain, 0);
    v
}

/// A descriptor file's text.
pub fn descriptor(
    cid: u32,
    parent_cid: u32,
    create_type: &str,
    parent_hint: Option<&str>,
    extent_lines: &[String],
) -> String {
    let mut s = format!(
        "# Disk DescriptorFile\nversion=1\nCID={cid:08x}\nparentCID={parent_cid:08x}\n\
         createType=\"{create_type}\"\n"
    );
    if let Some(h) = parent_hint {
        s += &format!("parentFileNameHint=\"{h}\"\n");
    }
    s += "\n# Extent description\n";
    for l in extent_lines {
        s += l;
        s += "\n";
    }
    s += "\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.adapterType = \"lsilogic\"\n";
    s
}

/// A VMDK3 / ESX `COWD` sparse extent (vmfsSparse) holding `disk`, with 4096-entry grain
/// tables and `grain_sectors`-sector grains. `policy` says which grains are stored.
pub fn cowd(
    disk: &[u8],
    grain_sectors: u32,
    parent_name: Option<&str>,
    policy: &dyn Fn(u64, &[u8]) -> Grain,
) -> Vec<u8> {
    assert_eq!(disk.len() % SECTOR, 0);
    let capacity = (disk.len() / SECTOR) as u64;
    let grain = grain_sectors as usize * SECTOR;
    let per_gt = 4096u64 * grain_sectors as u64;
    let gd_entries = capacity.div_ceil(per_gt);
    let n_grains = capacity.div_ceil(grain_sectors as u64);
    let gd_offset = 4u64; // header is 2048 bytes
    let gd_sectors = (gd_entries * 4).div_ceil(SECTOR as u64);
    let mut file = vec![0u8; ((gd_offset + gd_sectors) as usize) * SECTOR];
    let mut gts: Vec<Option<Vec<u8>>> = vec![None; gd_entries as usize];
    let mut grains: Vec<(u64, Vec<u8>)> = Vec::new();
    for g in 0..n_grains {
        let bytes = grain_bytes(disk, g, grain);
        match policy(g, &bytes) {
            Grain::Skip => {}
            // COWD has no zero marker: store the zeros.
            Grain::Zero | Grain::Unmapped | Grain::Data => {
                grains.push((g, bytes));
                gts[(g / 4096) as usize].get_or_insert_with(|| vec![0u8; 4096 * 4]);
            }
        }
    }
    // Grain tables right after the directory, then the grains.
    let mut next = file.len() as u64 / SECTOR as u64;
    let mut gt_sector = vec![0u64; gd_entries as usize];
    for (i, t) in gts.iter().enumerate() {
        if t.is_some() {
            gt_sector[i] = next;
            put_u32(&mut file, gd_offset as usize * SECTOR + i * 4, next as u32);
            next += 32;
        }
    }
    file.resize(next as usize * SECTOR, 0);
    for (g, bytes) in &grains {
        let t = gts[(*g / 4096) as usize].as_mut().unwrap();
        put_u32(t, (*g % 4096) as usize * 4, next as u32);
        file.extend_from_slice(bytes);
        next += grain_sectors as u64;
    }
    for (i, t) in gts.iter().enumerate() {
        if let Some(t) = t {
            let o = gt_sector[i] as usize * SECTOR;
            file[o..o + t.len()].copy_from_slice(t);
        }
    }
    put_u32(&mut file, 0, 0x4457_4f43); // "COWD"
    put_u32(&mut file, 4, 1); // version
    put_u32(&mut file, 8, 3); // flags
    put_u32(&mut file, 12, capacity as u32);
    put_u32(&mut file, 16, grain_sectors);
    put_u32(&mut file, 20, gd_offset as u32);
    put_u32(&mut file, 24, gd_entries as u32);
    put_u32(&mut file, 28, next as u32); // free sector
    if let Some(p) = parent_name {
        file[32..32 + p.len()].copy_from_slice(p.as_bytes());
    }
    file
}

/// Offsets in a built seSparse file, for tests that corrupt it.
#[derive(Debug, Clone, Copy)]
pub struct SeLayout {
    pub volatile: usize,
    pub gd: usize,
    pub gt_area: usize,
    pub grain_area: usize,
}

/// An seSparse extent holding `disk` (4 KiB grains, 4096-entry tables, 64-bit coded entries).
pub fn sesparse(disk: &[u8], policy: &dyn Fn(u64, &[u8]) -> Grain) -> (Vec<u8>, SeLayout) {
    assert_eq!(disk.len() % SECTOR, 0);
    let capacity = (disk.len() / SECTOR) as u64;
    let grain = 4096usize;
    let gt_entries = 4096u64;
    let n_grains = (disk.len() as u64).div_ceil(grain as u64);
    let gd_entries = n_grains.div_ceil(gt_entries);
    let gd_sectors = (gd_entries * 8).div_ceil(SECTOR as u64).max(1);
    let vol_off = 1u64;
    let gd_off = 8u64;
    let gt_off = gd_off + gd_sectors;
    let mut tables: Vec<Option<Vec<u8>>> = vec![None; gd_entries as usize];
    let mut table_index = vec![0u32; gd_entries as usize];
    let mut n_tables = 0u32;
    let mut grains: Vec<u8> = Vec::new();
    let mut n_alloc = 0u64;
    for g in 0..n_grains {
        let bytes = grain_bytes(disk, g, grain);
        let kind = policy(g, &bytes);
        if kind == Grain::Skip {
            continue;
        }
        let ti = (g / gt_entries) as usize;
        if tables[ti].is_none() {
            tables[ti] = Some(vec![0u8; gt_entries as usize * 8]);
            table_index[ti] = n_tables;
            n_tables += 1;
        }
        let entry = match kind {
            Grain::Skip => unreachable!(),
            Grain::Zero => 0x2000_0000_0000_0000u64,
            Grain::Unmapped => 0x1000_0000_0000_0000u64,
            Grain::Data => {
                let idx = n_alloc;
                n_alloc += 1;
                grains.extend_from_slice(&bytes);
                // Top nibble 3; low 12 bits of the index in bits 48..60, the rest below.
                0x3000_0000_0000_0000 | ((idx & 0xfff) << 48) | (idx >> 12)
            }
        };
        put_u64(
            tables[ti].as_mut().unwrap(),
            (g % gt_entries) as usize * 8,
            entry,
        );
    }
    let gt_sectors_each = gt_entries * 8 / SECTOR as u64; // 64
    let gt_area_sectors = (n_tables as u64).max(1) * gt_sectors_each;
    let grains_off = gt_off + gt_area_sectors;
    let mut file = vec![0u8; grains_off as usize * SECTOR];
    for (i, t) in tables.iter().enumerate() {
        if let Some(t) = t {
            put_u64(
                &mut file,
                gd_off as usize * SECTOR + i * 8,
                0x1000_0000_0000_0000 | table_index[i] as u64,
            );
            let o = (gt_off + table_index[i] as u64 * gt_sectors_each) as usize * SECTOR;
            file[o..o + t.len()].copy_from_slice(t);
        }
    }
    file.extend_from_slice(&grains);
    let fields: [u64; 26] = [
        0xcafe_babe,
        0x0000_0002_0000_0001, // version 2.1
        capacity,
        8,  // grain size, sectors
        64, // grain table size, sectors
        0,  // flags
        0,
        0,
        0,
        0, // reserved
        vol_off,
        1,
        2, // journal header offset (unused here)
        1,
        3, // journal offset
        1,
        gd_off,
        gd_sectors,
        gt_off,
        gt_area_sectors,
        4, // free bitmap
        1,
        5, // backmap
        1,
        grains_off,
        n_alloc * 8,
    ];
    for (i, v) in fields.iter().enumerate() {
        put_u64(&mut file, i * 8, *v);
    }
    put_u64(&mut file, vol_off as usize * SECTOR, 0xcafe_cafe);
    let layout = SeLayout {
        volatile: vol_off as usize * SECTOR,
        gd: gd_off as usize * SECTOR,
        gt_area: gt_off as usize * SECTOR,
        grain_area: grains_off as usize * SECTOR,
    };
    (file, layout)
}

/// Offsets in a built VMware stream file, for tests that corrupt it.
#[derive(Debug, Clone, Default)]
pub struct StreamLayout {
    /// Byte offsets of each grain marker, in LBA order, with the grain's LBA.
    pub grains: Vec<(u64, usize)>,
    pub gd: usize,
    pub footer: usize,
}

/// A VMware-layout streamOptimized file holding `disk`: header with GD_AT_END, embedded
/// descriptor, compressed grains with markers (all-zero grains left out), optionally an
/// unknown marker (type 4) between grains, grain tables with markers, grain directory with
/// marker, footer (marker + header copy with the real GD offset) and end-of-stream marker.
pub fn vmware_stream(
    disk: &[u8],
    grain_sectors: u64,
    desc: &str,
    unknown_marker: bool,
) -> (Vec<u8>, StreamLayout) {
    assert_eq!(disk.len() % SECTOR, 0);
    let capacity = (disk.len() / SECTOR) as u64;
    let grain = grain_sectors as usize * SECTOR;
    let gtes = 512u64;
    let n_grains = capacity.div_ceil(grain_sectors);
    let gd_entries = n_grains.div_ceil(gtes);
    let desc_sectors = (desc.len() as u64 + 1).div_ceil(SECTOR as u64).max(1);
    let overhead = (1 + desc_sectors).next_multiple_of(grain_sectors.min(128));

    let header = |gd_offset: u64| {
        let mut h = vec![0u8; SECTOR];
        h[0..4].copy_from_slice(b"KDMV");
        put_u32(&mut h, 4, 3); // version
        put_u32(&mut h, 8, 1 | (1 << 16) | (1 << 17)); // NL detect, compressed, markers
        put_u64(&mut h, 12, capacity);
        put_u64(&mut h, 20, grain_sectors);
        put_u64(&mut h, 28, 1); // descriptor offset
        put_u64(&mut h, 36, desc_sectors);
        put_u32(&mut h, 44, gtes as u32);
        put_u64(&mut h, 48, 0); // rgd
        put_u64(&mut h, 56, gd_offset);
        put_u64(&mut h, 64, overhead);
        h[72] = 0;
        h[73..77].copy_from_slice(b"\n \r\n");
        put_u16(&mut h, 77, 1); // deflate
        h
    };
    let marker = |num_sectors: u64, kind: u32| {
        let mut m = vec![0u8; SECTOR];
        put_u64(&mut m, 0, num_sectors);
        put_u32(&mut m, 8, 0);
        put_u32(&mut m, 12, kind);
        m
    };

    let mut f = header(u64::MAX);
    f.extend_from_slice(desc.as_bytes());
    f.resize(overhead as usize * SECTOR, 0);
    let mut layout = StreamLayout::default();
    let mut gts = vec![vec![0u8; gtes as usize * 4]; gd_entries as usize];
    let mut gt_used = vec![false; gd_entries as usize];
    for g in 0..n_grains {
        let bytes = grain_bytes(disk, g, grain);
        // A partial last grain is stored at its real length, as VMware does.
        let real = (disk.len() - g as usize * grain).min(grain);
        if bytes.iter().all(|&b| b == 0) {
            continue;
        }
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&bytes[..real]).unwrap();
        let data = z.finish().unwrap();
        let at = f.len();
        let lba = g * grain_sectors;
        layout.grains.push((lba, at));
        let mut m = [0u8; 12];
        put_u64(&mut m, 0, lba);
        put_u32(&mut m, 8, data.len() as u32);
        f.extend_from_slice(&m);
        f.extend_from_slice(&data);
        pad_to_sector(&mut f);
        put_u32(
            &mut gts[(g / gtes) as usize],
            (g % gtes) as usize * 4,
            (at / SECTOR) as u32,
        );
        gt_used[(g / gtes) as usize] = true;
        if unknown_marker && layout.grains.len() == 1 {
            // vSphere's undocumented metadata marker: two sectors of payload.
            f.extend_from_slice(&marker(2, 4));
            f.extend_from_slice(&[0xa5u8; 2 * SECTOR]);
        }
    }
    let gt_sectors = gtes * 4 / SECTOR as u64;
    let mut gd = vec![0u8; (gd_entries as usize * 4).next_multiple_of(SECTOR)];
    for (i, t) in gts.iter().enumerate() {
        if !gt_used[i] {
            continue;
        }
        f.extend_from_slice(&marker(gt_sectors, 1));
        put_u32(&mut gd, i * 4, (f.len() / SECTOR) as u32);
        f.extend_from_slice(t);
    }
    f.extend_from_slice(&marker((gd.len() / SECTOR) as u64, 2));
    let gd_offset = (f.len() / SECTOR) as u64;
    layout.gd = f.len();
    f.extend_from_slice(&gd);
    f.extend_from_slice(&marker(1, 3));
    layout.footer = f.len();
    f.extend_from_slice(&header(gd_offset));
    f.extend_from_slice(&marker(0, 0));
    (f, layout)
}

/// A monolithicSparse (VMDK4) extent holding `disk`, with an embedded descriptor if `desc`
/// is given, `grain_sectors`-sector grains and `gtes`-entry tables; stored grains per
/// `policy` (`Grain::Zero` becomes GTE 1 with the zeroed-grain flag set).
pub fn vmdk4(
    disk: &[u8],
    grain_sectors: u64,
    gtes: u32,
    desc: Option<&str>,
    policy: &dyn Fn(u64, &[u8]) -> Grain,
) -> Vec<u8> {
    vmdk4_with(disk, grain_sectors, gtes, desc, policy, None)
}

/// Like [`vmdk4`], optionally with deflate-compressed grains (`compress = Some(markers)`):
/// grain directory and tables up front (QEMU's layout), each stored grain a zlib stream,
/// preceded by a 12-byte grain marker when `markers`.
pub fn vmdk4_with(
    disk: &[u8],
    grain_sectors: u64,
    gtes: u32,
    desc: Option<&str>,
    policy: &dyn Fn(u64, &[u8]) -> Grain,
    compress: Option<bool>,
) -> Vec<u8> {
    let capacity = (disk.len() as u64).div_ceil(SECTOR as u64);
    let grain = grain_sectors as usize * SECTOR;
    let n_grains = capacity.div_ceil(grain_sectors);
    let gd_entries = n_grains.div_ceil(gtes as u64);
    let desc_sectors = desc.map_or(0, |d| (d.len() as u64 + 1).div_ceil(SECTOR as u64));
    let gd_off = 1 + desc_sectors;
    let gd_sectors = (gd_entries * 4).div_ceil(SECTOR as u64);
    let gt_sectors = (gtes as u64 * 4).div_ceil(SECTOR as u64);
    let gt_off = gd_off + gd_sectors;
    let overhead = gt_off + gd_entries * gt_sectors;
    let mut f = vec![0u8; overhead as usize * SECTOR];
    for i in 0..gd_entries {
        put_u32(
            &mut f,
            gd_off as usize * SECTOR + i as usize * 4,
            (gt_off + i * gt_sectors) as u32,
        );
    }
    let mut zero_flag = false;
    for g in 0..n_grains {
        let bytes = grain_bytes(disk, g, grain);
        let gte_at = ((gt_off + (g / gtes as u64) * gt_sectors) * SECTOR as u64
            + (g % gtes as u64) * 4) as usize;
        match policy(g, &bytes) {
            Grain::Skip => {}
            Grain::Zero | Grain::Unmapped => {
                zero_flag = true;
                put_u32(&mut f, gte_at, 1);
            }
            Grain::Data => {
                let at = (f.len() / SECTOR) as u32;
                match compress {
                    None => f.extend_from_slice(&bytes),
                    Some(markers) => {
                        let mut z = flate2::write::ZlibEncoder::new(
                            Vec::new(),
                            flate2::Compression::default(),
                        );
                        z.write_all(&bytes).unwrap();
                        let data = z.finish().unwrap();
                        if markers {
                            let mut m = [0u8; 12];
                            put_u64(&mut m, 0, g * grain_sectors);
                            put_u32(&mut m, 8, data.len() as u32);
                            f.extend_from_slice(&m);
                        }
                        f.extend_from_slice(&data);
                        pad_to_sector(&mut f);
                    }
                }
                put_u32(&mut f, gte_at, at);
            }
        }
    }
    f[0..4].copy_from_slice(b"KDMV");
    put_u32(&mut f, 4, 1);
    let mut flags = 1 | if zero_flag { 4 } else { 0 };
    if let Some(markers) = compress {
        flags |= 1 << 16;
        if markers {
            flags |= 1 << 17;
        }
        put_u16(&mut f, 77, 1);
    }
    put_u32(&mut f, 8, flags);
    put_u64(&mut f, 12, capacity);
    put_u64(&mut f, 20, grain_sectors);
    put_u64(&mut f, 28, if desc.is_some() { 1 } else { 0 });
    put_u64(&mut f, 36, desc_sectors);
    put_u32(&mut f, 44, gtes);
    put_u64(&mut f, 56, gd_off);
    put_u64(&mut f, 64, overhead);
    f[73..77].copy_from_slice(b"\n \r\n");
    if let Some(d) = desc {
        f[SECTOR..SECTOR + d.len()].copy_from_slice(d.as_bytes());
    }
    f
}

/// Write `bytes` to `dir/name`.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}
