//! The AWS shared config and credentials files, parsed as the AWS SDKs' shared-config
//! specification reads them: INI-like sections (`[default]` and `[profile NAME]` in the
//! config file, `[NAME]` in the credentials file), `key = value` properties, comment lines
//! starting with `#` or `;`, indented lines continuing the property above (nested
//! sub-properties, which nothing here reads), other section kinds (`[sso-session ...]`,
//! `[services ...]`) skipped. The credentials file's properties win over the config
//! file's for the same profile.
//!
//! Ours rather than the SDK's: `aws-config` reads these files only through types it
//! declares internal (`os_shim_internal`), and the few properties used here (region,
//! endpoint, keys, `credential_process`) need no more than this.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use vmdk::{Error, ErrorKind, Result};

/// A line of a profile file that does not parse: its number and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {0}: {1}")]
pub struct LineError(pub usize, pub &'static str);

/// One profile's properties, keys in lower case.
pub type Properties = BTreeMap<String, String>;

/// Every profile the two files hold, by name.
#[derive(Debug, Default)]
pub struct ProfileFiles {
    profiles: BTreeMap<String, Properties>,
}

/// Where a file is: the variable's path (with `~/` meaning the home directory), else
/// `~/.aws/NAME`.
fn location(var: &str, default: &str) -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty());
    match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(p) => {
            let p = PathBuf::from(p);
            match (p.strip_prefix("~"), &home) {
                (Ok(rest), Some(h)) => Some(Path::new(h).join(rest)),
                _ => Some(p),
            }
        }
        None => home.map(|h| Path::new(&h).join(".aws").join(default)),
    }
}

impl ProfileFiles {
    /// Read the config file (`AWS_CONFIG_FILE`, default `~/.aws/config`) and the
    /// credentials file (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`). A
    /// file that does not exist holds no profile; one that cannot be read or parsed is an
    /// error naming it.
    pub fn load() -> Result<ProfileFiles> {
        let mut files = ProfileFiles::default();
        for (var, default, is_config) in [
            ("AWS_CONFIG_FILE", "config", true),
            ("AWS_SHARED_CREDENTIALS_FILE", "credentials", false),
        ] {
            let Some(path) = location(var, default) else {
                continue;
            };
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(Error::io(e, "cannot read the AWS profile file").with_path(&path))
                }
            };
            files.parse_into(&text, is_config).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidArgument,
                    format!("not an AWS profile file: {e}"),
                )
                .with_path(&path)
            })?;
        }
        Ok(files)
    }

    /// Add the profiles of one file's `text` (the config file when `is_config`); what is
    /// wrong with a line that does not parse, naming the line.
    pub fn parse_into(
        &mut self,
        text: &str,
        is_config: bool,
    ) -> std::result::Result<(), LineError> {
        // The profile the lines below belong to; `None` inside a section that is no
        // profile (skipped), and before the first section.
        let mut current: Option<String> = None;
        let mut in_section = false;
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim_end();
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
                continue;
            }
            if let Some(rest) = trimmed.strip_prefix('[') {
                let end = rest
                    .find(']')
                    .ok_or_else(|| LineError(n + 1, "a section header without ']'"))?;
                let after = rest[end + 1..].trim();
                if !(after.is_empty() || after.starts_with('#') || after.starts_with(';')) {
                    return Err(LineError(n + 1, "text after a section header"));
                }
                let header: Vec<&str> = rest[..end].split_whitespace().collect();
                in_section = true;
                current = match (is_config, header.as_slice()) {
                    (_, ["default"]) => Some("default".to_string()),
                    (true, ["profile", name]) => Some(name.to_string()),
                    (false, [name]) => Some(name.to_string()),
                    _ => None,
                };
                if let Some(name) = &current {
                    self.profiles.entry(name.clone()).or_default();
                }
                continue;
            }
            if line.starts_with([' ', '\t']) {
                // A continuation of the property above (a nested sub-property).
                continue;
            }
            let (key, value) = trimmed
                .split_once('=')
                .ok_or_else(|| LineError(n + 1, "expected 'key = value'"))?;
            if !in_section {
                return Err(LineError(n + 1, "a property outside any section"));
            }
            let key = key.trim().to_ascii_lowercase();
            if key.is_empty() {
                return Err(LineError(n + 1, "a property without a name"));
            }
            if let Some(name) = &current {
                let profile = self.profiles.entry(name.clone()).or_default();
                // The credentials file is read second: its values replace the config's.
                profile.insert(key, value.trim().to_string());
            }
        }
        Ok(())
    }

    /// The profile `name`, if a file holds it.
    pub fn get(&self, name: &str) -> Option<&Properties> {
        self.profiles.get(name)
    }

    /// The names of every profile the files hold.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.profiles.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sections_and_properties_as_the_sdks_do() {
        let mut f = ProfileFiles::default();
        f.parse_into(
            "# comment\n[default]\nregion = us-east-1\n\n[profile vm] ; note\nRegion=eu-west-1\n\
             s3 =\n  endpoint_url = ignored\nendpoint_url = http://x\n[sso-session s]\nsso_region = a\n\
             [notaprofile]\nregion = zz\n",
            true,
        )
        .unwrap();
        f.parse_into(
            "[vm]\naws_access_key_id = k\naws_secret_access_key = s = t\n[default]\nregion = us-west-2\n",
            false,
        )
        .unwrap();
        let vm = f.get("vm").unwrap();
        assert_eq!(vm["region"], "eu-west-1");
        assert_eq!(vm["endpoint_url"], "http://x");
        assert_eq!(vm["s3"], "");
        assert_eq!(vm["aws_access_key_id"], "k");
        assert_eq!(vm["aws_secret_access_key"], "s = t");
        // The credentials file wins.
        assert_eq!(f.get("default").unwrap()["region"], "us-west-2");
        assert!(f.get("notaprofile").is_none());
        assert!(f.get("s").is_none());
        assert_eq!(f.names().collect::<Vec<_>>(), ["default", "vm"]);
        for bad in [
            "region = x\n",
            "[default\n",
            "[default]\nnoequals\n",
            "[default] x\n",
        ] {
            assert!(
                ProfileFiles::default().parse_into(bad, true).is_err(),
                "{bad:?}"
            );
        }
    }
}
