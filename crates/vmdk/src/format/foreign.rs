//! Recognising the disk-image formats that are *not* VMDK, so a qcow2 or VHD handed to us by
//! mistake is named and refused instead of being read as a raw disk (which "works" and
//! yields garbage: a 384 KiB qcow2 header converted as if it were the guest's disk).
//!
//! Each test looks for the magic its format's own implementation checks (QEMU's
//! `*_probe` functions and the formats' specifications). Most formats mark their first
//! bytes; VHD's fixed disks and Apple's DMG mark only their last 512 bytes, and ISO 9660 its
//! volume descriptor 32 KiB in.

/// A disk-image format other than VMDK and raw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForeignFormat {
    /// QEMU copy-on-write, version 1.
    Qcow,
    /// QEMU copy-on-write, versions 2 and 3.
    Qcow2,
    /// QEMU enhanced disk.
    Qed,
    /// VirtualBox disk image.
    Vdi,
    /// Microsoft Virtual PC / Hyper-V VHD (QEMU calls the driver `vpc`).
    Vpc,
    /// Hyper-V VHDX.
    Vhdx,
    /// Apple disk image (UDIF, the `koly` trailer).
    Dmg,
    /// A LUKS-encrypted volume.
    Luks,
    /// An ISO 9660 CD/DVD image.
    Iso9660,
    /// Parallels disk image.
    Parallels,
    /// Bochs growing disk image.
    Bochs,
    /// Compressed loop image (Knoppix `cloop`).
    Cloop,
}

impl ForeignFormat {
    /// The name qemu-img uses for the format (`file format:` in `qemu-img info`).
    pub fn name(self) -> &'static str {
        match self {
            ForeignFormat::Qcow => "qcow",
            ForeignFormat::Qcow2 => "qcow2",
            ForeignFormat::Qed => "qed",
            ForeignFormat::Vdi => "vdi",
            ForeignFormat::Vpc => "vpc",
            ForeignFormat::Vhdx => "vhdx",
            ForeignFormat::Dmg => "dmg",
            ForeignFormat::Luks => "luks",
            ForeignFormat::Iso9660 => "iso9660",
            ForeignFormat::Parallels => "parallels",
            ForeignFormat::Bochs => "bochs",
            ForeignFormat::Cloop => "cloop",
        }
    }

    /// How people call the format, for messages.
    pub fn description(self) -> &'static str {
        match self {
            ForeignFormat::Qcow => "qcow (version 1)",
            ForeignFormat::Qcow2 => "qcow2",
            ForeignFormat::Qed => "QED",
            ForeignFormat::Vdi => "VirtualBox VDI",
            ForeignFormat::Vpc => "VHD (Virtual PC)",
            ForeignFormat::Vhdx => "VHDX",
            ForeignFormat::Dmg => "Apple DMG",
            ForeignFormat::Luks => "LUKS-encrypted",
            ForeignFormat::Iso9660 => "ISO 9660 (CD/DVD)",
            ForeignFormat::Parallels => "Parallels",
            ForeignFormat::Bochs => "Bochs",
            ForeignFormat::Cloop => "cloop",
        }
    }
}

/// Bytes from the start of a file that [`probe_head`] needs to see every format it knows
/// (ISO 9660's identifier sits at 32769).
pub const HEAD_BYTES: usize = ISO_VD_OFFSET + 6;
/// Bytes from the end of a file that [`probe_tail`] looks at.
pub const TAIL_BYTES: usize = 512;

const ISO_VD_OFFSET: usize = 0x8000;

fn at(buf: &[u8], off: usize, magic: &[u8]) -> bool {
    buf.get(off..off + magic.len()) == Some(magic)
}

fn be32(buf: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_be_bytes(buf.get(off..off + 4)?.try_into().ok()?))
}

fn be64(buf: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_be_bytes(buf.get(off..off + 8)?.try_into().ok()?))
}

fn le64(buf: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(buf.get(off..off + 8)?.try_into().ok()?))
}

/// The format whose magic `head` (a file's first bytes, up to [`HEAD_BYTES`]) carries.
pub fn probe_head(head: &[u8]) -> Option<ForeignFormat> {
    probe_head_all(head).into_iter().next()
}

/// Every format whose magic `head` carries, in [`probe_head`]'s order of preference: more
/// than one means a polyglot, a file that different readers take for different things.
pub fn probe_head_all(head: &[u8]) -> Vec<ForeignFormat> {
    let mut found = Vec::new();
    if at(head, 0, b"QFI\xfb") {
        found.push(match be32(head, 4) {
            Some(1) => ForeignFormat::Qcow,
            _ => ForeignFormat::Qcow2,
        });
    }
    if at(head, 0, b"QED\0") {
        found.push(ForeignFormat::Qed);
    }
    // VDI: the signature after the 64-byte text banner.
    if at(head, 0x40, &0xbeda_107fu32.to_le_bytes()) {
        found.push(ForeignFormat::Vdi);
    }
    if at(head, 0, b"vhdxfile") {
        found.push(ForeignFormat::Vhdx);
    }
    // Dynamic VHDs start with a copy of their footer.
    if at(head, 0, b"conectix") {
        found.push(ForeignFormat::Vpc);
    }
    if at(head, 0, b"LUKS\xba\xbe") {
        found.push(ForeignFormat::Luks);
    }
    if at(head, 0, b"WithoutFreeSpace") || at(head, 0, b"WithouFreSpacExt") {
        found.push(ForeignFormat::Parallels);
    }
    if at(head, 0, b"Bochs Virtual HD Image\0") {
        found.push(ForeignFormat::Bochs);
    }
    if at(head, 0, b"#!/bin/sh\n")
        && head
            .windows(b"modprobe cloop".len())
            .take(256)
            .any(|w| w == b"modprobe cloop")
    {
        found.push(ForeignFormat::Cloop);
    }
    // ISO 9660: a volume descriptor (type byte, "CD001", version 1) in sector 16; UDF
    // discs carry "NSR02"/"NSR03" in the same place.
    if at(head, ISO_VD_OFFSET + 1, b"CD001")
        || at(head, ISO_VD_OFFSET + 1, b"NSR02")
        || at(head, ISO_VD_OFFSET + 1, b"NSR03")
    {
        found.push(ForeignFormat::Iso9660);
    }
    found
}

/// The format whose trailer `tail` (a file's last bytes, up to [`TAIL_BYTES`]) carries.
pub fn probe_tail(tail: &[u8]) -> Option<ForeignFormat> {
    let n = tail.len();
    if n < TAIL_BYTES - 1 {
        return None;
    }
    // A fixed VHD is raw data plus a 512-byte footer; Virtual PC once wrote 511.
    if (n >= 512 && at(tail, n - 512, b"conectix")) || at(tail, n - 511, b"conectix") {
        return Some(ForeignFormat::Vpc);
    }
    if n >= 512 && at(tail, n - 512, b"koly") {
        return Some(ForeignFormat::Dmg);
    }
    None
}

/// The virtual disk size the format's header or trailer records, where one fixed field
/// holds it (`info` shows it); `None` where finding it means parsing more of the format.
pub fn virtual_size(format: ForeignFormat, head: &[u8], tail: &[u8]) -> Option<u64> {
    match format {
        ForeignFormat::Qcow | ForeignFormat::Qcow2 => be64(head, 24),
        ForeignFormat::Qed => le64(head, 48),
        ForeignFormat::Vdi => le64(head, 0x170),
        ForeignFormat::Vpc => {
            let footer = if at(head, 0, b"conectix") {
                head
            } else {
                tail.get(tail.len().checked_sub(512)?..)?
            };
            vpc_size(footer)
        }
        ForeignFormat::Parallels => le64(head, 36)?.checked_mul(512),
        ForeignFormat::Iso9660 => {
            let blocks = u32::from_le_bytes(
                head.get(ISO_VD_OFFSET + 80..ISO_VD_OFFSET + 84)?
                    .try_into()
                    .ok()?,
            );
            let block = u16::from_le_bytes(
                head.get(ISO_VD_OFFSET + 128..ISO_VD_OFFSET + 130)?
                    .try_into()
                    .ok()?,
            );
            (blocks as u64).checked_mul(block as u64)
        }
        _ => None,
    }
}

/// The size QEMU gives a VHD: Virtual PC and old QEMU versions size disks by their CHS
/// geometry, everyone else (Hyper-V, disk2vhd, Xen, QEMU's `qem2`) by the footer's
/// `current_size`, which also wins when the geometry is at its maximum (it would truncate).
fn vpc_size(footer: &[u8]) -> Option<u64> {
    let current = be64(footer, 48)?;
    let creator = footer.get(28..32)?;
    let cyls = u16::from_be_bytes(footer.get(56..58)?.try_into().ok()?) as u64;
    let heads = *footer.get(58)? as u64;
    let secs = *footer.get(59)? as u64;
    let max_chs = cyls == 65535 && heads == 16 && secs == 255;
    if (creator == b"vpc " || creator == b"qemu") && !max_chs {
        Some(cyls * heads * secs * 512)
    } else {
        Some(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(off: usize, magic: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; HEAD_BYTES + 16];
        v[off..off + magic.len()].copy_from_slice(magic);
        v
    }

    #[test]
    fn heads() {
        let mut q = with(0, b"QFI\xfb\0\0\0\x03");
        q[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        assert_eq!(probe_head(&q), Some(ForeignFormat::Qcow2));
        assert_eq!(virtual_size(ForeignFormat::Qcow2, &q, &[]), Some(1 << 30));
        assert_eq!(
            probe_head(&with(0, b"QFI\xfb\0\0\0\x01")),
            Some(ForeignFormat::Qcow)
        );
        assert_eq!(probe_head(&with(0, b"QED\0")), Some(ForeignFormat::Qed));
        assert_eq!(
            probe_head(&with(0x40, &[0x7f, 0x10, 0xda, 0xbe])),
            Some(ForeignFormat::Vdi)
        );
        assert_eq!(probe_head(&with(0, b"vhdxfile")), Some(ForeignFormat::Vhdx));
        assert_eq!(
            probe_head(&with(0, b"LUKS\xba\xbe")),
            Some(ForeignFormat::Luks)
        );
        assert_eq!(
            probe_head(&with(0, b"WithouFreSpacExt")),
            Some(ForeignFormat::Parallels)
        );
        assert_eq!(
            probe_head(&with(0, b"Bochs Virtual HD Image\0")),
            Some(ForeignFormat::Bochs)
        );
        assert_eq!(
            probe_head(&with(0, b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0")),
            Some(ForeignFormat::Cloop)
        );
        assert_eq!(
            probe_head(&with(0x8000, b"\x01CD001\x01")),
            Some(ForeignFormat::Iso9660)
        );
        assert_eq!(probe_head(&[0u8; 100]), None);
        assert_eq!(probe_head(b"# Disk DescriptorFile"), None);
    }

    #[test]
    fn tails() {
        let mut t = vec![0u8; 512];
        t[..8].copy_from_slice(b"conectix");
        t[48..56].copy_from_slice(&(64u64 << 20).to_be_bytes());
        assert_eq!(probe_tail(&t), Some(ForeignFormat::Vpc));
        assert_eq!(
            virtual_size(ForeignFormat::Vpc, &[0; 512], &t),
            Some(64 << 20)
        );
        let mut d = vec![0u8; 512];
        d[..4].copy_from_slice(b"koly");
        assert_eq!(probe_tail(&d), Some(ForeignFormat::Dmg));
        assert_eq!(probe_tail(&[0u8; 512]), None);
        assert_eq!(probe_tail(b"conectix"), None);
    }
}
