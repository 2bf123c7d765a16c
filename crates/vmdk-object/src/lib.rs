//! Images in object storage for the `vmdk` library: `s3://bucket/key` and
//! `http(s)://host/path` names wherever an image is opened, and stream outputs uploaded
//! to `s3://` as they are written.
//!
//! An [`ObjectBackend`] is a value: put it in a
//! [`RouterNamespace`](vmdk::storage::namespace::RouterNamespace) (beside the OVA backend, as the
//! `vmdk` command does) and pass that router to the library (`OpenOptions::in_namespace`,
//! the operations' options); every open, probe and convert through it then accepts object
//! names. The library keeps no registry of backends. Reads are ranged GETs of whole blocks, several in flight, cached
//! (LRU, bounded) and read ahead when access runs forwards; each object is pinned to the
//! ETag it had when opened. Extent and backing names inside a remote descriptor resolve
//! against it and must stay in its bucket and prefix. Stream outputs (streamOptimized VMDK,
//! raw) become multipart uploads; random-access outputs are refused.
//!
//! Access comes from the standard environment and config files and nothing else:
//! `AWS_ENDPOINT_URL`, `AWS_REGION` (or `AWS_DEFAULT_REGION`), `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, and the rest `object_store`'s
//! `AmazonS3Builder::from_env` reads; then the profile `AWS_PROFILE` selects (else
//! `default`) in `~/.aws/config` and `~/.aws/credentials` (or `AWS_CONFIG_FILE`,
//! `AWS_SHARED_CREDENTIALS_FILE`) for its `region`, `endpoint_url` and credentials, read
//! by the AWS SDK's `aws-config`, the environment winning where both say something.
//! An async runtime of two threads runs underneath; the storage it hands out is
//! synchronous and thread-safe.

mod append_upload;
mod client;
mod files;
pub mod name;
mod namespace;
mod profile;
mod profile_file;
mod reader;
mod upload;

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use vmdk::storage::namespace::{Backend, Namespace, OpenMode};
use vmdk::Result;
use vmdk::Storage;

pub use append_upload::AppendUpload;
pub use client::{stats, Stats};
pub use files::ObjectInfo;
pub use namespace::ObjectNamespace;
pub use reader::ObjectStorage;
pub use upload::UploadSink;

/// Tuning for reads and uploads. [`Config::from_env`] reads overrides from `VMDK_OBJECT_*`
/// variables.
#[derive(Debug, Clone)]
pub struct Config {
    /// Requests in flight at once per open object (`VMDK_OBJECT_REQUESTS`, default 64: at
    /// a cloud's latency, a scan needs that many to keep bytes coming while each request
    /// waits its round trip; few are used unless the read-ahead window grows).
    pub max_requests: usize,
    /// Bytes per ranged GET and cache block (`VMDK_OBJECT_BLOCK_KIB`, default 2 MiB).
    pub block_size: usize,
    /// Bytes of blocks kept per open object (`VMDK_OBJECT_CACHE_MIB`, default 256 MiB; at
    /// least twice the largest read-ahead window, so read-ahead is not evicted unread).
    pub cache_bytes: usize,
    /// Blocks read ahead of a forward-running reader at first (default 16).
    pub read_ahead_blocks: usize,
    /// The most the read-ahead window grows to (`VMDK_OBJECT_READ_AHEAD_MAX`, default 64
    /// blocks): it doubles each time a forward-running reader has to wait for a block, so a
    /// sequential scan over a slow link keeps more requests in flight.
    pub read_ahead_max_blocks: usize,
    /// Bytes per uploaded part (at least 5 MiB; default 8 MiB, doubling every 1000 parts).
    pub part_size: usize,
    /// Parts uploading at once (default 8).
    pub upload_parallelism: usize,
    /// Retries of a failed request (`VMDK_OBJECT_RETRIES`, default 10).
    pub max_retries: usize,
    /// No retry starts later than this after the first try
    /// (`VMDK_OBJECT_RETRY_TIMEOUT_SECS`, default 120).
    pub retry_timeout: Duration,
    /// One request's time limit (default 120 s).
    pub request_timeout: Duration,
    /// The S3 endpoint, instead of `AWS_ENDPOINT_URL` (for programs that talk to several).
    pub endpoint: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_requests: 64,
            block_size: 2 << 20,
            cache_bytes: 256 << 20,
            read_ahead_blocks: 16,
            read_ahead_max_blocks: 64,
            part_size: 8 << 20,
            upload_parallelism: 8,
            max_retries: 10,
            retry_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(120),
            endpoint: None,
        }
    }
}

impl Config {
    /// The defaults, with `VMDK_OBJECT_*` overrides.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        let mut c = Config::default();
        if let Some(v) = var("VMDK_OBJECT_REQUESTS") {
            c.max_requests = v.clamp(1, 1024) as usize;
        }
        if let Some(v) = var("VMDK_OBJECT_BLOCK_KIB") {
            c.block_size = (v.clamp(4, 64 << 10) << 10) as usize;
        }
        if let Some(v) = var("VMDK_OBJECT_CACHE_MIB") {
            c.cache_bytes = (v.clamp(1, 64 << 10) << 20) as usize;
        }
        if let Some(v) = var("VMDK_OBJECT_READ_AHEAD_MAX") {
            c.read_ahead_max_blocks = v.clamp(1, 4096) as usize;
        }
        if let Some(v) = var("VMDK_OBJECT_RETRIES") {
            c.max_retries = v.min(100) as usize;
        }
        if let Some(v) = var("VMDK_OBJECT_RETRY_TIMEOUT_SECS") {
            c.retry_timeout = Duration::from_secs(v);
        }
        c
    }
}

#[derive(Debug, Default)]
pub(crate) struct Shared {
    config: Config,
    stores: client::Stores,
    /// Objects this process has seen exist (see [`ObjectNamespace`]'s `identity`).
    seen: namespace::SeenObjects,
}

/// Claims `s3://`, `http://` and `https://` names for the [`ObjectNamespace`].
#[derive(Debug, Clone)]
pub struct ObjectBackend {
    ns: Arc<ObjectNamespace>,
}

impl ObjectBackend {
    /// A backend with `config`.
    pub fn new(config: Config) -> Self {
        ObjectBackend {
            ns: Arc::new(ObjectNamespace {
                shared: Arc::new(Shared {
                    config,
                    stores: Default::default(),
                    seen: Default::default(),
                }),
            }),
        }
    }
}

impl ObjectBackend {
    /// The namespace this backend serves names from (and lists, looks up and stores whole
    /// objects with: [`ObjectNamespace::list`], ...).
    pub fn namespace(&self) -> &Arc<ObjectNamespace> {
        &self.ns
    }

    /// The OVA archive `name` runs through, as the host's OVA backend finds one among host
    /// files: the shortest prefix of `name` whose last part is named `*.ova` and that is an
    /// existing object. Names without such a part cost nothing (no request).
    fn archive_of(&self, name: &Path) -> Result<Option<std::path::PathBuf>> {
        let Some(s) = name.to_str() else {
            return Ok(None);
        };
        let Some((scheme, rest)) = s.split_once("://") else {
            return Ok(None);
        };
        let mut end = scheme.len() + 3;
        for (i, part) in rest.split('/').enumerate() {
            end += part.len() + usize::from(i > 0);
            if i > 0 && vmdk::ova::is_ova_name(part) {
                let prefix = Path::new(&s[..end]);
                if self.ns.identity(prefix)?.is_some() {
                    return Ok(Some(prefix.to_path_buf()));
                }
            }
        }
        Ok(None)
    }
}

impl Backend for ObjectBackend {
    fn namespace_for(&self, name: &Path) -> Result<Option<Arc<dyn Namespace>>> {
        if name::scheme_of(name).is_none() {
            return Ok(None);
        }
        // Inside a remote OVA: its members are byte ranges of the object.
        if let Some(archive) = self.archive_of(name)? {
            let outer = self.ns.clone() as Arc<dyn Namespace>;
            return Ok(Some(Arc::new(vmdk::ova::OvaNamespace::within(
                archive, outer,
            ))));
        }
        Ok(Some(self.ns.clone() as Arc<dyn Namespace>))
    }

    /// An OVA object's own name opens the object (the archive), not its first disk.
    fn open_file(&self, name: &Path, mode: OpenMode) -> Result<Option<Arc<dyn Storage>>> {
        if name::scheme_of(name).is_none() {
            return Ok(None);
        }
        let ns: Arc<dyn Namespace> = match self.archive_of(name)? {
            Some(archive) if archive.as_path() != name => Arc::new(
                vmdk::ova::OvaNamespace::within(archive, self.ns.clone() as Arc<dyn Namespace>),
            ),
            _ => self.ns.clone(),
        };
        ns.open(name, mode).map(Some)
    }
}

/// An [`ObjectBackend`] configured by [`Config::from_env`], for a router.
pub fn backend_from_env() -> Arc<dyn Backend> {
    Arc::new(ObjectBackend::new(Config::from_env()))
}

/// The process's [`ObjectBackend`], configured by [`Config::from_env`] when first asked
/// for, for programs that want one client per process: a router built with
/// `Arc::new(shared().clone())` and whole-object calls (`shared().namespace().list(..)`)
/// then share its stores (credentials, endpoint, connections).
pub fn shared() -> &'static ObjectBackend {
    static BACKEND: OnceLock<ObjectBackend> = OnceLock::new();
    BACKEND.get_or_init(|| ObjectBackend::new(Config::from_env()))
}

/// A one-line summary of the requests made so far ("object storage: N requests, M bytes
/// fetched, R retries"), or `None` when none were made.
pub fn summary() -> Option<String> {
    let s = stats();
    (s.requests > 0).then(|| {
        format!(
            "object storage: {} requests, {} bytes fetched ({:.1} MiB), {} retried failures",
            s.requests,
            s.bytes_fetched,
            s.bytes_fetched as f64 / (1 << 20) as f64,
            s.retries
        )
    })
}
