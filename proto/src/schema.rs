//! The published JSON Schema of a workload spec, generated from the types so
//! it cannot drift from what the parser accepts.

use crate::WorkloadSpec;

/// The JSON Schema (draft 2020-12) of one workload spec.
pub fn workload_schema() -> serde_json::Value {
    let mut schema = schemars::schema_for!(WorkloadSpec).to_value();
    if let Some(obj) = schema.as_object_mut() {
        obj.insert("$id".into(), "urn:skiff:schema:workload:v1".into());
        obj.insert("title".into(), "Skiff workload".into());
    }
    schema
}
