//! Which namespace a request is about: `?namespace=NAME` (`default`
//! when absent), or `?namespace=*` on a list for every namespace the
//! caller may see. A namespace the caller's token is not bound to is
//! answered as one that does not exist (404), so names do not leak.

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use serde::Deserialize;
use skiff_proto::namespace::{DEFAULT, qualify};

use super::AppState;
use super::auth::Caller;
use super::body::query;
use super::error::{ApiError, ApiResult};
use crate::control::namespaces;

/// Every namespace the caller may see.
pub const ALL: &str = "*";

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct NamespaceQuery {
    /// The namespace (when absent: `default`, or for a token not bound to
    /// `default`, the first it is bound to); on a list, `*` for every
    /// namespace the token may see.
    pub namespace: Option<String>,
}

/// One namespace the caller may act in.
#[derive(Debug, Clone)]
pub(super) struct Scope {
    pub namespace: String,
}

impl Scope {
    /// The key of `name` in it. A name with a `.` (or anything else a
    /// name cannot hold) is not found: it must never reach into another
    /// namespace's keys.
    pub fn key(&self, name: &str) -> ApiResult<String> {
        if !skiff_proto::is_valid_name(name) {
            return Err(ApiError::not_found(format!(
                "{name:?} is not a name (lowercase letters, digits and '-')"
            )));
        }
        Ok(qualify(&self.namespace, name))
    }
}

/// The namespaces a list shows.
#[derive(Debug, Clone)]
pub(super) enum Many {
    One(String),
    /// Every namespace the caller may see (`None`: all of them).
    All(Option<Vec<String>>),
}

impl Many {
    pub fn has(&self, ns: &str) -> bool {
        match self {
            Many::One(n) => n == ns,
            Many::All(None) => true,
            Many::All(Some(v)) => v.iter().any(|n| n == ns),
        }
    }
}

/// The namespace of a request that names none: `default`, or for a
/// token not bound to it, the first it is bound to.
fn implied(caller: &Caller) -> String {
    if caller.sees(DEFAULT) {
        DEFAULT.to_string()
    } else {
        caller.namespaces[0].clone()
    }
}

fn no_namespace(ns: &str) -> ApiError {
    ApiError::not_found(format!("no namespace {ns}"))
}

/// The namespace `ns` if it exists and the caller may see it.
pub(super) fn visible(s: &AppState, caller: &Caller, ns: &str) -> ApiResult<()> {
    let exists = s.control.read(|st| namespaces::get(st, ns).is_some());
    if exists && caller.sees(ns) {
        Ok(())
    } else {
        Err(no_namespace(ns))
    }
}

/// The one namespace of a request (not `*`).
pub(super) fn one(
    s: &AppState,
    caller: &Caller,
    q: Result<Query<NamespaceQuery>, QueryRejection>,
) -> ApiResult<Scope> {
    let ns = query(q)?.namespace.unwrap_or_else(|| implied(caller));
    if ns == ALL {
        return Err(ApiError::bad(
            "namespace: * lists every namespace; this needs one",
        ));
    }
    visible(s, caller, &ns)?;
    Ok(Scope { namespace: ns })
}

/// The namespaces of a list.
pub(super) fn many(
    s: &AppState,
    caller: &Caller,
    q: Result<Query<NamespaceQuery>, QueryRejection>,
) -> ApiResult<Many> {
    match query(q)?.namespace {
        Some(ns) if ns == ALL => Ok(Many::All(
            (!caller.is_fleet()).then(|| caller.namespaces.clone()),
        )),
        ns => {
            let ns = ns.unwrap_or_else(|| implied(caller));
            visible(s, caller, &ns)?;
            Ok(Many::One(ns))
        }
    }
}
