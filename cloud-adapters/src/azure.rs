//! The Azure provider: the ARM REST API over `reqwest` (Compute
//! 2024-11-01, Network 2024-07-01). Each VM gets a NIC of its own on the
//! site's subnet, then the VM (Linux, SSH key only, the bootstrap as
//! `customData`, which ARM never returns), both tagged like every Skiff
//! instance; OS disk and NIC go with the VM (`deleteOption: Delete`), and
//! the NIC is deleted explicitly as well. Long-running operations are
//! polled to completion (`Azure-AsyncOperation`, else `Location`, waiting
//! `Retry-After`).
//!
//! Credentials, as Azure's own SDKs look for them: a service principal
//! from `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET`
//! (client-credentials grant at `AZURE_AUTHORITY_HOST`, default Entra ID),
//! else the VM's managed identity (IMDS). Written by hand rather than
//! with `azure_identity`: two small token requests, and that crate
//! brings its own HTTP pipeline and cannot be pointed at a fake authority
//! as simply. Tokens are cached until five minutes before they expire and
//! never logged.

use base64::Engine as _;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    CloudError, CloudProvider, Instance, InstanceState, InstanceType, LaunchRequest, TAG_CLUSTER,
    TAG_NODE, TAG_SITE,
};

const COMPUTE_API: &str = "2024-11-01";
const NETWORK_API: &str = "2024-07-01";
const ARM_RESOURCE: &str = "https://management.azure.com/";
/// Longest wait for one long-running operation.
const LRO_TIMEOUT: Duration = Duration::from_secs(900);

/// `[sites.azure]` in the gateway's config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureSettings {
    pub subscription_id: String,
    pub resource_group: String,
    /// e.g. `westeurope`.
    pub location: String,
    /// The subnet's resource id (`/subscriptions/…/subnets/NAME`).
    pub subnet_id: String,
    /// `publisher:offer:sku:version` (as the Azure CLI writes it), or an
    /// image's resource id.
    pub image: String,
    #[serde(default = "default_admin")]
    pub admin_username: String,
    /// The admin's SSH public key (Linux VMs here have no password).
    pub ssh_public_key: String,
    /// Spot priority (evicted VMs are deleted) instead of regular.
    #[serde(default)]
    pub spot: bool,
    /// ARM's base URL (default `https://management.azure.com`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// IMDS for managed identity (default `http://169.254.169.254`).
    #[serde(default)]
    pub imds_endpoint: Option<String>,
    /// A user-assigned managed identity's client id.
    #[serde(default)]
    pub identity_client_id: Option<String>,
}

impl AzureSettings {
    /// Checks what can be checked before any call: (key, reason).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        image_reference(&self.image).map_err(|e| ("image", e))?;
        if !self.subnet_id.starts_with("/subscriptions/") || !self.subnet_id.contains("/subnets/") {
            return Err((
                "subnet_id",
                format!("{:?} is not a subnet's resource id", self.subnet_id),
            ));
        }
        if !self.ssh_public_key.starts_with("ssh-") && !self.ssh_public_key.starts_with("ecdsa-") {
            return Err(("ssh_public_key", "is not an OpenSSH public key".into()));
        }
        Ok(())
    }
}

/// `publisher:offer:sku:version`, or an image's resource id.
fn image_reference(image: &str) -> Result<Value, String> {
    if image.starts_with("/subscriptions/") {
        return Ok(json!({ "id": image }));
    }
    let parts: Vec<&str> = image.split(':').collect();
    match parts[..] {
        [publisher, offer, sku, version] if parts.iter().all(|p| !p.is_empty()) => {
            Ok(json!({ "publisher": publisher, "offer": offer, "sku": sku, "version": version }))
        }
        _ => Err(format!(
            "{image:?}: expected publisher:offer:sku:version or an image's resource id"
        )),
    }
}

fn default_admin() -> String {
    "skiff".into()
}

/// How tokens are obtained.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    ServicePrincipal {
        authority: String,
        tenant: String,
        client_id: String,
        secret: String,
    },
    ManagedIdentity {
        imds: String,
        client_id: Option<String>,
    },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::ServicePrincipal {
                tenant, client_id, ..
            } => write!(f, "ServicePrincipal({client_id} in {tenant})"),
            Credential::ManagedIdentity { client_id, .. } => {
                write!(f, "ManagedIdentity({client_id:?})")
            }
        }
    }
}

impl Credential {
    /// A service principal from the environment, else managed identity.
    pub fn from_env(settings: &AzureSettings) -> Credential {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        match (
            var("AZURE_TENANT_ID"),
            var("AZURE_CLIENT_ID"),
            var("AZURE_CLIENT_SECRET"),
        ) {
            (Some(tenant), Some(client_id), Some(secret)) => Credential::ServicePrincipal {
                authority: var("AZURE_AUTHORITY_HOST")
                    .unwrap_or_else(|| "https://login.microsoftonline.com".into()),
                tenant,
                client_id,
                secret,
            },
            _ => Credential::ManagedIdentity {
                imds: settings
                    .imds_endpoint
                    .clone()
                    .unwrap_or_else(|| "http://169.254.169.254".into()),
                client_id: settings
                    .identity_client_id
                    .clone()
                    .or_else(|| var("AZURE_CLIENT_ID")),
            },
        }
    }
}

struct Token {
    value: String,
    refresh_at: Instant,
}

/// The provider for one Azure site.
pub struct AzureCloud {
    http: reqwest::Client,
    settings: AzureSettings,
    credential: Credential,
    site: String,
    base: String,
    types: Vec<InstanceType>,
    token: tokio::sync::Mutex<Option<Token>>,
}

impl std::fmt::Debug for AzureCloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureCloud")
            .field("site", &self.site)
            .field("base", &self.base)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

/// ARM's error body.
#[derive(Debug, Default, Deserialize)]
struct ArmError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct ArmErrorBody {
    error: ArmError,
}

/// Classifies an ARM failure by HTTP status and error code.
fn classify(status: u16, code: &str, message: &str, retry_after: Option<Duration>) -> CloudError {
    let text = if code.is_empty() {
        format!("HTTP {status}: {message}")
    } else {
        format!("{code}: {message}")
    };
    match code {
        "QuotaExceeded" => return CloudError::Quota(text),
        "OperationNotAllowed" if message.to_ascii_lowercase().contains("quota") => {
            return CloudError::Quota(text);
        }
        "SkuNotAvailable"
        | "AllocationFailed"
        | "ZonalAllocationFailed"
        | "OverconstrainedAllocationRequest"
        | "OverconstrainedZonalAllocationRequest" => return CloudError::Capacity(text),
        "AuthorizationFailed"
        | "InvalidAuthenticationToken"
        | "ExpiredAuthenticationToken"
        | "AuthenticationFailed"
        | "InvalidAuthenticationTokenTenant"
        | "invalid_client"
        | "unauthorized_client" => return CloudError::Auth(text),
        _ => {}
    }
    match status {
        429 => CloudError::Throttled {
            message: text,
            retry_after,
        },
        401 | 403 => CloudError::Auth(text),
        400..=499 => CloudError::Invalid(text),
        _ => CloudError::Other(text),
    }
}

fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    h.get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// `application/x-www-form-urlencoded` for one value.
fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn net(e: reqwest::Error) -> CloudError {
    // Without the URL: it may carry a token request's query.
    CloudError::Other(format!("azure: {}", e.without_url()))
}

impl AzureCloud {
    pub fn new(
        site: &str,
        settings: AzureSettings,
        credential: Credential,
        types: Vec<InstanceType>,
    ) -> Result<Self, CloudError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(net)?;
        let base = settings
            .endpoint
            .clone()
            .unwrap_or_else(|| "https://management.azure.com".into())
            .trim_end_matches('/')
            .to_string();
        Ok(Self {
            http,
            settings,
            credential,
            site: site.to_string(),
            base,
            types,
            token: tokio::sync::Mutex::new(None),
        })
    }

    async fn token(&self) -> Result<String, CloudError> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref()
            && t.refresh_at > Instant::now()
        {
            return Ok(t.value.clone());
        }
        let resp = match &self.credential {
            Credential::ServicePrincipal {
                authority,
                tenant,
                client_id,
                secret,
            } => {
                let body = format!(
                    "grant_type=client_credentials&client_id={}&client_secret={}&scope={}",
                    form_encode(client_id),
                    form_encode(secret),
                    form_encode(&format!("{ARM_RESOURCE}.default"))
                );
                self.http
                    .post(format!(
                        "{}/{}/oauth2/v2.0/token",
                        authority.trim_end_matches('/'),
                        form_encode(tenant)
                    ))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body)
                    .send()
                    .await
                    .map_err(net)?
            }
            Credential::ManagedIdentity { imds, client_id } => {
                let mut url = format!(
                    "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={}",
                    imds.trim_end_matches('/'),
                    form_encode(ARM_RESOURCE)
                );
                if let Some(c) = client_id {
                    url.push_str(&format!("&client_id={}", form_encode(c)));
                }
                self.http
                    .get(url)
                    .header("Metadata", "true")
                    .send()
                    .await
                    .map_err(net)?
            }
        };
        let status = resp.status().as_u16();
        let after = retry_after(resp.headers());
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if status != 200 {
            // Entra ID's shape: {"error": "invalid_client", "error_description": ...}.
            let code = v["error"].as_str().unwrap_or_default();
            let message = v["error_description"]
                .as_str()
                .unwrap_or("token request refused");
            let first_line = message.lines().next().unwrap_or_default();
            return Err(match classify(status, code, first_line, after) {
                CloudError::Invalid(m) => CloudError::Auth(m),
                e => e,
            });
        }
        let value = v["access_token"]
            .as_str()
            .ok_or_else(|| CloudError::Auth("token reply has no access_token".into()))?
            .to_string();
        // A number (Entra ID) or a string (IMDS).
        let expires_in = v["expires_in"]
            .as_u64()
            .or_else(|| v["expires_in"].as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(3600);
        *cached = Some(Token {
            value: value.clone(),
            refresh_at: Instant::now() + Duration::from_secs(expires_in.saturating_sub(300)),
        });
        Ok(value)
    }

    fn rg_url(&self, provider_path: &str, api: &str) -> String {
        format!(
            "{}/subscriptions/{}/resourceGroups/{}/providers/{provider_path}?api-version={api}",
            self.base, self.settings.subscription_id, self.settings.resource_group
        )
    }

    fn vm_url(&self, name: &str) -> String {
        self.rg_url(
            &format!("Microsoft.Compute/virtualMachines/{name}"),
            COMPUTE_API,
        )
    }

    fn nic_id(&self, name: &str) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Network/networkInterfaces/{name}",
            self.settings.subscription_id, self.settings.resource_group
        )
    }

    /// One authorized call; an error status becomes a classified error.
    async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<reqwest::Response, CloudError> {
        let token = self.token().await?;
        let mut req = self.http.request(method, url).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(net)?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let after = retry_after(resp.headers());
        let err = resp
            .json::<ArmErrorBody>()
            .await
            .map(|b| b.error)
            .unwrap_or_default();
        Err(classify(status, &err.code, &err.message, after))
    }

    /// Waits for the operation a response started, if it started one.
    async fn finish(&self, resp: reqwest::Response) -> Result<(), CloudError> {
        let h = resp.headers();
        let header = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (url, async_op) = match (header("azure-asyncoperation"), header("location")) {
            (Some(u), _) => (u, true),
            (None, Some(u)) if resp.status().as_u16() == 202 => (u, false),
            _ => return Ok(()),
        };
        let mut wait = retry_after(h).unwrap_or(Duration::from_secs(1));
        let deadline = Instant::now() + LRO_TIMEOUT;
        loop {
            tokio::time::sleep(wait.clamp(Duration::from_millis(200), Duration::from_secs(60)))
                .await;
            if Instant::now() > deadline {
                return Err(CloudError::Other(format!(
                    "operation {url} did not end in {}s",
                    LRO_TIMEOUT.as_secs()
                )));
            }
            let resp = self.call(reqwest::Method::GET, &url, None).await?;
            let code = resp.status().as_u16();
            wait = retry_after(resp.headers()).unwrap_or(Duration::from_secs(2));
            if !async_op {
                if code == 202 {
                    continue;
                }
                return Ok(());
            }
            let v: Value = resp.json().await.map_err(net)?;
            match v["status"].as_str().unwrap_or_default() {
                "Succeeded" => return Ok(()),
                "Failed" | "Canceled" => {
                    let e: ArmError =
                        serde_json::from_value(v["error"].clone()).unwrap_or_default();
                    // The operation's own error decides (e.g. AllocationFailed).
                    return Err(classify(409, &e.code, &e.message, None));
                }
                _ => {}
            }
        }
    }

    fn image_reference(&self) -> Result<Value, CloudError> {
        image_reference(&self.settings.image).map_err(CloudError::Invalid)
    }

    async fn create_one(
        &self,
        name: &str,
        req: &LaunchRequest,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), CloudError> {
        let location = &self.settings.location;
        let nic = format!("{name}-nic");
        let resp = self
            .call(
                reqwest::Method::PUT,
                &self.rg_url(
                    &format!("Microsoft.Network/networkInterfaces/{nic}"),
                    NETWORK_API,
                ),
                Some(&json!({
                    "location": location,
                    "tags": tags,
                    "properties": { "ipConfigurations": [{
                        "name": "ipconfig1",
                        "properties": {
                            "privateIPAllocationMethod": "Dynamic",
                            "subnet": { "id": self.settings.subnet_id },
                        },
                    }]},
                })),
            )
            .await?;
        self.finish(resp).await?;
        let admin = &self.settings.admin_username;
        let mut properties = json!({
            "hardwareProfile": { "vmSize": req.instance_type },
            "storageProfile": {
                "imageReference": self.image_reference()?,
                "osDisk": {
                    "name": format!("{name}-osdisk"),
                    "createOption": "FromImage",
                    "deleteOption": "Delete",
                    "managedDisk": { "storageAccountType": "StandardSSD_LRS" },
                },
            },
            "osProfile": {
                "computerName": name,
                "adminUsername": admin,
                "customData": base64::engine::general_purpose::STANDARD.encode(&req.user_data.0),
                "linuxConfiguration": {
                    "disablePasswordAuthentication": true,
                    "ssh": { "publicKeys": [{
                        "path": format!("/home/{admin}/.ssh/authorized_keys"),
                        "keyData": self.settings.ssh_public_key,
                    }]},
                },
            },
            "networkProfile": { "networkInterfaces": [{
                "id": self.nic_id(&nic),
                "properties": { "primary": true, "deleteOption": "Delete" },
            }]},
        });
        if req.spot || self.settings.spot {
            properties["priority"] = json!("Spot");
            properties["evictionPolicy"] = json!("Delete");
            properties["billingProfile"] = json!({ "maxPrice": -1 });
        }
        let vm = json!({ "location": location, "tags": tags, "properties": properties });
        let created = self
            .call(reqwest::Method::PUT, &self.vm_url(name), Some(&vm))
            .await;
        match created {
            Ok(resp) => self.finish(resp).await,
            Err(e) => Err(e),
        }
    }

    async fn delete_one(&self, name: &str) -> Result<(), CloudError> {
        let url = format!("{}&forceDeletion=false", self.vm_url(name));
        let resp = self.call(reqwest::Method::DELETE, &url, None).await?;
        self.finish(resp).await?;
        // Gone with the VM (deleteOption), unless the VM never took it.
        let nic = self.rg_url(
            &format!("Microsoft.Network/networkInterfaces/{name}-nic"),
            NETWORK_API,
        );
        let resp = self.call(reqwest::Method::DELETE, &nic, None).await?;
        self.finish(resp).await
    }

    /// Every item of an ARM list, following `nextLink` across pages.
    async fn list(&self, first: String) -> Result<Vec<Value>, CloudError> {
        let mut items = Vec::new();
        let mut url = Some(first);
        while let Some(u) = url.take() {
            let v: Value = self
                .call(reqwest::Method::GET, &u, None)
                .await?
                .json()
                .await
                .map_err(net)?;
            items.extend(v["value"].as_array().into_iter().flatten().cloned());
            url = v["nextLink"].as_str().map(str::to_string);
        }
        Ok(items)
    }

    fn instance(&self, v: &Value) -> Option<Instance> {
        let tags: BTreeMap<String, String> = v["tags"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let p = &v["properties"];
        Some(Instance {
            id: v["name"].as_str()?.to_string(),
            site: tags
                .get(TAG_SITE)
                .cloned()
                .unwrap_or_else(|| self.site.clone()),
            instance_type: p["hardwareProfile"]["vmSize"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            state: match p["provisioningState"].as_str().unwrap_or_default() {
                "Succeeded" => InstanceState::Running,
                "Deleting" | "Failed" | "Canceled" => InstanceState::Stopping,
                _ => InstanceState::Pending,
            },
            tags,
        })
    }
}

#[async_trait::async_trait]
impl CloudProvider for AzureCloud {
    async fn instance_types(&self) -> Result<Vec<InstanceType>, CloudError> {
        let url = format!(
            "{}/subscriptions/{}/providers/Microsoft.Compute/locations/{}/vmSizes?api-version={COMPUTE_API}",
            self.base, self.settings.subscription_id, self.settings.location
        );
        let v: Value = self
            .call(reqwest::Method::GET, &url, None)
            .await?
            .json()
            .await
            .map_err(net)?;
        let sizes = v["value"].as_array().cloned().unwrap_or_default();
        self.types
            .iter()
            .map(|t| {
                let s = sizes
                    .iter()
                    .find(|s| s["name"].as_str() == Some(t.name.as_str()))
                    .ok_or_else(|| {
                        CloudError::Invalid(format!(
                            "VM size {} is not offered in {}",
                            t.name, self.settings.location
                        ))
                    })?;
                Ok(InstanceType {
                    cpu_millis: s["numberOfCores"].as_u64().unwrap_or(0) * 1000,
                    memory_bytes: s["memoryInMB"].as_u64().unwrap_or(0) << 20,
                    ..t.clone()
                })
            })
            .collect()
    }

    async fn launch(&self, req: &LaunchRequest) -> Result<Vec<Instance>, CloudError> {
        let mut out = Vec::new();
        for i in 0..req.count {
            let base = req
                .tags
                .get(TAG_NODE)
                .cloned()
                .unwrap_or_else(|| format!("skiff-{}", req.site));
            let name = if req.count == 1 {
                base
            } else {
                format!("{base}-{i}")
            };
            if name.is_empty()
                || name.len() > 64
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                return Err(CloudError::Invalid(format!("VM name {name:?}")));
            }
            let mut tags = req.tags.clone();
            if req.count != 1 {
                tags.insert(TAG_NODE.to_string(), name.clone());
            }
            if let Err(e) = self.create_one(&name, req, &tags).await {
                // No half-made VM or NIC left behind.
                let _ = self.delete_one(&name).await;
                return Err(e);
            }
            out.push(Instance {
                id: name,
                site: req.site.clone(),
                instance_type: req.instance_type.clone(),
                state: InstanceState::Running,
                tags,
            });
        }
        Ok(out)
    }

    async fn describe(&self, tag: &str, value: &str) -> Result<Vec<Instance>, CloudError> {
        let vms = self
            .list(self.rg_url("Microsoft.Compute/virtualMachines", COMPUTE_API))
            .await?;
        Ok(vms
            .iter()
            .filter(|vm| vm["tags"][tag].as_str() == Some(value))
            .filter_map(|vm| self.instance(vm))
            .collect())
    }

    async fn terminate(&self, ids: &[String]) -> Result<(), CloudError> {
        for id in ids {
            self.delete_one(id).await?;
        }
        Ok(())
    }

    /// NICs tagged with `cluster` that no VM holds and that are not being
    /// made or deleted.
    async fn sweep(&self, cluster: &str) -> Result<Vec<String>, CloudError> {
        let nics = self
            .list(self.rg_url("Microsoft.Network/networkInterfaces", NETWORK_API))
            .await?;
        let orphans: Vec<String> = nics
            .iter()
            .filter(|nic| {
                let p = &nic["properties"];
                nic["tags"][TAG_CLUSTER].as_str() == Some(cluster)
                    && p["virtualMachine"].is_null()
                    && p["provisioningState"].as_str() == Some("Succeeded")
            })
            .filter_map(|nic| Some(nic["name"].as_str()?.to_string()))
            .collect();
        for name in &orphans {
            let url = self.rg_url(
                &format!("Microsoft.Network/networkInterfaces/{name}"),
                NETWORK_API,
            );
            let resp = self.call(reqwest::Method::DELETE, &url, None).await?;
            self.finish(resp).await?;
        }
        Ok(orphans)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arm_errors_are_classified() {
        let c = |status, code| classify(status, code, "m", None);
        assert!(matches!(
            classify(
                409,
                "OperationNotAllowed",
                "exceeding quota limits of Core",
                None
            ),
            CloudError::Quota(_)
        ));
        assert!(matches!(c(409, "SkuNotAvailable"), CloudError::Capacity(_)));
        assert!(matches!(
            c(409, "AllocationFailed"),
            CloudError::Capacity(_)
        ));
        assert!(matches!(c(429, ""), CloudError::Throttled { .. }));
        assert!(matches!(
            c(401, "InvalidAuthenticationToken"),
            CloudError::Auth(_)
        ));
        assert!(matches!(c(403, "AuthorizationFailed"), CloudError::Auth(_)));
        assert!(matches!(c(400, "InvalidParameter"), CloudError::Invalid(_)));
        assert!(matches!(c(500, "InternalError"), CloudError::Other(_)));
    }

    #[test]
    fn form_values_are_escaped() {
        assert_eq!(form_encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }

    #[test]
    fn credentials_never_print_the_secret() {
        let c = Credential::ServicePrincipal {
            authority: "https://login".into(),
            tenant: "t".into(),
            client_id: "c".into(),
            secret: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
