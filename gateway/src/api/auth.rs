//! Who is calling: the bearer token checked against the admin token and
//! the stored API tokens, and the caller's role against the route's. The
//! route table in `api/mod.rs` gives every route its role; this layer is
//! the only place that checks it.

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::control::Role;
use crate::pki::sha256_hex;

/// The authenticated caller, for handlers that want it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
    /// The namespaces a tenant's token is bound to; empty: a fleet token.
    pub namespaces: Vec<String>,
}

impl Caller {
    /// A fleet token: every namespace, and the fleet's own routes.
    pub fn is_fleet(&self) -> bool {
        self.namespaces.is_empty()
    }

    /// Whether it may see namespace `ns` at all.
    pub fn sees(&self, ns: &str) -> bool {
        self.is_fleet() || self.namespaces.iter().any(|n| n == ns)
    }
}

/// The caller of the bearer token in `headers`.
pub(super) fn authenticate(s: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthenticated("an Authorization: Bearer token is required"))?;
    if constant_time_eq(token.as_bytes(), s.pki.admin_token.as_bytes()) {
        return Ok(Caller {
            role: Role::Admin,
            namespaces: Vec::new(),
        });
    }
    let hash = sha256_hex(token.as_bytes());
    s.control
        .read(|st| {
            st.api_tokens.get(&hash).map(|t| Caller {
                role: t.role,
                namespaces: t.namespaces.clone(),
            })
        })
        .ok_or_else(|| ApiError::unauthenticated("unknown token"))
}

/// The layer of every route that needs a role: 401 without a known token,
/// 403 with one whose role is below `min`, or a namespace's token on a
/// route of the fleet's own (`fleet`).
pub(super) async fn require(
    State((s, min, fleet)): State<(AppState, Role, bool)>,
    mut req: Request,
    next: Next,
) -> Response {
    let caller = match authenticate(&s, req.headers()) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if fleet && !caller.is_fleet() {
        return ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "forbidden",
            "this needs a fleet token (the token is bound to namespaces)",
        )
        .into_response();
    }
    let role = caller.role;
    if role < min {
        return ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "forbidden",
            format!("this needs the {min} role"),
        )
        .into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
