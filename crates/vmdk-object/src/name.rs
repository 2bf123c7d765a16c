//! Object names (`s3://bucket/key`, `http(s)://host/path`) as strings, and the lexical
//! resolution of a name written inside a remote descriptor.
//!
//! These are handled as text, never through `Path::components`, which would fold the `//`
//! after the scheme and make `s3://b/k` into `s3:/b/k`.

use std::path::{Path, PathBuf};

use vmdk::storage::paths::PathPolicy;
use vmdk::{Error, ErrorKind, Result};

/// Which service a name is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Amazon S3 or a compatible server (endpoint from the environment).
    S3,
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    pub(crate) fn prefix(self) -> &'static str {
        match self {
            Scheme::S3 => "s3://",
            Scheme::Http => "http://",
            Scheme::Https => "https://",
        }
    }
}

/// A parsed object name: the service, the bucket (S3) or `host[:port]` (HTTP), and the key
/// (the path after the authority, without its leading `/`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectName {
    /// The service.
    pub scheme: Scheme,
    /// Bucket or `host[:port]`.
    pub authority: String,
    /// Key inside the bucket, or the URL path without its first `/`.
    pub key: String,
}

impl ObjectName {
    /// The object's key as `object_store` takes it; a key it refuses is an error naming
    /// `name`, the name the caller gave.
    pub fn location(&self, name: &Path) -> Result<object_store::path::Path> {
        object_store::path::Path::parse(&self.key).map_err(|e| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("invalid object key \"{}\": {e}", self.key),
            )
            .with_path(name)
        })
    }
}

/// The scheme of `name` if it is an object name (cheap: a prefix test).
pub fn scheme_of(name: &Path) -> Option<Scheme> {
    let s = name.to_str()?;
    [Scheme::S3, Scheme::Http, Scheme::Https]
        .into_iter()
        .find(|sc| {
            s.len() > sc.prefix().len() && s[..sc.prefix().len()].eq_ignore_ascii_case(sc.prefix())
        })
}

impl ObjectName {
    /// Parse `name`; an error names what is wrong with it.
    pub fn parse(name: &Path) -> Result<ObjectName> {
        let bad = |why: &str| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("invalid object name: {why}"),
            )
            .with_path(name)
        };
        let scheme = scheme_of(name).ok_or_else(|| bad("expected s3://, http:// or https://"))?;
        let s = name.to_str().ok_or_else(|| bad("not UTF-8"))?;
        let rest = &s[scheme.prefix().len()..];
        let (authority, key) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() {
            return Err(bad(match scheme {
                Scheme::S3 => "no bucket",
                _ => "no host",
            }));
        }
        if key.is_empty() || key.ends_with('/') {
            return Err(bad("no object key (the name ends at a directory)"));
        }
        if key.contains('?') || key.contains('#') {
            return Err(bad("query strings and fragments are not supported"));
        }
        Ok(ObjectName {
            scheme,
            authority: authority.to_string(),
            key: key.to_string(),
        })
    }

    /// The name as a path (as it displays).
    pub fn to_path(&self) -> PathBuf {
        PathBuf::from(self.to_string())
    }

    /// Everything up to and including the last `/` of the name: the "directory" names
    /// inside this object are relative to.
    fn directory(&self) -> String {
        let s = self.to_string();
        let cut = s
            .rfind('/')
            .expect("a name holds the / after its authority");
        s[..=cut].to_string()
    }
}

impl std::fmt::Display for ObjectName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}/{}", self.scheme.prefix(), self.authority, self.key)
    }
}

/// `key` with `.` segments dropped and `..` applied; `None` when a `..` climbs above the
/// bucket (or host) root.
fn normalize_key(key: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for seg in key.split('/') {
        match seg {
            "." => {}
            ".." => {
                out.pop()?;
            }
            s => out.push(s),
        }
    }
    Some(out.join("/"))
}

/// The object `name`, written inside the object `referrer`, stands for: relative names
/// against the referrer's directory, `/`-absolute ones against its bucket (or host) root,
/// full object names as they are. The result must lie inside the referrer's directory (the
/// same bucket and prefix), or under an allowed directory given as an object name prefix;
/// anything else is refused as [`ErrorKind::UnsafePath`]. Host paths are never reached from
/// a remote descriptor.
pub fn resolve(referrer: &Path, name: &str, what: &str, policy: &PathPolicy) -> Result<PathBuf> {
    if name.is_empty() {
        return Err(Error::corrupt(format!("empty {what} name")).with_path(referrer));
    }
    if name.contains('\0') {
        return Err(Error::corrupt(format!("{what} name contains a NUL byte")).with_path(referrer));
    }
    let base = ObjectName::parse(referrer)?;
    let joined = if scheme_of(Path::new(name)).is_some() {
        name.to_string()
    } else if let Some(abs) = name.strip_prefix('/') {
        format!("{}{}/{abs}", base.scheme.prefix(), base.authority)
    } else {
        format!("{}{name}", base.directory())
    };
    let refuse = |shown: &str| {
        Error::new(
            ErrorKind::UnsafePath,
            format!(
                "{what} \"{name}\" (it resolves to {shown}) lies outside the image's directory \
                 {}; refusing to open it",
                base.directory()
            ),
        )
        .with_path(referrer)
    };
    let mut cand = ObjectName::parse(Path::new(&joined)).map_err(|_| refuse(&joined))?;
    cand.key = normalize_key(&cand.key).ok_or_else(|| refuse(&joined))?;
    if cand.key.is_empty() {
        return Err(refuse(&joined));
    }
    let shown = cand.to_string();
    let inside = |dir: &str| {
        let dir = if dir.ends_with('/') {
            dir.to_string()
        } else {
            format!("{dir}/")
        };
        shown.starts_with(&dir)
    };
    let allowed = policy
        .allowed_dirs
        .iter()
        .filter_map(|d| d.to_str())
        .any(|d| scheme_of(Path::new(d)).is_some() && inside(d));
    if policy.allow_unsafe || inside(&base.directory()) || allowed {
        return Ok(cand.to_path());
    }
    Err(refuse(&shown))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(referrer: &str, name: &str) -> Result<String> {
        resolve(
            Path::new(referrer),
            name,
            "extent file",
            &PathPolicy::default(),
        )
        .map(|p| p.to_str().unwrap().to_string())
    }

    #[test]
    fn parses_names() {
        let n = ObjectName::parse(Path::new("s3://bkt/dir/a.vmdk")).unwrap();
        assert_eq!(
            (n.scheme, &*n.authority, &*n.key),
            (Scheme::S3, "bkt", "dir/a.vmdk")
        );
        assert_eq!(n.to_string(), "s3://bkt/dir/a.vmdk");
        let n = ObjectName::parse(Path::new("http://127.0.0.1:8080/x.vmdk")).unwrap();
        assert_eq!((n.scheme, &*n.authority), (Scheme::Http, "127.0.0.1:8080"));
        assert!(ObjectName::parse(Path::new("s3://bkt")).is_err());
        assert!(ObjectName::parse(Path::new("s3://bkt/dir/")).is_err());
        assert!(ObjectName::parse(Path::new("s3:///k")).is_err());
        assert!(scheme_of(Path::new("/tmp/s3://x")).is_none());
        assert!(scheme_of(Path::new("s3:/b/k")).is_none());
    }

    #[test]
    fn resolves_inside_the_same_bucket_and_prefix() {
        for (from, name, want) in [
            ("s3://b/d/a.vmdk", "a-flat.vmdk", "s3://b/d/a-flat.vmdk"),
            ("s3://b/d/a.vmdk", "./s/../x.vmdk", "s3://b/d/x.vmdk"),
            ("s3://b/d/a.vmdk", "/d/y.vmdk", "s3://b/d/y.vmdk"),
            ("s3://b/d/a.vmdk", "s3://b/d/e/z.vmdk", "s3://b/d/e/z.vmdk"),
            ("https://h/d/a.vmdk", "b.vmdk", "https://h/d/b.vmdk"),
        ] {
            assert_eq!(r(from, name).unwrap(), want, "{name} from {from}");
        }
        for bad in [
            "../other-bucket/x",
            "../../other-bucket/x",
            "../x",
            "/x",
            "s3://other/d/x",
            "http://h/d/x",
            "e/../../x",
        ] {
            let e = r("s3://b/d/a.vmdk", bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::UnsafePath, "{bad}: {e}");
        }
        let e = r("s3://b/a.vmdk", "../other-bucket/x").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnsafePath);
        let allow = PathPolicy {
            allowed_dirs: vec!["s3://b/base".into()],
            ..Default::default()
        };
        let p = resolve(Path::new("s3://b/d/a.vmdk"), "../base/p.vmdk", "x", &allow).unwrap();
        assert_eq!(p, Path::new("s3://b/base/p.vmdk"));
        assert!(resolve(Path::new("s3://b/d/a.vmdk"), "../basement/p", "x", &allow).is_err());
    }
}
