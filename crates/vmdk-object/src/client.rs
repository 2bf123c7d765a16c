//! The async machinery behind the synchronous storage: one small tokio runtime, one
//! `ObjectStore` per bucket or host (configured from the standard environment), request
//! counters, and the translation of object-store errors into messages people can act on.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};
use object_store::http::HttpBuilder;
use object_store::multipart::MultipartStore;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use vmdk::{Error, ErrorKind, Result};

use crate::name::{ObjectName, Scheme};
use crate::Config;

/// The runtime every request runs on. Callers are plain threads (the convert workers, the
/// NBD server's), which `block_on` it; two worker threads drive the sockets and timers.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vmdk-object")
            .enable_all()
            .build()
            .expect("cannot start the object-store runtime")
    })
}

/// Counters over every request this process made to object storage.
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    bytes: AtomicU64,
    retries: AtomicU64,
}

static COUNTERS: Counters = Counters {
    requests: AtomicU64::new(0),
    bytes: AtomicU64::new(0),
    retries: AtomicU64::new(0),
};

/// What this process asked of object storage so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// HTTP requests sent (every attempt, retries included).
    pub requests: u64,
    /// Object bytes received by reads.
    pub bytes_fetched: u64,
    /// Attempts that failed in a way that is retried (a 5xx, 408 or 429 answer, a timeout,
    /// a refused or broken connection): each was retried, unless it was the last try.
    pub retries: u64,
}

/// The counters now.
pub fn stats() -> Stats {
    Stats {
        requests: COUNTERS.requests.load(Ordering::Relaxed),
        bytes_fetched: COUNTERS.bytes.load(Ordering::Relaxed),
        retries: COUNTERS.retries.load(Ordering::Relaxed),
    }
}

pub(crate) fn count_fetched(n: u64) {
    COUNTERS.bytes.fetch_add(n, Ordering::Relaxed);
}

/// An HTTP client that counts what passes through it; the retry loop sits above it, so it
/// sees every attempt.
#[derive(Debug)]
struct Counting(HttpClient);

#[async_trait::async_trait]
impl HttpService for Counting {
    async fn call(&self, req: HttpRequest) -> std::result::Result<HttpResponse, HttpError> {
        COUNTERS.requests.fetch_add(1, Ordering::Relaxed);
        let r = self.0.execute(req).await;
        let failed = match &r {
            Ok(resp) => {
                let s = resp.status().as_u16();
                s >= 500 || s == 408 || s == 429
            }
            Err(_) => true,
        };
        if failed {
            COUNTERS.retries.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

#[derive(Debug, Default)]
struct CountingConnector;

impl HttpConnector for CountingConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(Counting(
            ReqwestConnector::default().connect(options)?,
        )))
    }
}

/// A store, and the same store's part-by-index upload interface where it has one (S3).
#[derive(Clone)]
struct Built {
    store: Arc<dyn ObjectStore>,
    multipart: Option<Arc<dyn MultipartStore>>,
}

impl std::fmt::Debug for Built {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Built").field("store", &self.store).finish()
    }
}

/// One store per bucket (S3) or host (HTTP), made on first use and shared.
#[derive(Debug, Default)]
pub struct Stores {
    map: Mutex<HashMap<(Scheme, String), Built>>,
}

impl Stores {
    fn built(&self, name: &ObjectName, cfg: &Config) -> Result<Built> {
        let key = (name.scheme, name.authority.clone());
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get(&key) {
            return Ok(s.clone());
        }
        let b = build(name, cfg)?;
        map.insert(key, b.clone());
        Ok(b)
    }

    /// The store serving `name`.
    pub fn get(&self, name: &ObjectName, cfg: &Config) -> Result<Arc<dyn ObjectStore>> {
        Ok(self.built(name, cfg)?.store)
    }

    /// The store serving `name`, as uploads whose parts are numbered by the caller (S3
    /// only).
    pub fn multipart(
        &self,
        name: &ObjectName,
        cfg: &Config,
    ) -> Result<Option<Arc<dyn MultipartStore>>> {
        Ok(self.built(name, cfg)?.multipart)
    }
}

fn retry(cfg: &Config) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: cfg.max_retries,
        retry_timeout: cfg.retry_timeout,
    }
}

fn build(name: &ObjectName, cfg: &Config) -> Result<Built> {
    let options = ClientOptions::new()
        .with_timeout(cfg.request_timeout)
        .with_connect_timeout(Duration::from_secs(10));
    let store: Arc<dyn ObjectStore> = match name.scheme {
        Scheme::S3 => {
            let mut b = AmazonS3Builder::from_env().with_bucket_name(&name.authority);
            // What the environment leaves open, the shared config files' profile says.
            let profile = runtime()
                .block_on(crate::profile::load())
                .map_err(|e| e.with_path(name.to_path()))?;
            if let Some(p) = profile {
                tracing::debug!("S3 settings from the AWS profile \"{}\"", p.name);
                if let Some(r) = p.region {
                    b = b.with_region(r);
                }
                if let Some(e) = p.endpoint {
                    b = b.with_endpoint(e);
                }
                if let Some(c) = p.credentials {
                    b = b.with_credentials(c);
                }
            }
            if let Some(e) = &cfg.endpoint {
                b = b.with_endpoint(e);
            }
            // A local S3-compatible server is reached over plain HTTP: saying so in
            // AWS_ENDPOINT_URL is enough (AWS_ALLOW_HTTP still works too).
            let plain = b
                .get_config_value(&AmazonS3ConfigKey::Endpoint)
                .is_some_and(|e| e.starts_with("http://"));
            if b.get_config_value(&AmazonS3ConfigKey::Region).is_none() {
                if let Ok(r) = std::env::var("AWS_DEFAULT_REGION") {
                    b = b.with_region(r);
                }
            }
            let options = if plain {
                options.with_allow_http(true)
            } else {
                options
            };
            let s3 = Arc::new(
                b.with_client_options(options)
                    .with_retry(retry(cfg))
                    .with_http_connector(CountingConnector)
                    .build()
                    .map_err(|e| error(e, &name.to_path(), "cannot configure S3 access"))?,
            );
            return Ok(Built {
                store: s3.clone(),
                multipart: Some(s3),
            });
        }
        Scheme::Http | Scheme::Https => {
            let scheme = if name.scheme == Scheme::Http {
                "http"
            } else {
                "https"
            };
            Arc::new(
                HttpBuilder::new()
                    .with_url(format!("{scheme}://{}", name.authority))
                    .with_client_options(options.with_allow_http(true))
                    .with_retry(retry(cfg))
                    .with_http_connector(CountingConnector)
                    .build()
                    .map_err(|e| error(e, &name.to_path(), "cannot configure HTTP access"))?,
            )
        }
    };
    Ok(Built {
        store,
        multipart: None,
    })
}

/// An object-store error as the library's error, saying what to do where that is clear.
/// The message already carries what `object_store` said (its errors' text includes their
/// causes), so it is not attached again as the source: the chain says everything once.
pub fn error(e: object_store::Error, name: &Path, what: &str) -> Error {
    Error::new(ErrorKind::Io, message(&e, what)).with_path(name)
}

/// What went wrong, for people: `what` we were doing, then the cause.
fn message(e: &object_store::Error, what: &str) -> String {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => format!("{what}: no such object"),
        E::Precondition { .. } => format!(
            "{what}: the object changed since it was opened (its ETag or version no longer \
                 matches); refusing to mix data from two versions of it"
        ),
        E::PermissionDenied { source, .. } | E::Unauthenticated { source, .. } => format!(
            "{what}: access denied ({source}); check the credentials in the environment \
             (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) or in the profile \
             AWS_PROFILE selects (~/.aws/credentials, ~/.aws/config), and \
             AWS_ENDPOINT_URL / AWS_REGION"
        ),
        // No credentials in the environment: the last provider tried is the instance
        // metadata service, whose failure says nothing about the real problem.
        _ if e.to_string().contains("169.254.169.254") => format!(
            "{what}: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (no \
             instance metadata service answered either) ({e})"
        ),
        _ => format!("{what}: {e}"),
    }
}

/// [`error`] as an `io::Error` (for `Storage` and `Write`, whose callers add the name).
pub fn io_error(e: object_store::Error, what: &str) -> std::io::Error {
    let kind = match &e {
        object_store::Error::NotFound { .. } => std::io::ErrorKind::NotFound,
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => std::io::ErrorKind::PermissionDenied,
        _ => std::io::ErrorKind::Other,
    };
    std::io::Error::new(kind, message(&e, what))
}
