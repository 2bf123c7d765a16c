//! AWS shared config and credentials files (`~/.aws/config`, `~/.aws/credentials`, or
//! `AWS_CONFIG_FILE` / `AWS_SHARED_CREDENTIALS_FILE`), profile chosen by `AWS_PROFILE`,
//! read by [`crate::profile_file`]; a `credential_process` runs through the AWS SDK's own
//! provider. The SDK's whole profile provider is not used: built without an HTTP client
//! (object_store has its own), it cannot call STS or SSO, and it insists on one even for
//! static keys.
//! `object_store` reads only environment variables; this fills in what a profile says and
//! the environment does not, with the SDK's precedence (environment first).

use std::borrow::Cow;
use std::sync::Arc;

use aws_config::credential_process::CredentialProcessProvider;
use aws_credential_types::provider::ProvideCredentials;
use object_store::aws::AwsCredential;
use object_store::CredentialProvider;
use vmdk::{Error, ErrorKind, Result};

use crate::profile_file::{ProfileFiles, Properties};

/// What the selected profile adds to the environment's S3 settings.
#[derive(Debug, Default)]
pub struct ProfileSettings {
    /// The profile's name.
    pub name: String,
    /// `region`, when neither `AWS_REGION` nor `AWS_DEFAULT_REGION` is set.
    pub region: Option<String>,
    /// `endpoint_url`, when `AWS_ENDPOINT_URL` is not set.
    pub endpoint: Option<String>,
    /// The profile's credentials, when `AWS_ACCESS_KEY_ID` is not set and the profile
    /// says how to get some.
    pub credentials: Option<Arc<ProfileCredentials>>,
}

/// Ways of getting credentials that need an AWS service (STS, SSO) called over HTTP, which
/// this crate's `aws-config` (built without an HTTP client of its own) cannot do.
const SERVICE_KEYS: &[&str] = &[
    "role_arn",
    "sso_session",
    "sso_start_url",
    "web_identity_token_file",
];

fn set(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| !v.is_empty())
}

/// The selected profile's settings, or `None` when there is no profile to use (no
/// `AWS_PROFILE` and no `default` profile). A profile named by `AWS_PROFILE` that the
/// files do not hold, or files that do not parse, are errors.
pub async fn load() -> Result<Option<ProfileSettings>> {
    settings(&ProfileFiles::load()?)
}

fn settings(profiles: &ProfileFiles) -> Result<Option<ProfileSettings>> {
    let name = std::env::var("AWS_PROFILE")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "default".to_string());
    let Some(p) = profiles.get(&name) else {
        if set("AWS_PROFILE") {
            let known: Vec<&str> = profiles.names().collect();
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "AWS_PROFILE names the profile \"{name}\", which neither the AWS config \
                     file (AWS_CONFIG_FILE, default ~/.aws/config) nor the credentials file \
                     (AWS_SHARED_CREDENTIALS_FILE, default ~/.aws/credentials) holds \
                     (profiles there: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        return Ok(None);
    };
    let region = (!set("AWS_REGION") && !set("AWS_DEFAULT_REGION"))
        .then(|| p.get("region").cloned())
        .flatten();
    let endpoint = (!set("AWS_ENDPOINT_URL") && !set("AWS_ENDPOINT_URL_S3"))
        .then(|| p.get("endpoint_url").cloned())
        .flatten();
    let credentials = if set("AWS_ACCESS_KEY_ID") {
        None
    } else {
        credentials(&name, p)?
    };
    Ok(Some(ProfileSettings {
        name,
        region,
        endpoint,
        credentials,
    }))
}

/// The profile's credentials: its static keys, else its `credential_process`; a profile
/// that gets them from an AWS service is refused with what to do instead.
fn credentials(name: &str, p: &Properties) -> Result<Option<Arc<ProfileCredentials>>> {
    let bad = |why: String| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("AWS profile \"{name}\": {why}"),
        )
    };
    let source = if let Some(key) = p.get("aws_access_key_id") {
        let secret = p.get("aws_secret_access_key").ok_or_else(|| {
            bad("aws_access_key_id is set but aws_secret_access_key is not".into())
        })?;
        Source::Static(Arc::new(AwsCredential {
            key_id: key.to_string(),
            secret_key: secret.to_string(),
            token: p.get("aws_session_token").cloned(),
        }))
    } else if let Some(cmd) = p.get("credential_process") {
        Source::Process(CredentialProcessProvider::new(cmd.to_string()))
    } else if let Some(k) = SERVICE_KEYS.iter().find(|k| p.contains_key(**k)) {
        return Err(bad(format!(
            "its credentials come through {k}, which needs a call to AWS STS or SSO that \
             vmdk does not make; export the resulting credentials (for example with \
             `aws configure export-credentials --profile {name} --format env`) or use a \
             profile with keys or credential_process"
        )));
    } else {
        return Ok(None);
    };
    Ok(Some(Arc::new(ProfileCredentials {
        source,
        profile: name.to_string(),
    })))
}

#[derive(Debug)]
enum Source {
    Static(Arc<AwsCredential>),
    Process(CredentialProcessProvider),
}

/// A profile's credentials as `object_store`'s credential provider.
#[derive(Debug)]
pub struct ProfileCredentials {
    source: Source,
    profile: String,
}

#[async_trait::async_trait]
impl CredentialProvider for ProfileCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let process = match &self.source {
            Source::Static(c) => return Ok(c.clone()),
            Source::Process(p) => p,
        };
        let c = process.provide_credentials().await.map_err(|e| {
            let msg = format!(
                "cannot get credentials from the AWS profile \"{}\": {}",
                self.profile,
                aws_smithy_error(&e)
            );
            object_store::Error::Unauthenticated {
                path: String::new(),
                source: msg.into(),
            }
        })?;
        Ok(Arc::new(AwsCredential {
            key_id: c.access_key_id().to_string(),
            secret_key: c.secret_access_key().to_string(),
            token: c.session_token().map(str::to_string),
        }))
    }
}

/// An SDK error with its causes, which its `Display` leaves out.
fn aws_smithy_error(e: &dyn std::error::Error) -> Cow<'static, str> {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    Cow::Owned(s)
}
