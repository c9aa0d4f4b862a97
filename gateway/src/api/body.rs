//! Request bodies: JSON into a type with the failing field named, and
//! workload specs (YAML or JSON) through the same code as `skiff validate`.

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use serde::Deserialize;
use skiff_proto::{Format, WorkloadSpec, parse_workloads};

use super::error::{ApiError, ApiResult};

/// A JSON body into `T`; errors name the field (`replicas: invalid type…`).
pub(super) fn json_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> ApiResult<T> {
    let mut value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad(e.to_string()))?;
    // Every JSON body is an object (serde would take a struct from an array).
    if !value.is_object() {
        return Err(ApiError::bad("the body is not a JSON object"));
    }
    // JSON Schema counts `3.0` as an integer; so does the API.
    skiff_proto::integral_json(&mut value);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::bad(inner.to_string())
        } else {
            ApiError::bad(format!("{path}: {inner}"))
        }
    })
}

/// One workload spec from a YAML or JSON body.
pub(super) fn spec_body(body: &[u8]) -> ApiResult<WorkloadSpec> {
    let text = std::str::from_utf8(body).map_err(|_| ApiError::bad("the body is not UTF-8"))?;
    let mut specs = parse_workloads(text, Format::Detect).map_err(|e| {
        let errors: Vec<String> = e.0.iter().map(|f| f.to_string()).collect();
        let mut err = ApiError::bad(errors.first().cloned().unwrap_or_default());
        err.errors = errors;
        err
    })?;
    if specs.len() != 1 {
        return Err(ApiError::bad(format!(
            "expected one workload, got {}",
            specs.len()
        )));
    }
    Ok(specs.remove(0))
}

/// A query string into `T`, or a 400 that says what was wrong.
pub(super) fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::bad(e.body_text()))
}
