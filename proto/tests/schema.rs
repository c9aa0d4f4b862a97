//! The published JSON Schema accepts what the parser accepts.

use skiff_proto::{Format, parse_workloads, schema::workload_schema};

const EXAMPLE: &str = include_str!("../../docs/examples/web.yaml");

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&workload_schema()).expect("the schema is a valid JSON Schema")
}

fn yaml(text: &str) -> serde_json::Value {
    serde_yaml_ng::from_str(text).unwrap()
}

#[test]
fn the_example_validates_against_the_schema() {
    let v = validator();
    let doc = yaml(EXAMPLE);
    let errors: Vec<String> = v.iter_errors(&doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // And what the parser makes of it, written back out, validates too.
    let parsed = parse_workloads(EXAMPLE, Format::Yaml).unwrap();
    let written = serde_json::to_value(&parsed[0]).unwrap();
    assert!(v.is_valid(&written), "{written}");
}

#[test]
fn the_schema_refuses_typos_and_bad_values() {
    let v = validator();
    for bad in [
        "name: web\nimage: busybox\nreplica: 3",
        "name: web\nimage: busybox\nrestart: sometimes",
        "name: web\nimage: busybox\nports: [{container: 70000}]",
        "name: web\nimage: busybox\nresources: {memory: 12Zb}",
        "name: web\nimage: busybox\nplacement: {spread: zone}",
        "image: busybox",
    ] {
        assert!(!v.is_valid(&yaml(bad)), "schema accepted {bad:?}");
        assert!(
            parse_workloads(bad, Format::Yaml).is_err(),
            "parser accepted {bad:?}"
        );
    }
}
