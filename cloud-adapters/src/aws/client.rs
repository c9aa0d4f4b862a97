//! The EC2 client of the AWS provider (the crate's `aws` feature).

use std::collections::BTreeMap;

use base64::Engine as _;

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    Filter, IamInstanceProfileSpecification, InstanceAttributeName, InstanceMarketOptionsRequest,
    InstanceStateName, MarketType, ResourceType, Tag, TagSpecification,
};

use super::AwsSettings;
use crate::{
    CloudError, CloudProvider, Instance, InstanceState, InstanceType, LaunchRequest, Secret,
    TAG_NODE, TAG_SITE,
};

/// The provider for one AWS site.
#[derive(Debug, Clone)]
pub struct AwsCloud {
    client: aws_sdk_ec2::Client,
    settings: AwsSettings,
    site: String,
    /// The site's instance types as configured (name, shape, price).
    types: Vec<InstanceType>,
}

impl AwsCloud {
    /// Loads credentials from the standard chain and builds the client.
    pub async fn new(site: &str, settings: AwsSettings, types: Vec<InstanceType>) -> Self {
        use aws_smithy_http_client::tls;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http)
            .region(aws_config::Region::new(settings.region.clone()))
            .retry_config(aws_config::retry::RetryConfig::disabled());
        if let Some(e) = &settings.endpoint {
            loader = loader.endpoint_url(e);
        }
        let config = loader.load().await;
        Self {
            client: aws_sdk_ec2::Client::new(&config),
            settings,
            site: site.to_string(),
            types,
        }
    }

    /// The user data `id` was launched with (DescribeInstanceAttribute).
    pub async fn user_data(&self, id: &str) -> Result<Secret, CloudError> {
        let out = self
            .client
            .describe_instance_attribute()
            .instance_id(id)
            .attribute(InstanceAttributeName::UserData)
            .send()
            .await
            .map_err(classify)?;
        let encoded = out.user_data().and_then(|v| v.value()).unwrap_or_default();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| CloudError::Other(format!("user data of {id}: {e}")))?;
        String::from_utf8(bytes)
            .map(Secret)
            .map_err(|_| CloudError::Other(format!("user data of {id} is not UTF-8")))
    }

    fn instance(&self, i: &aws_sdk_ec2::types::Instance) -> Option<Instance> {
        let tags: BTreeMap<String, String> = i
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
            .collect();
        Some(Instance {
            id: i.instance_id()?.to_string(),
            site: tags
                .get(TAG_SITE)
                .cloned()
                .unwrap_or_else(|| self.site.clone()),
            instance_type: i
                .instance_type()
                .map(|t| t.as_str().to_string())
                .unwrap_or_default(),
            state: match i.state().and_then(|s| s.name()) {
                Some(InstanceStateName::Running) => InstanceState::Running,
                Some(InstanceStateName::ShuttingDown)
                | Some(InstanceStateName::Stopping)
                | Some(InstanceStateName::Stopped) => InstanceState::Stopping,
                Some(InstanceStateName::Terminated) => InstanceState::Terminated,
                _ => InstanceState::Pending,
            },
            tags,
        })
    }
}

/// Classifies an SDK error by its EC2 error code.
fn classify<E>(e: SdkError<E, HttpResponse>) -> CloudError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match &e {
        SdkError::ServiceError(se) => {
            let retry_after = se
                .raw()
                .headers()
                .get("retry-after")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(std::time::Duration::from_secs);
            let code = e.code().unwrap_or("Unknown").to_string();
            let message = format!("{code}: {}", e.message().unwrap_or("no message"));
            classify_code(&code, message, retry_after)
        }
        SdkError::ConstructionFailure(_) => CloudError::Invalid(skiff_proto::error_chain(&e)),
        _ => CloudError::Other(skiff_proto::error_chain(&e)),
    }
}

/// EC2's error codes, by what the caller should do about them.
fn classify_code(
    code: &str,
    message: String,
    retry_after: Option<std::time::Duration>,
) -> CloudError {
    match code {
        "InstanceLimitExceeded"
        | "VcpuLimitExceeded"
        | "MaxSpotInstanceCountExceeded"
        | "InsufficientFreeAddressesInSubnet"
        | "ResourceLimitExceeded" => CloudError::Quota(message),
        "InsufficientInstanceCapacity"
        | "InsufficientCapacity"
        | "InsufficientHostCapacity"
        | "InsufficientReservedInstanceCapacity"
        | "SpotMaxPriceTooLow"
        | "Unsupported" => CloudError::Capacity(message),
        "RequestLimitExceeded" | "Throttling" | "ThrottlingException" => CloudError::Throttled {
            message,
            retry_after,
        },
        "AuthFailure"
        | "UnauthorizedOperation"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "OptInRequired"
        | "Blocked"
        | "PendingVerification" => CloudError::Auth(message),
        "InternalError" | "InternalFailure" | "ServiceUnavailable" | "Unavailable" => {
            CloudError::Other(message)
        }
        c if c.starts_with("Invalid") || c.starts_with("Missing") || c.contains("Malformed") => {
            CloudError::Invalid(message)
        }
        _ => CloudError::Other(message),
    }
}

#[async_trait::async_trait]
impl CloudProvider for AwsCloud {
    async fn instance_types(&self) -> Result<Vec<InstanceType>, CloudError> {
        // The shapes come from EC2 (a type the region does not have is an
        // error here, not at launch time); prices from the config, since
        // EC2 does not tell them.
        let names: Vec<aws_sdk_ec2::types::InstanceType> =
            self.types.iter().map(|t| t.name.as_str().into()).collect();
        let out = self
            .client
            .describe_instance_types()
            .set_instance_types(Some(names))
            .send()
            .await
            .map_err(classify)?;
        let mut found = Vec::new();
        for t in &self.types {
            let info = out
                .instance_types()
                .iter()
                .find(|i| i.instance_type().map(|x| x.as_str()) == Some(t.name.as_str()))
                .ok_or_else(|| {
                    CloudError::Invalid(format!(
                        "instance type {} is not offered in {}",
                        t.name, self.settings.region
                    ))
                })?;
            let cpus = info
                .v_cpu_info()
                .and_then(|v| v.default_v_cpus())
                .unwrap_or(0);
            let mib = info
                .memory_info()
                .and_then(|m| m.size_in_mib())
                .unwrap_or(0);
            found.push(InstanceType {
                cpu_millis: cpus.max(0) as u64 * 1000,
                memory_bytes: mib.max(0) as u64 * 1024 * 1024,
                ..t.clone()
            });
        }
        Ok(found)
    }

    async fn launch(&self, req: &LaunchRequest) -> Result<Vec<Instance>, CloudError> {
        let tags: Vec<Tag> = req
            .tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        let spec = |r: ResourceType| {
            TagSpecification::builder()
                .resource_type(r)
                .set_tags(Some(tags.clone()))
                .build()
        };
        let count = i32::try_from(req.count)
            .map_err(|_| CloudError::Invalid(format!("count {}", req.count)))?;
        let mut call = self
            .client
            .run_instances()
            .image_id(&self.settings.image_id)
            .instance_type(req.instance_type.as_str().into())
            .min_count(count)
            .max_count(count)
            .user_data(base64::engine::general_purpose::STANDARD.encode(&req.user_data.0))
            .tag_specifications(spec(ResourceType::Instance))
            .tag_specifications(spec(ResourceType::Volume))
            .set_subnet_id(self.settings.subnet_id.clone())
            .set_key_name(self.settings.key_name.clone());
        if !self.settings.security_group_ids.is_empty() {
            call = call.set_security_group_ids(Some(self.settings.security_group_ids.clone()));
        }
        if let Some(p) = &self.settings.instance_profile {
            let spec = if p.starts_with("arn:") {
                IamInstanceProfileSpecification::builder().arn(p)
            } else {
                IamInstanceProfileSpecification::builder().name(p)
            };
            call = call.iam_instance_profile(spec.build());
        }
        if req.spot || self.settings.spot {
            call = call.instance_market_options(
                InstanceMarketOptionsRequest::builder()
                    .market_type(MarketType::Spot)
                    .build(),
            );
        }
        // Idempotent: a retry of the same node's launch is the same call.
        if let Some(node) = req.tags.get(TAG_NODE) {
            call = call.client_token(format!("skiff-{node}"));
        }
        let out = call.send().await.map_err(classify)?;
        Ok(out
            .instances()
            .iter()
            .filter_map(|i| self.instance(i))
            .collect())
    }

    async fn describe(&self, tag: &str, value: &str) -> Result<Vec<Instance>, CloudError> {
        let mut found = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let out = self
                .client
                .describe_instances()
                .filters(
                    Filter::builder()
                        .name(format!("tag:{tag}"))
                        .values(value)
                        .build(),
                )
                .set_next_token(next.take())
                .send()
                .await
                .map_err(classify)?;
            for r in out.reservations() {
                found.extend(r.instances().iter().filter_map(|i| self.instance(i)));
            }
            match out.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_string()),
                _ => return Ok(found),
            }
        }
    }

    async fn terminate(&self, ids: &[String]) -> Result<(), CloudError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.client
            .terminate_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec2_error_codes_are_classified() {
        let c = |code: &str| classify_code(code, code.to_string(), None);
        assert!(matches!(c("VcpuLimitExceeded"), CloudError::Quota(_)));
        assert!(matches!(
            c("InsufficientInstanceCapacity"),
            CloudError::Capacity(_)
        ));
        assert!(matches!(
            c("RequestLimitExceeded"),
            CloudError::Throttled { .. }
        ));
        assert!(matches!(c("AuthFailure"), CloudError::Auth(_)));
        assert!(matches!(c("InvalidAMIID.NotFound"), CloudError::Invalid(_)));
        assert!(matches!(c("InternalError"), CloudError::Other(_)));
        assert!(c("InsufficientInstanceCapacity").wants_fallback());
        assert!(c("RequestLimitExceeded").is_retryable());
        assert!(!c("AuthFailure").is_retryable());
    }
}
