//! `/v1/secrets`: create, rotate, list and delete secrets. Values go in,
//! base64 in `data`, and never come out: reads show names, keys and
//! versions; errors name the field, never a value.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use base64::Engine as _;
use serde::Deserialize;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::scope::{self, NamespaceQuery};
use crate::control::secrets::SecretView;
use crate::secrets::SecretData;

/// A new secret: its name and data (each key's value, base64). The
/// schema in the document is [`request_schema`]'s; the handler reads the
/// body without ever echoing a value.
#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub(super) struct SecretCreate {
    name: String,
    data: BTreeMap<String, String>,
}

/// A secret's new data (a rotation).
#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub(super) struct SecretUpdate {
    data: BTreeMap<String, String>,
}

/// The JSON Schema of a secret request body, as the handler checks it
/// (names, keys, base64 values: more than utoipa's types can say).
pub(super) fn request_schema(with_name: bool) -> serde_json::Value {
    let data = serde_json::json!({
        "type": "object",
        "minProperties": 1,
        "description": "Key → value, base64 (standard alphabet, padded).",
        "propertyNames": { "pattern": "^(?!\\.{1,2}$)[A-Za-z0-9._-]{1,253}$" },
        "additionalProperties": {
            "type": "string",
            "pattern": "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
        }
    });
    if with_name {
        serde_json::json!({
            "type": "object", "additionalProperties": false, "required": ["name", "data"],
            "properties": {
                "name": { "type": "string", "pattern": skiff_proto::schema::spec::NAME_PATTERN },
                "data": data
            }
        })
    } else {
        serde_json::json!({
            "type": "object", "additionalProperties": false, "required": ["data"],
            "properties": { "data": data }
        })
    }
}

/// Standard, padded base64, as the schema's pattern (which cannot tell
/// the unused bits of the last character apart).
const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// The body, read without serde's messages (which quote what they got).
fn read(body: &[u8], with_name: bool) -> ApiResult<(Option<String>, SecretData)> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| ApiError::bad("the body is not a JSON object"))?;
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::bad("the body is not a JSON object"))?;
    let fields: &[&str] = if with_name {
        &["name", "data"]
    } else {
        &["data"]
    };
    if let Some(k) = obj.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(ApiError::bad(format!(
            "{k}: unknown field ({})",
            fields.join(", ")
        )));
    }
    let name = match obj.get("name") {
        None => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::bad("name: not a string")),
    };
    let data = obj
        .get("data")
        .and_then(|d| d.as_object())
        .ok_or_else(|| ApiError::bad("data: required, an object of key → base64 value"))?;
    let mut out = BTreeMap::new();
    for (k, v) in data {
        let bytes = v
            .as_str()
            .and_then(|s| LENIENT.decode(s).ok())
            .ok_or_else(|| ApiError::bad(format!("data.{k}: not a base64 string")))?;
        out.insert(k.clone(), bytes);
    }
    Ok((name, SecretData(out)))
}

/// Every secret: names, keys, versions (never values).
#[utoipa::path(get, path = "/v1/secrets", tag = "secrets", params(NamespaceQuery),
    responses((status = 200, body = [SecretView]), (status = 404, description = "No such namespace", body = ApiError)))]
pub(super) async fn list(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    ns: Result<Query<NamespaceQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<SecretView>>> {
    let many = scope::many(&s, &caller, ns)?;
    let mut v = s.control.secrets();
    v.retain(|x| many.has(&x.namespace));
    Ok(Json(v))
}

/// Creates a secret, encrypted at rest.
#[utoipa::path(post, path = "/v1/secrets", tag = "secrets", request_body = SecretCreate, params(NamespaceQuery),
    responses((status = 201, body = SecretView), (status = 400, body = ApiError),
        (status = 404, description = "No such namespace", body = ApiError),
        (status = 409, description = "The name is taken", body = ApiError),
        (status = 503, description = "No secrets key (over etcd: secrets_key_file)", body = ApiError)))]
pub(super) async fn create(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    ns: Result<Query<NamespaceQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<SecretView>)> {
    let scope = scope::one(&s, &caller, ns)?;
    let (name, data) = read(&body?, true)?;
    let name = name.ok_or_else(|| ApiError::bad("name: required"))?;
    if !skiff_proto::is_valid_name(&name) {
        return Err(ApiError::bad(format!(
            "name: {name:?} is not a valid secret name (lowercase letters, digits and '-')"
        )));
    }
    let v = s.control.put_secret(&scope.key(&name)?, data, true)?;
    Ok((StatusCode::CREATED, Json(v)))
}

/// Replaces a secret's data (a rotation): a new version, which reaches
/// running containers' files.
#[utoipa::path(put, path = "/v1/secrets/{name}", tag = "secrets", params(("name" = String, Path), NamespaceQuery),
    request_body = SecretUpdate,
    responses((status = 200, body = SecretView), (status = 400, body = ApiError), (status = 404, body = ApiError),
        (status = 409, description = "A workload reads a key the new data lacks", body = ApiError),
        (status = 503, description = "No secrets key (over etcd: secrets_key_file)", body = ApiError)))]
pub(super) async fn update(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    ns: Result<Query<NamespaceQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<SecretView>> {
    let key = scope::one(&s, &caller, ns)?.key(&name)?;
    let (_, data) = read(&body?, false)?;
    Ok(Json(s.control.put_secret(&key, data, false)?))
}

/// Deletes a secret no workload uses.
#[utoipa::path(delete, path = "/v1/secrets/{name}", tag = "secrets", params(("name" = String, Path), NamespaceQuery),
    responses((status = 204, description = "Deleted"), (status = 404, body = ApiError),
        (status = 409, description = "A workload uses it", body = ApiError)))]
pub(super) async fn delete(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    ns: Result<Query<NamespaceQuery>, QueryRejection>,
) -> ApiResult<StatusCode> {
    let key = scope::one(&s, &caller, ns)?.key(&name)?;
    s.control.delete_secret(&key)?;
    Ok(StatusCode::NO_CONTENT)
}
