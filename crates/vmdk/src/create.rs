//! Creating new images of every subformat qemu-img can create, with the descriptor VMware
//! expects.

use std::path::Path;

use crate::error::{Error, Result};

/// The layout of a new image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Subformat {
    /// One sparse file with an embedded descriptor (qemu-img's default).
    #[default]
    MonolithicSparse,
    /// A descriptor plus one flat data file.
    MonolithicFlat,
    /// A descriptor plus sparse extents of at most 2 GiB each.
    TwoGbMaxExtentSparse,
    /// A descriptor plus flat extents of at most 2 GiB each.
    TwoGbMaxExtentFlat,
    /// One compressed, marker-carrying sparse file (VMware's layout, for vSphere import).
    StreamOptimized,
    /// ESX flat: a descriptor plus one flat file, `createType="vmfs"`.
    Vmfs,
}

impl Subformat {
    /// Parse a qemu-img `subformat=` value.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "monolithicSparse" => Subformat::MonolithicSparse,
            "monolithicFlat" => Subformat::MonolithicFlat,
            "twoGbMaxExtentSparse" => Subformat::TwoGbMaxExtentSparse,
            "twoGbMaxExtentFlat" => Subformat::TwoGbMaxExtentFlat,
            "streamOptimized" => Subformat::StreamOptimized,
            "vmfs" => Subformat::Vmfs,
            _ => return Err(Error::invalid(format!("unknown subformat: {s}"))),
        })
    }
    /// The `createType` written to the descriptor.
    pub fn create_type(self) -> &'static str {
        match self {
            Subformat::MonolithicSparse => "monolithicSparse",
            Subformat::MonolithicFlat => "monolithicFlat",
            Subformat::TwoGbMaxExtentSparse => "twoGbMaxExtentSparse",
            Subformat::TwoGbMaxExtentFlat => "twoGbMaxExtentFlat",
            Subformat::StreamOptimized => "streamOptimized",
            Subformat::Vmfs => "vmfs",
        }
    }
    /// Whether data lives in flat (preallocated-style) files.
    pub fn is_flat(self) -> bool {
        matches!(
            self,
            Subformat::MonolithicFlat | Subformat::TwoGbMaxExtentFlat | Subformat::Vmfs
        )
    }
}

/// The virtual disk controller recorded in `ddb.adapterType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdapterType {
    /// IDE (qemu-img's default).
    #[default]
    Ide,
    /// BusLogic SCSI.
    Buslogic,
    /// LSI Logic SCSI.
    Lsilogic,
    /// Legacy ESX.
    LegacyEsx,
}

impl AdapterType {
    /// Parse a qemu-img `adapter_type=` value.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "ide" => AdapterType::Ide,
            "buslogic" => AdapterType::Buslogic,
            "lsilogic" => AdapterType::Lsilogic,
            "legacyESX" => AdapterType::LegacyEsx,
            _ => return Err(Error::invalid(format!("unknown adapter type: '{s}'"))),
        })
    }
    /// The value written to `ddb.adapterType`.
    pub fn as_str(self) -> &'static str {
        match self {
            AdapterType::Ide => "ide",
            AdapterType::Buslogic => "buslogic",
            AdapterType::Lsilogic => "lsilogic",
            AdapterType::LegacyEsx => "legacyESX",
        }
    }
}

/// Options for [`create`], mirroring qemu-img's vmdk creation options.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Layout.
    pub subformat: Subformat,
    /// Controller type.
    pub adapter_type: AdapterType,
    /// `ddb.virtualHWVersion` (qemu default "4"; "6" with compat6).
    pub hwversion: Option<String>,
    /// `ddb.toolsVersion` (qemu default "2147483647").
    pub toolsversion: Option<String>,
    /// VMDK version 6 compatibility (hwversion 6).
    pub compat6: bool,
    /// Set the zeroed-grain flag so zero writes cost no space.
    pub zeroed_grain: bool,
    /// Backing file (as written into `parentFileNameHint`, relative to the new image).
    pub backing_file: Option<String>,
    /// Allow a backing file outside the new image's directory.
    pub allow_unsafe_paths: bool,
    /// zlib level for streamOptimized data written later (0-9; qemu's default is 6... as zlib's).
    pub compression_level: u32,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            subformat: Subformat::MonolithicSparse,
            adapter_type: AdapterType::Ide,
            hwversion: None,
            toolsversion: None,
            compat6: false,
            zeroed_grain: false,
            backing_file: None,
            allow_unsafe_paths: false,
            compression_level: 6,
        }
    }
}

/// Create a new, empty image of `size` bytes (rounded up to 512) at `path`.
pub fn create(path: &Path, size: u64, opts: &CreateOptions) -> Result<()> {
    let _ = (path, size, opts);
    Err(Error::unsupported("create: not implemented yet"))
}
