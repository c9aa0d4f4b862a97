//! The AWS provider: EC2 through `aws-sdk-ec2`, credentials from the
//! standard chain (environment, profile, SSO-less config files, web
//! identity, ECS/EC2 instance role). `endpoint` points it elsewhere
//! (moto in the tests, a VPC endpoint in production).
//!
//! The SDK's own retries are off: [`crate::with_retry`] is the one place
//! that retries, so a throttled call is not retried three times inside
//! each of our attempts. RunInstances carries a client token derived from
//! the `skiff:node` tag, so a retried launch never launches twice.

//!
//! The client ([`AwsCloud`], in `aws/client.rs`) is built with the
//! crate's `aws` feature (on by default); the settings always are, so a
//! gateway built without it still reads its config and says what it lacks.

use serde::Deserialize;

#[cfg(feature = "aws")]
mod client;
#[cfg(feature = "aws")]
pub use client::AwsCloud;

/// `[sites.aws]` in the gateway's config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSettings {
    /// e.g. `us-east-1`.
    pub region: String,
    /// Another EC2 endpoint (`http://127.0.0.1:5000` for moto).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The AMI VMs boot (a Linux image with cloud-init).
    pub image_id: String,
    #[serde(default)]
    pub subnet_id: Option<String>,
    #[serde(default)]
    pub security_group_ids: Vec<String>,
    /// Instance profile name, or its ARN.
    #[serde(default)]
    pub instance_profile: Option<String>,
    /// Spot instead of on-demand.
    #[serde(default)]
    pub spot: bool,
    /// An EC2 key pair for SSH (none by default).
    #[serde(default)]
    pub key_name: Option<String>,
}
