//! The published JSON Schema of a workload spec, generated from the types so
//! it cannot drift from what the parser accepts.

pub mod decimal;
pub mod spec;

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

/// The same schema for an OpenAPI 3.1 document: the workload's schema and
/// every definition it refers to, by name, with references pointing into
/// `#/components/schemas/` (where the caller puts the definitions).
pub fn workload_schema_components() -> (
    serde_json::Value,
    serde_json::Map<String, serde_json::Value>,
) {
    let settings = schemars::generate::SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = "/components/schemas".into();
    });
    let mut schema = settings
        .into_generator()
        .into_root_schema_for::<WorkloadSpec>()
        .to_value();
    let defs = schema
        .as_object_mut()
        .and_then(|o| {
            o.remove("$schema");
            o.remove("components")
        })
        .and_then(|c| c.get("schemas").and_then(|s| s.as_object()).cloned())
        .unwrap_or_default();
    (schema, defs)
}

#[cfg(test)]
mod tests {
    #[test]
    fn openapi_components_resolve_inside_the_document() {
        let (schema, defs) = super::workload_schema_components();
        let text = serde_json::to_string(&schema).unwrap();
        assert!(!text.contains("$defs"), "{text}");
        for def in defs.values() {
            assert!(!serde_json::to_string(def).unwrap().contains("#/$defs/"));
        }
        // Every reference names a definition that is there.
        let all = format!("{text}{}", serde_json::to_string(&defs).unwrap());
        for r in all.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = r.split('"').next().unwrap();
            assert!(defs.contains_key(name), "{name} is not defined");
        }
        assert!(!defs.is_empty());
    }
}
