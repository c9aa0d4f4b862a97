//! A fake Azure Resource Manager (ARM) for end-to-end tests of the Azure
//! provider, on a loopback port: the Entra ID client-credentials token
//! endpoint, the IMDS managed-identity token endpoint, and the Compute
//! (`2024-11-01`) and Network (`2024-07-01`) calls a VM adapter makes —
//! VM sizes, network interfaces, virtual machines — with ARM's
//! long-running operations (`Azure-AsyncOperation` / `Location` polling),
//! paging (`nextLink`) and error bodies. Request and response shapes
//! follow the official examples in `../shared/fixtures/azure` (see its
//! NOTES.md). State lives in memory, keyed by subscription, resource group
//! and name (case-insensitively, as in Azure); failures can be injected
//! per call with [`FakeArm::fail_next`].
//!
//! Long-running operations take two polls: the first answers "in
//! progress", the second the outcome, and only then does the resource
//! change (provisioningState `Succeeded`/`Failed`, or removal). A failed
//! operation polled through a `Location` URL answers 409 with
//! `{"status":"Failed","error":{...}}`.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::IntoFuture;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

pub const TENANT: &str = "tenant-1";
pub const CLIENT_ID: &str = "client-1";
pub const CLIENT_SECRET: &str = "secret-1";

const COMPUTE_API: &str = "2024-11-01";
const NETWORK_API: &str = "2024-07-01";
const ARM_SCOPE: &str = "https://management.azure.com/.default";
const ARM_RESOURCE: &str = "https://management.azure.com/";
/// The managed identity's client id (the one in GetIdentityToken.json).
const MI_CLIENT_ID: &str = "be5947ed-3560-4afe-9504-59967a63f810";
/// VMs per page of a list.
const PAGE: usize = 2;
/// Offered sizes: (name, cores, memory MB, resource disk MB, max data disks).
const SIZES: [(&str, u32, u32, u32, u32); 4] = [
    ("Standard_A1_V2", 1, 2048, 10240, 2),
    ("Standard_A2_V2", 2, 4096, 20480, 4),
    ("Standard_B2s", 2, 4096, 8192, 4),
    ("Standard_D2s_v5", 2, 8192, 0, 4),
];

/// Which call a failure is injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArmOp {
    Token,
    CreateNic,
    CreateVm,
    GetVm,
    ListVms,
    DeleteVm,
    DeleteNic,
    ListSizes,
}

/// An injected failure.
#[derive(Debug, Clone)]
pub enum ArmFailure {
    /// The call answers this status with `{"error":{"code","message"}}` and, if set, a `Retry-After: N` header.
    Status {
        status: u16,
        code: String,
        message: String,
        retry_after: Option<u64>,
    },
    /// (CreateVm, CreateNic, DeleteVm only) the call is accepted (201/202 as usual) but its long-running operation ends `{"status":"Failed","error":{"code","message"}}`, and a created VM is left with provisioningState "Failed".
    /// (DeleteNic works the same way; any other call answers it as a 500.)
    AsyncFailed { code: String, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeVm {
    pub name: String,
    pub resource_group: String,
    pub location: String,
    /// hardwareProfile.vmSize
    pub size: String,
    pub tags: BTreeMap<String, String>,
    /// osProfile.customData, base64-decoded (UTF-8, lossy)
    pub custom_data: String,
    /// "Creating" | "Updating" (a PUT of an existing VM) | "Succeeded" | "Failed" | "Deleting"
    pub provisioning_state: String,
    pub nic_ids: Vec<String>,
    /// properties.priority == "Spot"
    pub spot: bool,
}

/// The fake ARM server; stopped (its thread joined) on drop.
pub struct FakeArm {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub url: String,
    state: Arc<Mutex<Inner>>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeArm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("FakeArm")
            .field("url", &self.url)
            .field("vms", &s.vms.len())
            .field("nics", &s.nics.len())
            .field("requests", &s.requests.len())
            .finish()
    }
}

impl FakeArm {
    /// Starts the server on a free loopback port, on a thread of its own
    /// with its own tokio runtime.
    pub fn start() -> FakeArm {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let state = Arc::new(Mutex::new(Inner {
            url: url.clone(),
            next_ip: 4,
            ..Inner::default()
        }));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("fake-arm".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    let mut graceful = stopped.clone();
                    let server = axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = graceful.wait_for(|s| *s).await;
                        })
                        .into_future();
                    let mut hard = stopped;
                    // Connections a client keeps open get 2 s after the stop.
                    tokio::select! {
                        _ = server => {}
                        _ = async move {
                            let _ = hard.wait_for(|s| *s).await;
                            tokio::time::sleep(Duration::from_secs(2)).await;
                        } => {}
                    }
                });
            })
            .expect("spawn the fake ARM thread");
        FakeArm {
            url,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Long-running operations started from now on answer "in progress"
    /// (with `Retry-After: 1`) this many times before their outcome
    /// (default 1): slow operations, for crash-in-the-middle tests.
    pub fn set_operation_polls(&self, polls: u32) {
        self.lock().extra_polls = polls.saturating_sub(1);
    }

    /// Current VMs (deleted ones gone).
    pub fn vms(&self) -> Vec<FakeVm> {
        self.lock().vms.values().map(|v| v.fake.clone()).collect()
    }

    /// NIC names that exist.
    pub fn nics(&self) -> Vec<String> {
        self.lock().nics.values().map(|n| n.name.clone()).collect()
    }

    /// OS disk names that exist. A VM's disk goes with it when its
    /// `osDisk.deleteOption` was "Delete" (Azure's default is "Detach").
    pub fn disks(&self) -> Vec<String> {
        self.lock().disks.values().cloned().collect()
    }

    /// Queues a failure for the next call of `op` (FIFO per op).
    pub fn fail_next(&self, op: ArmOp, failure: ArmFailure) {
        self.lock().failures.push((op, failure));
    }

    /// (method, path without query) of every request, in order.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.lock().requests.clone()
    }

    /// Every VM ever created, deleted ones included, as it was when created.
    pub fn created(&self) -> Vec<FakeVm> {
        self.lock().created.clone()
    }
}

impl Drop for FakeArm {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// (subscription, resource group, name), lowercased.
type Key = (String, String, String);

fn key(sub: &str, rg: &str, name: &str) -> Key {
    (
        sub.to_ascii_lowercase(),
        rg.to_ascii_lowercase(),
        name.to_ascii_lowercase(),
    )
}

fn resource_id(sub: &str, rg: &str, kind: &str, name: &str) -> String {
    format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/{kind}/{name}")
}

struct Nic {
    sub: String,
    rg: String,
    name: String,
    location: String,
    tags: Value,
    /// The request's ipConfigurations.
    configs: Vec<Value>,
    addresses: Vec<String>,
    state: String,
    guid: String,
    mac: String,
    accelerated: bool,
}

impl Nic {
    fn id(&self) -> String {
        resource_id(
            &self.sub,
            &self.rg,
            "Microsoft.Network/networkInterfaces",
            &self.name,
        )
    }
}

struct Vm {
    sub: String,
    fake: FakeVm,
    vm_id: String,
    /// The response's properties, without provisioningState.
    props: Value,
    os_disk: Key,
    os_disk_delete: bool,
    /// Attached NICs and whether they go with the VM.
    nics: Vec<(Key, bool)>,
}

impl Vm {
    fn id(&self) -> String {
        let (rg, name) = (&self.fake.resource_group, &self.fake.name);
        resource_id(&self.sub, rg, "Microsoft.Compute/virtualMachines", name)
    }
}

/// What a long-running operation does when it ends.
#[derive(Clone)]
enum Effect {
    NicReady(Key, String),
    VmReady(Key, String),
    VmGone(Key, String),
    NicGone(Key, String),
}

struct Operation {
    effect: Effect,
    polls: u32,
    failure: Option<(String, String)>,
}

#[derive(Default)]
struct Inner {
    url: String,
    tokens: HashSet<String>,
    nics: BTreeMap<Key, Nic>,
    vms: BTreeMap<Key, Vm>,
    disks: BTreeMap<Key, String>,
    /// By lowercased path.
    ops: HashMap<String, Operation>,
    failures: Vec<(ArmOp, ArmFailure)>,
    requests: Vec<(String, String)>,
    created: Vec<FakeVm>,
    next_ip: u32,
    /// Polls an operation answers "in progress" beyond the first.
    extra_polls: u32,
}

/// An answer, turned into an HTTP response by axum.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Option<Value>,
}

impl Reply {
    fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Some(body),
        }
    }

    fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: None,
        }
    }

    /// `name` must be lowercase.
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    /// A long-running operation's first answer: where to poll, and when.
    fn poll_at(self, header: &'static str, url: String) -> Reply {
        self.header(header, url).header("retry-after", "1")
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = match self.body {
            Some(body) => (status, axum::Json(body)).into_response(),
            None => status.into_response(),
        };
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}

fn arm_error(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(status, json!({"error": {"code": code, "message": message}}))
}

fn arm_error_at(status: u16, code: &str, message: &str, target: &str) -> Reply {
    Reply::json(
        status,
        json!({"error": {"code": code, "message": message, "target": target}}),
    )
}

fn missing(field: &str) -> Reply {
    arm_error_at(
        400,
        "InvalidParameter",
        &format!("Required parameter '{field}' is missing (null)."),
        field,
    )
}

fn bad_format(field: &str) -> Reply {
    arm_error_at(
        400,
        "InvalidRequestFormat",
        &format!("Cannot parse the request. Required property '{field}' is missing."),
        field,
    )
}

/// A subscription, resource group and name, as requested.
struct Res {
    sub: String,
    rg: String,
    name: String,
}

impl Res {
    fn key(&self) -> Key {
        key(&self.sub, &self.rg, &self.name)
    }

    fn nic_id(&self) -> String {
        resource_id(
            &self.sub,
            &self.rg,
            "Microsoft.Network/networkInterfaces",
            &self.name,
        )
    }
}

enum Route {
    SpToken(String),
    MiToken,
    Sizes,
    /// `.../locations/{loc}/operations/{id}` of Compute (false) or Network (true).
    OpStatus(bool),
    NicOpResult,
    ListVms(Res),
    GetVm(Res),
    PutVm(Res),
    DeleteVm(Res),
    ListNics(Res),
    GetNic(Res),
    PutNic(Res),
    DeleteNic(Res),
    Unknown,
}

impl Route {
    fn parse(method: &Method, path: &str) -> Route {
        const SIZES_PATH: &str = "subscriptions/*/providers/microsoft.compute/locations/*/vmsizes";
        const COMPUTE_OP: &str =
            "subscriptions/*/providers/microsoft.compute/locations/*/operations/*";
        const NETWORK_OP: &str =
            "subscriptions/*/providers/microsoft.network/locations/*/operations/*";
        const VMS: &str =
            "subscriptions/*/resourcegroups/*/providers/microsoft.compute/virtualmachines";
        const VM: &str =
            "subscriptions/*/resourcegroups/*/providers/microsoft.compute/virtualmachines/*";
        const NIC: &str =
            "subscriptions/*/resourcegroups/*/providers/microsoft.network/networkinterfaces/*";
        const NICS: &str =
            "subscriptions/*/resourcegroups/*/providers/microsoft.network/networkinterfaces";
        const NIC_OP: &str = "subscriptions/*/resourcegroups/*/providers/microsoft.network/networkinterfaces/*/operationresults/*";
        let segs: Vec<String> = path.split('/').skip(1).map(|s| decode(s, false)).collect();
        let lower: Vec<String> = segs.iter().map(|s| s.to_ascii_lowercase()).collect();
        // Whether the path has this shape, '*' matching any one segment.
        let is = |template: &str| {
            template.split('/').count() == lower.len()
                && template
                    .split('/')
                    .zip(&lower)
                    .all(|(t, s)| t == "*" || t == s)
        };
        let res = || Res {
            sub: segs[1].clone(),
            rg: segs[3].clone(),
            name: segs.get(7).cloned().unwrap_or_default(),
        };
        match method.as_str() {
            "POST" if is("*/oauth2/v2.0/token") => Route::SpToken(segs[0].clone()),
            "GET" if is("metadata/identity/oauth2/token") => Route::MiToken,
            "GET" if is(SIZES_PATH) => Route::Sizes,
            "GET" if is(COMPUTE_OP) => Route::OpStatus(false),
            "GET" if is(NETWORK_OP) => Route::OpStatus(true),
            "GET" if is(NIC_OP) => Route::NicOpResult,
            "GET" if is(VMS) => Route::ListVms(res()),
            "GET" if is(VM) => Route::GetVm(res()),
            "PUT" if is(VM) => Route::PutVm(res()),
            "DELETE" if is(VM) => Route::DeleteVm(res()),
            "GET" if is(NICS) => Route::ListNics(res()),
            "GET" if is(NIC) => Route::GetNic(res()),
            "PUT" if is(NIC) => Route::PutNic(res()),
            "DELETE" if is(NIC) => Route::DeleteNic(res()),
            _ => Route::Unknown,
        }
    }

    fn arm_op(&self) -> Option<ArmOp> {
        Some(match self {
            Route::SpToken(_) | Route::MiToken => ArmOp::Token,
            Route::Sizes => ArmOp::ListSizes,
            Route::ListVms(_) => ArmOp::ListVms,
            Route::GetVm(_) => ArmOp::GetVm,
            Route::PutVm(_) => ArmOp::CreateVm,
            Route::DeleteVm(_) => ArmOp::DeleteVm,
            Route::PutNic(_) => ArmOp::CreateNic,
            Route::DeleteNic(_) => ArmOp::DeleteNic,
            Route::ListNics(_)
            | Route::GetNic(_)
            | Route::OpStatus(_)
            | Route::NicOpResult
            | Route::Unknown => {
                return None;
            }
        })
    }

    fn long_running(&self) -> bool {
        matches!(
            self,
            Route::PutVm(_) | Route::DeleteVm(_) | Route::PutNic(_) | Route::DeleteNic(_)
        )
    }

    fn api_version(&self) -> Option<&'static str> {
        match self {
            Route::Sizes
            | Route::OpStatus(false)
            | Route::ListVms(_)
            | Route::GetVm(_)
            | Route::PutVm(_)
            | Route::DeleteVm(_) => Some(COMPUTE_API),
            Route::OpStatus(true)
            | Route::NicOpResult
            | Route::ListNics(_)
            | Route::GetNic(_)
            | Route::PutNic(_)
            | Route::DeleteNic(_) => Some(NETWORK_API),
            Route::SpToken(_) | Route::MiToken | Route::Unknown => None,
        }
    }
}

struct Req<'a> {
    method: &'a Method,
    path: &'a str,
    query: Vec<(String, String)>,
    headers: &'a HeaderMap,
    body: &'a [u8],
}

impl Req<'_> {
    fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn handle(
    State(state): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut inner = state.lock().unwrap_or_else(PoisonError::into_inner);
    inner
        .requests
        .push((method.to_string(), uri.path().to_string()));
    let req = Req {
        method: &method,
        path: uri.path(),
        query: parse_pairs(uri.query().unwrap_or("")),
        headers: &headers,
        body: &body,
    };
    inner.dispatch(&req).into_response()
}

impl Inner {
    fn dispatch(&mut self, req: &Req) -> Reply {
        let route = Route::parse(req.method, req.path);
        if req.path.starts_with("/subscriptions/")
            && let Err(reply) = self.check_auth(req.headers)
        {
            return reply;
        }
        let mut async_failure = None;
        if let Some(failure) = route.arm_op().and_then(|op| self.take_failure(op)) {
            match failure {
                ArmFailure::Status {
                    status,
                    code,
                    message,
                    retry_after,
                } => {
                    let reply = arm_error(status, &code, &message);
                    return match retry_after {
                        Some(secs) => reply.header("retry-after", secs.to_string()),
                        None => reply,
                    };
                }
                ArmFailure::AsyncFailed { code, message } if route.long_running() => {
                    async_failure = Some((code, message));
                }
                ArmFailure::AsyncFailed { code, message } => {
                    return arm_error(500, &code, &message);
                }
            }
        }
        if let Some(want) = route.api_version() {
            match req.query("api-version") {
                None => {
                    return arm_error(
                        400,
                        "MissingApiVersionParameter",
                        "The api-version query parameter (?api-version=) is required for all requests.",
                    );
                }
                Some(v) if v != want => {
                    return arm_error(
                        400,
                        "InvalidApiVersionParameter",
                        &format!(
                            "The api-version '{v}' is invalid. The supported versions are '{want}'."
                        ),
                    );
                }
                Some(_) => {}
            }
        }
        match &route {
            Route::SpToken(tenant) => self.sp_token(tenant, req.body),
            Route::MiToken => self.mi_token(req),
            Route::Sizes => {
                let value: Vec<Value> = SIZES
                    .iter()
                    .map(|(name, cores, mem, disk, data)| {
                        json!({
                            "name": name,
                            "numberOfCores": cores,
                            "osDiskSizeInMB": 1047552,
                            "resourceDiskSizeInMB": disk,
                            "memoryInMB": mem,
                            "maxDataDiskCount": data,
                        })
                    })
                    .collect();
                Reply::json(200, json!({ "value": value }))
            }
            Route::OpStatus(_) => self.poll(req.path, req.query("monitor") == Some("true")),
            Route::NicOpResult => self.poll(req.path, true),
            Route::ListVms(r) => self.list_vms(r, req.query("$skiptoken")),
            Route::GetVm(r) => match self.vms.get(&r.key()) {
                Some(vm) => Reply::json(200, vm_body(vm)),
                None => arm_error(
                    404,
                    "ResourceNotFound",
                    &format!(
                        "The Resource 'Microsoft.Compute/virtualMachines/{}' under resource group '{}' was not found.",
                        r.name, r.rg
                    ),
                ),
            },
            Route::PutVm(r) => self.put_vm(r, req.body, async_failure),
            Route::DeleteVm(r) => self.delete_vm(r, async_failure),
            Route::ListNics(r) => {
                let (sub, rg) = (r.sub.to_ascii_lowercase(), r.rg.to_ascii_lowercase());
                let value: Vec<Value> = self
                    .nics
                    .iter()
                    .filter(|(k, _)| k.0 == sub && k.1 == rg)
                    .map(|(_, nic)| self.nic_body(nic))
                    .collect();
                Reply::json(200, json!({ "value": value }))
            }
            Route::GetNic(r) => match self.nics.get(&r.key()) {
                Some(nic) => Reply::json(200, self.nic_body(nic)),
                None => arm_error(
                    404,
                    "NotFound",
                    &format!("Resource {} not found.", r.nic_id()),
                ),
            },
            Route::PutNic(r) => self.put_nic(r, req.body, async_failure),
            Route::DeleteNic(r) => self.delete_nic(r, async_failure),
            Route::Unknown => arm_error(
                404,
                "NotFound",
                &format!("No route for {} {}.", req.method, req.path),
            ),
        }
    }

    fn take_failure(&mut self, op: ArmOp) -> Option<ArmFailure> {
        let i = self.failures.iter().position(|(o, _)| *o == op)?;
        Some(self.failures.remove(i).1)
    }

    fn check_auth(&self, headers: &HeaderMap) -> Result<(), Reply> {
        let value = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
        let token = value
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        let message = match token {
            Some(t) if self.tokens.contains(t) => return Ok(()),
            Some(_) => "The access token is invalid.",
            None if value.is_none() => {
                "Authentication failed. The 'Authorization' header is missing."
            }
            None => "Authentication failed. The 'Authorization' header is not a Bearer token.",
        };
        Err(
            arm_error(401, "InvalidAuthenticationToken", message).header(
                "www-authenticate",
                format!(
                    "Bearer authorization_uri=\"{}/{TENANT}\", error=\"invalid_token\", error_description=\"{message}\"",
                    self.url
                ),
            ),
        )
    }

    /// A JWT-shaped token (unsigned; nobody checks) the ARM routes accept.
    fn issue_token(&mut self, appid: &str) -> String {
        let now = unix_now();
        let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"RS256"}"#);
        let claims = json!({
            "aud": ARM_RESOURCE,
            "iss": format!("https://sts.windows.net/{TENANT}/"),
            "iat": now, "nbf": now, "exp": now + 3599,
            "appid": appid, "tid": TENANT, "uti": uuid(),
        });
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let sig = URL_SAFE_NO_PAD
            .encode([random_u64().to_le_bytes(), random_u64().to_le_bytes()].concat());
        let token = format!("{header}.{payload}.{sig}");
        self.tokens.insert(token.clone());
        token
    }

    fn sp_token(&mut self, tenant: &str, body: &[u8]) -> Reply {
        let form = parse_pairs(&String::from_utf8_lossy(body));
        let get = |k: &str| {
            form.iter()
                .find(|(n, _)| n == k)
                .map_or("", |(_, v)| v.as_str())
        };
        let refuse = |code: u32, message: String| {
            Reply::json(
                401,
                json!({
                    "error": "invalid_client",
                    "error_description": format!("AADSTS{code}: {message}"),
                    "error_codes": [code],
                }),
            )
        };
        if tenant != TENANT {
            return refuse(90002, format!("Tenant '{tenant}' not found."));
        }
        if get("grant_type") != "client_credentials" {
            return refuse(
                70003,
                format!(
                    "The app requested an unsupported grant type '{}'.",
                    get("grant_type")
                ),
            );
        }
        if get("client_id") != CLIENT_ID {
            return refuse(
                700016,
                format!(
                    "Application with identifier '{}' was not found in the directory '{tenant}'.",
                    get("client_id")
                ),
            );
        }
        if get("client_secret") != CLIENT_SECRET {
            return refuse(
                7000215,
                format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{CLIENT_ID}'."
                ),
            );
        }
        if get("scope") != ARM_SCOPE {
            return refuse(
                70011,
                format!(
                    "The provided value for the input parameter 'scope' is not valid. The scope '{}' is not valid.",
                    get("scope")
                ),
            );
        }
        let token = self.issue_token(CLIENT_ID);
        Reply::json(
            200,
            json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token}),
        )
    }

    fn mi_token(&mut self, req: &Req) -> Reply {
        let bad = |m: &str| {
            Reply::json(
                400,
                json!({"error": "invalid_request", "error_description": m}),
            )
        };
        let metadata = req.headers.get("metadata");
        if !metadata.is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true")) {
            return bad("Required metadata header not specified");
        }
        if req.query("api-version").is_none_or(str::is_empty) {
            return bad("Required query variable 'api-version' is missing");
        }
        let resource = req.query("resource").unwrap_or("");
        if resource.is_empty() {
            return bad("Required audience variable not specified");
        }
        if resource.trim_end_matches('/') != ARM_RESOURCE.trim_end_matches('/') {
            return Reply::json(
                400,
                json!({
                    "error": "invalid_resource",
                    "error_description": format!("AADSTS500011: The resource principal named {resource} was not found in the tenant named {TENANT}."),
                }),
            );
        }
        let token = self.issue_token(MI_CLIENT_ID);
        let now = unix_now();
        Reply::json(
            200,
            json!({
                "access_token": token,
                "client_id": MI_CLIENT_ID,
                "expires_in": "3599",
                "expires_on": (now + 3599).to_string(),
                "ext_expires_in": "3599",
                "not_before": now.to_string(),
                "resource": resource,
                "token_type": "Bearer",
            }),
        )
    }

    /// Registers an operation polled at `path`; its full URL.
    fn start_op(
        &mut self,
        path: String,
        query: &str,
        effect: Effect,
        failure: Option<(String, String)>,
    ) -> String {
        let url = format!("{}{path}?{query}", self.url);
        self.ops.insert(
            path.to_ascii_lowercase(),
            Operation {
                effect,
                polls: 0,
                failure,
            },
        );
        url
    }

    /// An operation's status: Azure-AsyncOperation style (200 with
    /// `{"status"}`) or Location style (202 until done, then the result).
    fn poll(&mut self, path: &str, location_style: bool) -> Reply {
        let Some(op) = self.ops.get_mut(&path.to_ascii_lowercase()) else {
            return arm_error(404, "NotFound", &format!("Operation {path} was not found."));
        };
        op.polls += 1;
        let (polls, failure, effect) = (op.polls, op.failure.clone(), op.effect.clone());
        let in_progress = 1 + self.extra_polls;
        if polls <= in_progress {
            return if location_style {
                Reply::empty(202).header("retry-after", "1")
            } else {
                Reply::json(200, json!({"status": "InProgress"})).header("retry-after", "1")
            };
        }
        if polls == in_progress + 1 {
            self.finish(effect, failure.is_none());
        }
        match (failure, location_style) {
            (None, true) => Reply::empty(200),
            (None, false) => Reply::json(200, json!({"status": "Succeeded"})),
            (Some((code, message)), location_style) => Reply::json(
                if location_style { 409 } else { 200 },
                json!({"status": "Failed", "error": {"code": code, "message": message}}),
            ),
        }
    }

    fn finish(&mut self, effect: Effect, ok: bool) {
        let outcome = if ok { "Succeeded" } else { "Failed" };
        let pending = |s: &str| s == "Creating" || s == "Updating";
        match effect {
            Effect::NicReady(k, guid) => {
                if let Some(nic) = self
                    .nics
                    .get_mut(&k)
                    .filter(|n| n.guid == guid && pending(&n.state))
                {
                    nic.state = outcome.into();
                }
            }
            Effect::VmReady(k, id) => {
                if let Some(vm) = self
                    .vms
                    .get_mut(&k)
                    .filter(|v| v.vm_id == id && pending(&v.fake.provisioning_state))
                {
                    vm.fake.provisioning_state = outcome.into();
                }
            }
            Effect::VmGone(k, id) => {
                if self.vms.get(&k).is_none_or(|v| v.vm_id != id) {
                    return;
                }
                if !ok {
                    if let Some(vm) = self.vms.get_mut(&k) {
                        vm.fake.provisioning_state = outcome.into();
                    }
                    return;
                }
                let Some(vm) = self.vms.remove(&k) else {
                    return;
                };
                if vm.os_disk_delete {
                    self.disks.remove(&vm.os_disk);
                }
                for (nic, delete) in vm.nics {
                    if delete {
                        self.nics.remove(&nic);
                    }
                }
            }
            Effect::NicGone(k, guid) => {
                if self.nics.get(&k).is_none_or(|n| n.guid != guid) {
                    return;
                }
                if ok {
                    self.nics.remove(&k);
                } else if let Some(nic) = self.nics.get_mut(&k) {
                    nic.state = outcome.into();
                }
            }
        }
    }

    /// The VM a NIC is attached to.
    fn nic_owner(&self, nic: &Key) -> Option<(&Key, &Vm)> {
        self.vms
            .iter()
            .find(|(_, vm)| vm.nics.iter().any(|(k, _)| k == nic))
    }

    fn nic_body(&self, nic: &Nic) -> Value {
        let id = nic.id();
        let configs: Vec<Value> = nic
            .configs
            .iter()
            .zip(&nic.addresses)
            .enumerate()
            .map(|(i, (c, address))| {
                let name = c["name"].as_str().unwrap_or("ipconfig1");
                let p = &c["properties"];
                let mut props = json!({
                    "provisioningState": nic.state,
                    "privateIPAddress": address,
                    "privateIPAllocationMethod": p["privateIPAllocationMethod"].as_str().unwrap_or("Dynamic"),
                    "subnet": {"id": p["subnet"]["id"]},
                    "primary": p["primary"].as_bool().unwrap_or(i == 0),
                    "privateIPAddressVersion": "IPv4",
                });
                if p["publicIPAddress"].is_object() {
                    props["publicIPAddress"] = p["publicIPAddress"].clone();
                }
                json!({"name": name, "id": format!("{id}/ipConfigurations/{name}"), "properties": props})
            })
            .collect();
        let mut props = json!({
            "provisioningState": nic.state,
            "resourceGuid": nic.guid,
            "ipConfigurations": configs,
            "dnsSettings": {"dnsServers": [], "appliedDnsServers": []},
            "enableAcceleratedNetworking": nic.accelerated,
            "enableIPForwarding": false,
            "vnetEncryptionSupported": false,
        });
        let k = key(&nic.sub, &nic.rg, &nic.name);
        if let Some((_, vm)) = self.nic_owner(&k) {
            let vm_id = vm.id();
            props["virtualMachine"] = json!({ "id": vm_id });
            props["macAddress"] = json!(nic.mac);
            props["primary"] = json!(true);
        }
        let mut body = json!({
            "name": nic.name,
            "id": id,
            "location": nic.location,
            "properties": props,
            "type": "Microsoft.Network/networkInterfaces",
        });
        if nic.tags.is_object() {
            body["tags"] = nic.tags.clone();
        }
        body
    }

    fn put_nic(&mut self, r: &Res, body: &[u8], failure: Option<(String, String)>) -> Reply {
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return arm_error(400, "InvalidRequestFormat", "Cannot parse the request.");
        };
        let Some(location) = v["location"].as_str() else {
            return bad_format("location");
        };
        let configs = v["properties"]["ipConfigurations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if configs.is_empty() {
            return bad_format("properties.ipConfigurations");
        }
        for (i, c) in configs.iter().enumerate() {
            if c["properties"]["subnet"]["id"].as_str().is_none() {
                return bad_format(&format!(
                    "properties.ipConfigurations[{i}].properties.subnet.id"
                ));
            }
        }
        let k = r.key();
        let old = self.nics.remove(&k);
        let existed = old.is_some();
        let (mut addresses, guid, mac) = match old {
            Some(n) => (n.addresses, n.guid, n.mac),
            None => (Vec::new(), uuid(), mac_address()),
        };
        while addresses.len() < configs.len() {
            let n = self.next_ip;
            self.next_ip += 1;
            addresses.push(format!("10.0.{}.{}", n / 256, n % 256));
        }
        addresses.truncate(configs.len());
        let nic = Nic {
            sub: r.sub.clone(),
            rg: r.rg.clone(),
            name: r.name.clone(),
            location: location.to_string(),
            tags: v["tags"].clone(),
            configs,
            addresses,
            state: "Updating".into(),
            guid: guid.clone(),
            mac,
            accelerated: v["properties"]["enableAcceleratedNetworking"]
                .as_bool()
                .unwrap_or(false),
        };
        let reply = Reply::json(if existed { 200 } else { 201 }, self.nic_body(&nic));
        self.nics.insert(k.clone(), nic);
        let path = format!(
            "/subscriptions/{}/providers/Microsoft.Network/locations/{}/operations/{}",
            r.sub,
            norm_location(location),
            uuid()
        );
        let url = self.start_op(
            path,
            &format!("api-version={NETWORK_API}"),
            Effect::NicReady(k, guid),
            failure,
        );
        reply.poll_at("azure-asyncoperation", url)
    }

    fn delete_nic(&mut self, r: &Res, failure: Option<(String, String)>) -> Reply {
        let k = r.key();
        let nic_id = r.nic_id();
        if let Some((_, vm)) = self.nic_owner(&k) {
            let vm_id = vm.id();
            return arm_error(
                400,
                "NicInUse",
                &format!(
                    "Network Interface {nic_id} is used by existing resource {vm_id}. In order to delete the network interface, it must be dissociated from the resource. To learn more, see aka.ms/deletenic."
                ),
            );
        }
        let Some(nic) = self.nics.get_mut(&k) else {
            return Reply::empty(204);
        };
        nic.state = "Deleting".into();
        let guid = nic.guid.clone();
        let path = format!("{nic_id}/operationResults/{}", uuid());
        let url = self.start_op(
            path,
            &format!("api-version={NETWORK_API}"),
            Effect::NicGone(k, guid),
            failure,
        );
        Reply::empty(202).poll_at("location", url)
    }

    fn put_vm(&mut self, r: &Res, body: &[u8], failure: Option<(String, String)>) -> Reply {
        let v = match serde_json::from_slice::<Value>(body) {
            Ok(v) => v,
            Err(e) => {
                return arm_error(
                    400,
                    "InvalidRequestContent",
                    &format!(
                        "The request content was invalid and could not be deserialized: '{e}'."
                    ),
                );
            }
        };
        let vk = r.key();
        let p = &v["properties"];
        let os = &p["osProfile"];
        let Some(location) = v["location"].as_str() else {
            return missing("location");
        };
        for field in ["computerName", "adminUsername"] {
            if os[field].as_str().is_none_or(str::is_empty) {
                return missing(&format!("osProfile.{field}"));
            }
        }
        let custom_data = match &os["customData"] {
            Value::Null => Some(String::new()),
            Value::String(s) if s.len() <= 87380 => STANDARD
                .decode(s)
                .ok()
                .map(|b| String::from_utf8_lossy(&b).into_owned()),
            _ => None,
        };
        let Some(custom_data) = custom_data else {
            return arm_error_at(
                400,
                "InvalidParameter",
                "Custom data in OSProfile must be in Base64 encoding and with a maximum length of 87380 characters.",
                "customData",
            );
        };
        let Some(size) = p["hardwareProfile"]["vmSize"].as_str() else {
            return missing("hardwareProfile.vmSize");
        };
        let refs = p["networkProfile"]["networkInterfaces"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if refs.is_empty() {
            return missing("networkProfile.networkInterfaces");
        }
        let (mut nics, mut nic_ids) = (Vec::new(), Vec::new());
        for (i, n) in refs.iter().enumerate() {
            let Some(id) = n["id"].as_str() else {
                return missing(&format!("networkProfile.networkInterfaces[{i}].id"));
            };
            let nk = parse_nic_id(id)
                .filter(|k| k.0 == vk.0 && k.1 == vk.1 && self.nics.contains_key(k));
            let Some(nk) = nk else {
                return arm_error_at(
                    400,
                    "InvalidParameter",
                    &format!(
                        "Network interface '{id}' referenced by the virtual machine was not found in resource group '{}'.",
                        r.rg
                    ),
                    "networkProfile.networkInterfaces",
                );
            };
            if let Some((owner, vm)) = self.nic_owner(&nk)
                && *owner != vk
            {
                return arm_error_at(
                    400,
                    "InvalidParameter",
                    &format!(
                        "Network interface '{id}' is already used by virtual machine '{}'.",
                        vm.fake.name
                    ),
                    "networkProfile.networkInterfaces",
                );
            }
            let delete = n["properties"]["deleteOption"].as_str() == Some("Delete");
            nics.push((nk, delete));
            nic_ids.push(id.to_string());
        }
        if !SIZES.iter().any(|s| s.0.eq_ignore_ascii_case(size)) {
            return arm_error(
                409,
                "SkuNotAvailable",
                &format!(
                    "The requested VM size for resource 'Following SKUs have failed for Capacity Restrictions: {size}' is currently not available in location '{location}'. Please try another size or deploy to a different location or different zone. See https://aka.ms/azureskunotavailable for details."
                ),
            );
        }

        let existing = self.vms.get(&vk);
        let vm_id = existing.map_or_else(uuid, |vm| vm.vm_id.clone());
        let name = existing.map_or_else(|| r.name.clone(), |vm| vm.fake.name.clone());
        let rg = existing.map_or_else(|| r.rg.clone(), |vm| vm.fake.resource_group.clone());
        let storage = &p["storageProfile"];
        let disk_name = storage["osDisk"]["name"]
            .as_str()
            .map_or_else(|| format!("{name}_OsDisk"), String::from);
        let mut os_disk = if storage["osDisk"].is_object() {
            storage["osDisk"].clone()
        } else {
            json!({"createOption": "FromImage"})
        };
        let os_type = if os["windowsConfiguration"].is_object() {
            "Windows"
        } else {
            "Linux"
        };
        os_disk["name"] = json!(disk_name);
        default_field(&mut os_disk, "osType", json!(os_type));
        default_field(&mut os_disk, "caching", json!("ReadWrite"));
        default_field(&mut os_disk, "deleteOption", json!("Detach"));
        default_field(&mut os_disk, "diskSizeGB", json!(30));
        os_disk["managedDisk"]["id"] = json!(resource_id(
            &r.sub,
            &rg,
            "Microsoft.Compute/disks",
            &disk_name
        ));
        let os_disk_delete = os_disk["deleteOption"].as_str() == Some("Delete");
        let mut os_profile = os.clone();
        if let Some(o) = os_profile.as_object_mut() {
            o.remove("customData");
            o.remove("adminPassword");
            o.entry("secrets").or_insert(json!([]));
        }
        let mut props = json!({
            "vmId": vm_id,
            "hardwareProfile": {"vmSize": size},
            "storageProfile": {
                "imageReference": storage["imageReference"],
                "osDisk": os_disk,
                "dataDisks": [],
            },
            "osProfile": os_profile,
            "networkProfile": p["networkProfile"],
        });
        for field in [
            "priority",
            "evictionPolicy",
            "billingProfile",
            "diagnosticsProfile",
        ] {
            if !p[field].is_null() {
                props[field] = p[field].clone();
            }
        }
        let existed = existing.is_some();
        let fake = FakeVm {
            name,
            resource_group: rg.clone(),
            location: location.to_string(),
            size: size.to_string(),
            tags: tags_of(&v["tags"]),
            custom_data,
            provisioning_state: if existed { "Updating" } else { "Creating" }.into(),
            nic_ids,
            spot: p["priority"]
                .as_str()
                .is_some_and(|s| s.eq_ignore_ascii_case("Spot")),
        };
        if !existed {
            self.created.push(fake.clone());
        }
        let disk_key = key(&r.sub, &rg, &disk_name);
        self.disks.insert(disk_key.clone(), disk_name);
        let vm = Vm {
            sub: r.sub.clone(),
            fake,
            vm_id: vm_id.clone(),
            props,
            os_disk: disk_key,
            os_disk_delete,
            nics,
        };
        let reply = Reply::json(if existed { 200 } else { 201 }, vm_body(&vm));
        self.vms.insert(vk.clone(), vm);
        let path = format!(
            "/subscriptions/{}/providers/Microsoft.Compute/locations/{}/operations/{}",
            r.sub,
            norm_location(location),
            uuid()
        );
        let url = self.start_op(
            path,
            &format!("api-version={COMPUTE_API}"),
            Effect::VmReady(vk, vm_id),
            failure,
        );
        reply.poll_at("azure-asyncoperation", url)
    }

    fn delete_vm(&mut self, r: &Res, failure: Option<(String, String)>) -> Reply {
        let k = r.key();
        let Some(vm) = self.vms.get_mut(&k) else {
            return Reply::empty(204);
        };
        vm.fake.provisioning_state = "Deleting".into();
        let (vm_id, location) = (vm.vm_id.clone(), norm_location(&vm.fake.location));
        let path = format!(
            "/subscriptions/{}/providers/Microsoft.Compute/locations/{location}/operations/{}",
            r.sub,
            uuid()
        );
        let url = self.start_op(
            path,
            &format!("monitor=true&api-version={COMPUTE_API}"),
            Effect::VmGone(k, vm_id),
            failure,
        );
        Reply::empty(202).poll_at("location", url)
    }

    fn list_vms(&self, r: &Res, skiptoken: Option<&str>) -> Reply {
        let skip = match skiptoken.map(str::parse::<usize>) {
            None => 0,
            Some(Ok(n)) => n,
            Some(Err(_)) => {
                return arm_error_at(
                    400,
                    "InvalidParameter",
                    "The $skiptoken is invalid.",
                    "$skiptoken",
                );
            }
        };
        let (sub, rg) = (r.sub.to_ascii_lowercase(), r.rg.to_ascii_lowercase());
        let all: Vec<&Vm> = self
            .vms
            .iter()
            .filter(|(k, _)| k.0 == sub && k.1 == rg)
            .map(|(_, vm)| vm)
            .collect();
        let value: Vec<Value> = all
            .iter()
            .skip(skip)
            .take(PAGE)
            .map(|vm| vm_body(vm))
            .collect();
        let mut body = json!({ "value": value });
        if skip + PAGE < all.len() {
            body["nextLink"] = json!(format!(
                "{}/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines?api-version={COMPUTE_API}&$skiptoken={}",
                self.url,
                r.sub,
                r.rg,
                skip + PAGE
            ));
        }
        Reply::json(200, body)
    }
}

fn vm_body(vm: &Vm) -> Value {
    let mut props = vm.props.clone();
    props["provisioningState"] = json!(vm.fake.provisioning_state);
    let mut body = json!({
        "id": vm.id(),
        "type": "Microsoft.Compute/virtualMachines",
        "name": vm.fake.name,
        "location": vm.fake.location,
        "properties": props,
    });
    if !vm.fake.tags.is_empty() {
        body["tags"] = json!(vm.fake.tags);
    }
    body
}

/// The key of a NIC's resource id.
fn parse_nic_id(id: &str) -> Option<Key> {
    let lower = id.to_ascii_lowercase();
    let segs: Vec<&str> = lower.split('/').collect();
    let template =
        "/subscriptions/*/resourcegroups/*/providers/microsoft.network/networkinterfaces/*";
    let fits = template.split('/').count() == segs.len()
        && template
            .split('/')
            .zip(&segs)
            .all(|(t, s)| t == "*" || t == *s);
    fits.then(|| key(segs[2], segs[4], segs[8]))
}

fn default_field(v: &mut Value, field: &str, default: Value) {
    if v[field].is_null() {
        v[field] = default;
    }
}

fn tags_of(tags: &Value) -> BTreeMap<String, String> {
    tags.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), String::from),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// "West US" -> "westus", as in operation URLs.
fn norm_location(location: &str) -> String {
    location.replace(' ', "").to_ascii_lowercase()
}

/// Decodes %XX (and '+' as a space in forms and queries).
fn decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
                continue;
            }
            (b'+', _) if plus_is_space => out.push(b' '),
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a=1&b=2` (a query or a form body), decoded.
fn parse_pairs(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k, true), decode(v, true))
        })
        .collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    RandomState::new().hash_one((COUNTER.fetch_add(1, Ordering::Relaxed), nanos))
}

fn uuid() -> String {
    let (a, b) = (random_u64(), random_u64());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    )
}

fn mac_address() -> String {
    let r = random_u64().to_le_bytes();
    format!("00-0D-3A-{:02X}-{:02X}-{:02X}", r[0], r[1], r[2])
}
