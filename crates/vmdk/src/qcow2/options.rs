//! qemu-img's `-o` creation options of the qcow2 driver (`cluster_size=64k,compat=1.1,...`),
//! with its names, values and messages, applied to [`Qcow2CreateOptions`]: the rules live
//! here so that every front end (the CLI's `convert -O qcow2`, the Python module) takes the
//! same words.

use crate::error::{Error, Result};
use crate::image::ImageFormat;
use crate::qcow2::layout::{Compat, Preallocation, Qcow2CreateOptions};
use crate::qemu_syntax::{parse_bool, parse_size};

/// What `-o help` prints for the qcow2 output format.
pub const QCOW2_OPTIONS_HELP: &str = "\
Creation options for 'qcow2':
  backing_file=<str>      - File name of a base image
  backing_fmt=<str>       - Image format of the base image (vmdk, qcow2 or raw; probed when absent)
  cluster_size=<size>     - qcow2 cluster size (512 to 2M, a power of two; default 64k)
  compat=<str>            - Compatibility level (v2 [0.10], v3 [1.1]; default 1.1)
  compression_type=<str>  - Compression method used for image cluster compression (zlib)
  extended_l2=<bool (on/off)> - Extended L2 tables (off only)
  lazy_refcounts=<bool (on/off)> - Postpone refcount updates
  preallocation=<str>     - Preallocation mode (allowed values: off, metadata)
  refcount_bits=<num>     - Width of a reference count entry in bits (16 only)
";

impl Qcow2CreateOptions {
    /// Apply one `-o key=value` option, as qemu-img's qcow2 driver takes it. Values this
    /// writer cannot produce (another compression type, refcount width or extended L2
    /// tables) are refused by name rather than ignored.
    pub fn set_option(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "cluster_size" => {
                self.cluster_size = parse_size(value)
                    .map_err(|_| Error::invalid(format!("Invalid cluster_size '{value}'")))?
            }
            "compat" => self.compat = Compat::parse(value)?,
            "lazy_refcounts" => self.lazy_refcounts = parse_bool(key, value)?,
            "preallocation" => {
                self.preallocation = match value {
                    "off" => Preallocation::Off,
                    "metadata" => Preallocation::Metadata,
                    _ => {
                        return Err(Error::invalid(format!(
                            "Invalid parameter value for 'preallocation': '{value}' \
                             (supported: off, metadata)"
                        )))
                    }
                }
            }
            "backing_file" => self.backing_file = Some(value.to_string()),
            "backing_fmt" => self.backing_format = Some(value.to_string()),
            "compression_type" if value == "zlib" => {}
            "refcount_bits" if value == "16" => {}
            "extended_l2" if !parse_bool(key, value)? => {}
            "compression_type" | "refcount_bits" | "extended_l2" => {
                return Err(Error::unsupported(format!(
                    "Unsupported value for '{key}': '{value}'"
                )))
            }
            _ => return Err(Error::invalid(format!("Invalid parameter '{key}'"))),
        }
        Ok(())
    }

    /// Apply `-o` options in order ([`set_option`](Self::set_option) each), then check that
    /// they agree with each other: a backing format qemu knows, and only with a backing file.
    pub fn apply_options(&mut self, opts: &[(String, String)]) -> Result<()> {
        for (k, v) in opts {
            self.set_option(k, v)?;
        }
        if let Some(f) = &self.backing_format {
            if f.parse::<ImageFormat>().is_err() {
                return Err(Error::invalid(format!(
                    "Unknown backing format '{f}' (expected vmdk, qcow2 or raw)"
                )));
            }
        }
        if self.backing_format.is_some() && self.backing_file.is_none() {
            return Err(Error::invalid(
                "a backing format (-F) needs a backing file (-B)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(opts: &[(&str, &str)]) -> Result<Qcow2CreateOptions> {
        let opts: Vec<(String, String)> = opts
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut q = Qcow2CreateOptions::default();
        q.apply_options(&opts)?;
        Ok(q)
    }

    #[test]
    fn takes_qemu_img_names_and_values() {
        let q = apply(&[
            ("cluster_size", "2M"),
            ("compat", "0.10"),
            ("lazy_refcounts", "on"),
            ("preallocation", "metadata"),
            ("refcount_bits", "16"),
            ("extended_l2", "off"),
        ])
        .unwrap();
        assert_eq!(q.cluster_size, 2 << 20);
        assert_eq!(q.compat, Compat::V2);
        assert!(q.lazy_refcounts);
        assert_eq!(q.preallocation, Preallocation::Metadata);
        for bad in [
            ("extended_l2", "on"),
            ("refcount_bits", "64"),
            ("compression_type", "zstd"),
            ("preallocation", "full"),
            ("bogus", "1"),
            ("lazy_refcounts", "maybe"),
        ] {
            assert!(apply(&[bad]).is_err(), "{bad:?}");
        }
        assert!(apply(&[("backing_fmt", "raw")]).is_err());
        assert!(apply(&[("backing_file", "b"), ("backing_fmt", "vhd")]).is_err());
        assert!(apply(&[("backing_file", "b"), ("backing_fmt", "raw")]).is_ok());
    }
}
