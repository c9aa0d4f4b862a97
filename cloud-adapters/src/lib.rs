//! Skiff's cloud adapters.
//!
//! * [`CloudProvider`]: what the gateway's autoscaler needs from a cloud:
//!   instance types with shape and price, launch, describe, terminate.
//!   Errors are classified ([`CloudError`]) so callers know what to retry
//!   ([`with_retry`]: exponential back-off honouring `Retry-After`) and
//!   when to fall back to another type or site (quota, capacity).
//! * [`fake::FakeCloud`]: an in-memory provider with injectable failures,
//!   for tests of everything above the adapters.
//! * [`terminate_owned`]: the one way to terminate: only instances tagged
//!   with the gateway's own cluster id are ever terminated.
//! * [`bootstrap`]: the cloud-init user data that installs and joins the
//!   agent (the template is shared with the Terraform modules).
//!
//! * [`aws::AwsCloud`]: EC2 through aws-sdk-ec2 (tested against moto).
//! * [`azure::AzureCloud`]: the ARM REST API over reqwest (tested against
//!   a fake ARM server shaped by Azure's published examples).
//! * [`local::LocalCloud`]: "VMs" as network namespaces on this host,
//!   booted from the same user data.

pub mod aws;
pub mod azure;
pub mod bootstrap;
pub mod fake;
pub mod local;

use std::collections::BTreeMap;
use std::time::Duration;

/// Tag naming the cluster (the gateway) that launched an instance.
pub const TAG_CLUSTER: &str = "skiff:cluster";
/// Tag naming the site.
pub const TAG_SITE: &str = "skiff:site";
/// Tag naming the node the instance becomes.
pub const TAG_NODE: &str = "skiff:node";

/// A shape a site can launch, with its price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceType {
    pub name: String,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// Millionths of a currency unit per hour.
    pub price_micros_per_hour: u64,
    pub arch: String,
}

/// A secret string (user data carrying a join token): never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<redacted, {} bytes>", self.0.len())
    }
}

/// What to launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchRequest {
    pub site: String,
    pub instance_type: String,
    pub count: u32,
    /// cloud-init user data (it holds a join token).
    pub user_data: Secret,
    /// Must hold [`TAG_CLUSTER`] and [`TAG_SITE`].
    pub tags: BTreeMap<String, String>,
    /// Spot (or Azure's spot priority) rather than on-demand.
    pub spot: bool,
}

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    Pending,
    Running,
    Stopping,
    Terminated,
}

/// An instance as the cloud describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub site: String,
    pub instance_type: String,
    pub state: InstanceState,
    pub tags: BTreeMap<String, String>,
}

/// What went wrong, classified for the caller's decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloudError {
    /// The account's limit: try another type or site.
    #[error("quota exceeded: {0}")]
    Quota(String),
    /// The cloud has no such capacity now: try another type or site.
    #[error("insufficient capacity: {0}")]
    Capacity(String),
    /// Too many requests: retry after a while.
    #[error("throttled: {message}")]
    Throttled {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Credentials missing or refused: no retry helps.
    #[error("not authorized: {0}")]
    Auth(String),
    /// The request is wrong (unknown type, bad image): no retry helps.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Anything else (network, 5xx): retry.
    #[error("{0}")]
    Other(String),
}

impl CloudError {
    /// Whether the same call may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CloudError::Throttled { .. } | CloudError::Other(_))
    }

    /// The class, in a word or two (for events).
    pub fn class(&self) -> &'static str {
        match self {
            CloudError::Quota(_) => "quota",
            CloudError::Capacity(_) => "insufficient capacity",
            CloudError::Throttled { .. } => "throttled",
            CloudError::Auth(_) => "not authorized",
            CloudError::Invalid(_) => "invalid request",
            CloudError::Other(_) => "cloud error",
        }
    }

    /// Whether another instance type or site may succeed.
    pub fn wants_fallback(&self) -> bool {
        matches!(self, CloudError::Quota(_) | CloudError::Capacity(_))
    }
}

/// A cloud the gateway can launch nodes in.
#[async_trait::async_trait]
pub trait CloudProvider: Send + Sync + std::fmt::Debug {
    /// Instance types the site may launch, with shape and price.
    async fn instance_types(&self) -> Result<Vec<InstanceType>, CloudError>;
    /// Launches `count` instances; returns them (pending).
    async fn launch(&self, req: &LaunchRequest) -> Result<Vec<Instance>, CloudError>;
    /// Instances carrying `tag = value` (not yet terminated ones, and
    /// terminated ones the cloud still lists).
    async fn describe(&self, tag: &str, value: &str) -> Result<Vec<Instance>, CloudError>;
    /// Terminates the instances (callers use [`terminate_owned`]).
    async fn terminate(&self, ids: &[String]) -> Result<(), CloudError>;
    /// Deletes what `cluster`'s launches left half-made, resources that
    /// belong to no instance (Azure: a NIC made for a VM that never was,
    /// when a gateway stopped between the two); returns their ids. Called
    /// with no launch of the cluster in flight. Nothing, where a launch is
    /// one call.
    async fn sweep(&self, _cluster: &str) -> Result<Vec<String>, CloudError> {
        Ok(Vec::new())
    }
}

/// How [`with_retry`] backs off.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    pub attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            first: Duration::from_millis(200),
            max: Duration::from_secs(20),
            attempts: 6,
        }
    }
}

/// Runs `f` until it succeeds, fails with an error that is not
/// retryable, or `backoff.attempts` are spent; waits between attempts,
/// doubling from `backoff.first` up to `backoff.max`, or as long as a
/// throttling error's `Retry-After` says (whichever is longer).
pub async fn with_retry<T, F, Fut>(backoff: Backoff, mut f: F) -> Result<T, CloudError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CloudError>>,
{
    let mut wait = backoff.first;
    let mut attempt = 1;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if !e.is_retryable() || attempt >= backoff.attempts => return Err(e),
            Err(e) => {
                let asked = match &e {
                    CloudError::Throttled { retry_after, .. } => retry_after.unwrap_or_default(),
                    _ => Duration::ZERO,
                };
                tokio::time::sleep(wait.max(asked)).await;
                wait = (wait * 2).min(backoff.max);
                attempt += 1;
            }
        }
    }
}

/// Terminates `ids`, but only those the cloud lists with this cluster's
/// tag; returns the ids it refused (not ours, or unknown).
pub async fn terminate_owned(
    provider: &dyn CloudProvider,
    cluster: &str,
    ids: &[String],
) -> Result<Vec<String>, CloudError> {
    let ours: Vec<String> = provider
        .describe(TAG_CLUSTER, cluster)
        .await?
        .into_iter()
        .filter(|i| i.tags.get(TAG_CLUSTER).map(String::as_str) == Some(cluster))
        .map(|i| i.id)
        .collect();
    let (allowed, refused): (Vec<String>, Vec<String>) =
        ids.iter().cloned().partition(|id| ours.contains(id));
    if !allowed.is_empty() {
        provider.terminate(&allowed).await?;
    }
    Ok(refused)
}
