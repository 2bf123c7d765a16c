//! Whole objects, for programs that manage many images (a fleet conversion): list the
//! objects under a prefix, look one up, read a byte range with one request, store a small
//! object (a marker). Images themselves are read and written through the namespace; these
//! go through the same stores, so they share its credentials and retry settings.

use std::path::Path;

use futures::TryStreamExt;
use object_store::{ObjectMeta, PutPayload};
use vmdk::{Error, ErrorKind, Result};

use crate::client::{error, runtime};
use crate::name::{scheme_of, ObjectName, Scheme};
use crate::namespace::ObjectNamespace;

/// One object as a listing or lookup shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its full name (`s3://bucket/key`).
    pub name: String,
    /// Its length in bytes.
    pub size: u64,
    /// Its ETag, where the store gives one.
    pub e_tag: Option<String>,
    /// When it was last written, in milliseconds since the Unix epoch.
    pub modified_ms: i64,
}

impl ObjectInfo {
    fn new(n: &ObjectName, meta: &ObjectMeta) -> Self {
        ObjectInfo {
            name: format!("{}{}/{}", n.scheme.prefix(), n.authority, meta.location),
            size: meta.size,
            e_tag: meta.e_tag.clone(),
            modified_ms: meta.last_modified.timestamp_millis(),
        }
    }
}

impl ObjectNamespace {
    /// Every object whose name starts with `prefix` (`s3://bucket/` for the whole bucket,
    /// `s3://bucket/dir/` for a folder, `s3://bucket/dir/a` for the names starting so), in
    /// name order. Only S3 can be listed.
    pub fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let shown = Path::new(prefix);
        let bad = |why: &str| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("cannot list objects: {why}"),
            )
            .with_path(shown)
        };
        if scheme_of(shown) != Some(Scheme::S3) {
            return Err(bad("only s3:// prefixes can be listed"));
        }
        let rest = &prefix[Scheme::S3.prefix().len()..];
        let (bucket, key_prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket"));
        }
        let n = ObjectName {
            scheme: Scheme::S3,
            authority: bucket.to_string(),
            key: String::new(),
        };
        let store = self.shared.stores.get(&n, &self.shared.config)?;
        // Listing works on whole path segments: list the folder the prefix ends in, and keep
        // the names that start with the prefix.
        let dir = key_prefix.rsplit_once('/').map_or("", |(d, _)| d);
        let dir = (!dir.is_empty())
            .then(|| object_store::path::Path::parse(dir))
            .transpose()
            .map_err(|e| bad(&e.to_string()))?;
        let metas: Vec<ObjectMeta> = runtime()
            .block_on(store.list(dir.as_ref()).try_collect())
            .map_err(|e| error(e, shown, "cannot list objects"))?;
        let mut out: Vec<ObjectInfo> = metas
            .iter()
            .filter(|m| m.location.as_ref().starts_with(key_prefix))
            .map(|m| ObjectInfo::new(&n, m))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The object `name`, or `None` when there is none.
    pub fn stat(&self, name: &Path) -> Result<Option<ObjectInfo>> {
        let n = ObjectName::parse(name)?;
        let store = self.shared.stores.get(&n, &self.shared.config)?;
        let loc = n.location(name)?;
        match runtime().block_on(store.head(&loc)) {
            Ok(meta) => Ok(Some(ObjectInfo::new(&n, &meta))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(error(e, name, "cannot look up")),
        }
    }

    /// Up to `len` bytes of `name` from `offset` (fewer where the object ends; `offset`
    /// must lie inside it), with one request: no block cache, no read-ahead (a probe of
    /// many objects' first bytes).
    pub fn read_range(&self, name: &Path, offset: u64, len: u64) -> Result<Vec<u8>> {
        let n = ObjectName::parse(name)?;
        let store = self.shared.stores.get(&n, &self.shared.config)?;
        let loc = n.location(name)?;
        let opts = object_store::GetOptions {
            range: Some(object_store::GetRange::Bounded(
                offset..offset.saturating_add(len),
            )),
            ..Default::default()
        };
        let r = runtime().block_on(async {
            match store.get_opts(&loc, opts).await {
                Ok(r) => r.bytes().await,
                Err(e) => Err(e),
            }
        });
        r.map(|b| b.to_vec())
            .map_err(|e| error(e, name, "cannot read"))
    }

    /// Store `data` as the object `name` (one request; for small objects such as markers).
    pub fn put(&self, name: &Path, data: Vec<u8>) -> Result<()> {
        let n = ObjectName::parse(name)?;
        if n.scheme != Scheme::S3 {
            return Err(Error::unsupported("HTTP URLs are read-only").with_path(name));
        }
        let store = self.shared.stores.get(&n, &self.shared.config)?;
        let loc = n.location(name)?;
        runtime()
            .block_on(store.put(&loc, PutPayload::from(data)))
            .map(|_| ())
            .map_err(|e| error(e, name, "cannot store"))
    }
}
