//! `/v1/join-tokens` and `/v1/api-tokens`: made, listed and revoked by an
//! admin. A token's secret is shown once, when it is made; the gateway
//! keeps its hash, whose first 12 hex digits are the token's id.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::auth::Caller;
use super::body::json_body;
use super::error::{ApiError, ApiResult};
use crate::control::Role;
use crate::control::changes::token_id;

/// Longest a join token may be valid.
const MAX_JOIN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenRequest {
    /// The site the node joins.
    pub site: String,
    /// How long the token is valid, in seconds (default 3600, at most 7
    /// days).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 604_800)]
    pub ttl_seconds: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenResponse {
    /// Single use; give it to `skiff-agent serve --join-token`.
    pub token: String,
    /// The token's id, to revoke it by.
    pub id: String,
    /// What the agent pins (`--ca-hash`).
    pub ca_hash: String,
    pub site: String,
    pub expires_ms: i64,
    /// Where agents reach this gateway (`--gateway`): its agent port at
    /// each advertised name.
    pub gateway_urls: Vec<String>,
}

/// A join token as listed (no secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenView {
    pub id: String,
    pub site: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    /// A node joined with it (it opens nothing any more).
    pub used: bool,
}

/// A single-use join token for a site.
#[utoipa::path(post, path = "/v1/join-tokens", tag = "tokens", request_body = JoinTokenRequest,
    responses(
        (status = 201, body = JoinTokenResponse),
        (status = 400, description = "Unknown site or a TTL out of range", body = ApiError)))]
pub(super) async fn create_join_token(
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<JoinTokenResponse>)> {
    let req: JoinTokenRequest = json_body(&body?)?;
    let ttl = Duration::from_secs(req.ttl_seconds.unwrap_or(3600));
    if ttl < Duration::from_secs(1) || ttl > MAX_JOIN_TTL {
        return Err(ApiError::bad(format!(
            "ttl_seconds: between 1 and {} (7 days)",
            MAX_JOIN_TTL.as_secs()
        )));
    }
    let t = s.control.issue_join_token(&req.site, ttl)?;
    Ok((
        StatusCode::CREATED,
        Json(JoinTokenResponse {
            token: t.secret,
            id: t.id,
            ca_hash: s.pki.ca_hash(),
            site: t.record.site,
            expires_ms: t.record.expires_ms,
            gateway_urls: gateway_urls(&s),
        }),
    ))
}

/// `https://NAME:PORT` of the agent port for every advertised name (the
/// listen address itself when it is not a wildcard, else the host name).
fn gateway_urls(s: &AppState) -> Vec<String> {
    let cfg = &s.control.config;
    let port = cfg.agent_listen.port();
    let mut names: Vec<String> = cfg.advertise.clone();
    if names.is_empty() {
        names.push(if cfg.agent_listen.ip().is_unspecified() {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "localhost".into())
        } else {
            cfg.agent_listen.ip().to_string()
        });
    }
    names
        .iter()
        .map(|n| {
            if n.contains(':') && !n.starts_with('[') {
                format!("https://[{n}]:{port}")
            } else {
                format!("https://{n}:{port}")
            }
        })
        .collect()
}

/// Join tokens that are still valid or were used, newest first.
#[utoipa::path(get, path = "/v1/join-tokens", tag = "tokens",
    responses((status = 200, body = [JoinTokenView])))]
pub(super) async fn list_join_tokens(State(s): State<AppState>) -> Json<Vec<JoinTokenView>> {
    let mut v: Vec<JoinTokenView> = s.control.read(|st| {
        st.join_tokens
            .iter()
            .map(|(hash, t)| JoinTokenView {
                id: token_id(hash).to_string(),
                site: t.site.clone(),
                created_ms: t.created_ms,
                expires_ms: t.expires_ms,
                used: t.used,
            })
            .collect()
    });
    v.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(a.id.cmp(&b.id)));
    Json(v)
}

/// Revokes a join token (by its id, or a prefix of 4 or more digits).
#[utoipa::path(delete, path = "/v1/join-tokens/{id}", tag = "tokens", params(("id" = String, Path)),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, body = ApiError),
        (status = 409, description = "The prefix names several tokens", body = ApiError)))]
pub(super) async fn revoke_join_token(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.control.revoke_join_token(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiTokenRequest {
    /// Lowercase letters, digits and `-`, starting and ending with a
    /// letter or digit (at most 63).
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    pub name: String,
    pub role: Role,
    /// The namespaces it is bound to, with `role` in each. Empty (the
    /// default): a fleet token, which only a fleet admin makes. A
    /// namespace admin makes tokens bound to its own namespaces.
    #[serde(default)]
    pub namespaces: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiTokenResponse {
    /// Shown once; the gateway keeps only its hash.
    pub token: String,
    pub id: String,
    pub name: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

/// An API token as listed (no secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiTokenView {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_ms: i64,
    /// Empty: a fleet token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

/// An API token with a role.
#[utoipa::path(post, path = "/v1/api-tokens", tag = "tokens", request_body = ApiTokenRequest,
    responses((status = 201, body = ApiTokenResponse), (status = 400, body = ApiError),
        (status = 404, description = "A namespace it names does not exist (or is not the caller's)", body = ApiError)))]
pub(super) async fn create_api_token(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<ApiTokenResponse>)> {
    let req: ApiTokenRequest = json_body(&body?)?;
    if !caller.is_fleet() {
        if req.namespaces.is_empty() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "namespaces: a namespace's token makes tokens bound to its namespaces only",
            ));
        }
        for ns in &req.namespaces {
            super::scope::visible(&s, &caller, ns)?;
        }
    }
    let t = s
        .control
        .issue_api_token(&req.name, req.role, req.namespaces)?;
    Ok((
        StatusCode::CREATED,
        Json(ApiTokenResponse {
            token: t.secret,
            id: t.id,
            name: t.record.name,
            role: t.record.role,
            namespaces: t.record.namespaces,
        }),
    ))
}

/// API tokens, oldest first (the admin token is not one of them).
#[utoipa::path(get, path = "/v1/api-tokens", tag = "tokens",
    responses((status = 200, body = [ApiTokenView])))]
pub(super) async fn list_api_tokens(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Json<Vec<ApiTokenView>> {
    let mut v: Vec<ApiTokenView> = s.control.read(|st| {
        st.api_tokens
            .iter()
            .filter(|(_, t)| caller.is_fleet() || t.is_within(&caller.namespaces))
            .map(|(hash, t)| ApiTokenView {
                id: token_id(hash).to_string(),
                name: t.name.clone(),
                role: t.role,
                created_ms: t.created_ms,
                namespaces: t.namespaces.clone(),
            })
            .collect()
    });
    v.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
    Json(v)
}

/// Revokes an API token: it authenticates nothing from now on.
#[utoipa::path(delete, path = "/v1/api-tokens/{id}", tag = "tokens", params(("id" = String, Path)),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, body = ApiError),
        (status = 409, description = "The prefix names several tokens", body = ApiError)))]
pub(super) async fn revoke_api_token(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let within = (!caller.is_fleet()).then_some(caller.namespaces.as_slice());
    s.control.revoke_api_token(&id, within)?;
    Ok(StatusCode::NO_CONTENT)
}
