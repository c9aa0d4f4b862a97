//! Spec files: YAML (one or more `---` documents) or JSON (an object, or an
//! array of objects). Parsing and validation report field paths rooted at
//! `spec` (one document) or `spec[N]` (several).

use serde::de::DeserializeOwned;

use crate::error::{FieldError, SpecErrors};
use crate::workload::WorkloadSpec;

/// The text format of a spec file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
    /// JSON when the text starts with `{` or `[`, YAML otherwise.
    Detect,
}

impl Format {
    /// From a file name: `.json` is JSON, `.yaml`/`.yml` YAML, else detect.
    pub fn from_path(path: &std::path::Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Format::Json,
            Some("yaml" | "yml") => Format::Yaml,
            _ => Format::Detect,
        }
    }
}

fn join(root: &str, path: &serde_path_to_error::Path) -> String {
    let p = path.to_string();
    if p == "." || p.is_empty() {
        root.to_string()
    } else if p.starts_with('[') {
        format!("{root}{p}")
    } else {
        format!("{root}.{p}")
    }
}

/// One YAML document as the JSON it stands for: YAML's scalars resolved
/// by its core schema (`0` is a number, `"0"` and `web` are strings), so a
/// spec means the same in YAML as in JSON and the one JSON Schema is the
/// truth for both. (Read straight into the types, serde_yaml_ng would take
/// `stop_timeout: 0` as the string "0".) Keys that are numbers become
/// strings, as JSON has no others.
fn yaml_to_json(
    root: &str,
    doc: serde_yaml_ng::Deserializer<'_>,
) -> Result<serde_json::Value, FieldError> {
    use serde::Deserialize as _;
    let yaml = serde_yaml_ng::Value::deserialize(doc)
        .map_err(|e| FieldError::new(root.to_string(), e.to_string()))?;
    let mut json = serde_json::to_value(&yaml)
        .map_err(|e| FieldError::new(root.to_string(), e.to_string()))?;
    integral_json(&mut json);
    Ok(json)
}

fn one<'de, D, T>(root: &str, de: D) -> Result<T, FieldError>
where
    D: serde::Deserializer<'de>,
    D::Error: std::fmt::Display,
    T: DeserializeOwned,
{
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        // serde_yaml_ng puts the path (or, for an unknown field, the
        // parent's path) in front of its message: keep only ours.
        let message = match message.split_once(": ") {
            Some((prefix, rest)) if !prefix.contains(' ') && path.starts_with(prefix) => {
                rest.to_string()
            }
            _ => message,
        };
        FieldError::new(join(root, e.path()), message)
    })
}

/// JSON Schema counts `3.0` as an integer, so the parser does too: every
/// number with no fraction becomes an integer before the types see it.
/// (The gateway's JSON bodies go through it as well.)
pub fn integral_json(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Number(n) => {
            if let Some(f) = n.as_f64()
                && !n.is_i64()
                && !n.is_u64()
                && f.fract() == 0.0
                && f.abs() < 9.0e15
            {
                *n = serde_json::Number::from(f as i64);
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(integral_json),
        serde_json::Value::Object(o) => o.values_mut().for_each(integral_json),
        _ => {}
    }
}

/// Most workloads one file may hold.
pub const MAX_DOCUMENTS: usize = 1000;

/// Parses and validates every workload in `text`.
pub fn parse_workloads(text: &str, format: Format) -> Result<Vec<WorkloadSpec>, SpecErrors> {
    // YAML allows no control characters but tab, LF, CR and NEL (and its
    // parser loops forever on a NUL): refuse them up front. (JSON's own
    // parser refuses raw control characters where JSON does.)
    let json = match format {
        Format::Json => true,
        Format::Detect => text.trim_start().starts_with(['{', '[']),
        _ => false,
    };
    if let Some((at, c)) = text.char_indices().find(|&(_, c)| {
        (c == '\0' || !json) && c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\u{85}')
    }) {
        return Err(SpecErrors::single(
            "spec",
            format!(
                "the file holds a control character (U+{:04X}) at byte {at}",
                c as u32
            ),
        ));
    }
    let trimmed = text.trim_start();
    let blank = text
        .lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#') || l == "---" || l == "...");
    if blank {
        return Err(SpecErrors::single("spec", "the file holds no workload"));
    }
    let format = match format {
        Format::Detect if trimmed.starts_with(['{', '[']) => Format::Json,
        Format::Detect => Format::Yaml,
        f => f,
    };
    let specs: Vec<WorkloadSpec> = match format {
        Format::Json => {
            let mut value: serde_json::Value = {
                let mut de = serde_json::Deserializer::from_str(text);
                one("spec", &mut de).map_err(|e| SpecErrors(vec![e]))?
            };
            integral_json(&mut value);
            if value.is_array() {
                one("spec", value).map_err(|e| SpecErrors(vec![e]))?
            } else {
                vec![one("spec", value).map_err(|e| SpecErrors(vec![e]))?]
            }
        }
        _ => {
            let docs: Vec<_> = serde_yaml_ng::Deserializer::from_str(text)
                .take(MAX_DOCUMENTS + 1)
                .collect();
            if docs.len() > MAX_DOCUMENTS {
                return Err(SpecErrors::single(
                    "spec",
                    format!("the file holds more than {MAX_DOCUMENTS} workloads"),
                ));
            }
            let many = docs.len() > 1;
            let mut out = Vec::with_capacity(docs.len());
            let mut errors = Vec::new();
            for (i, doc) in docs.into_iter().enumerate() {
                let root = if many {
                    format!("spec[{i}]")
                } else {
                    "spec".to_string()
                };
                match yaml_to_json(&root, doc).and_then(|v| one(&root, v)) {
                    Ok(spec) => out.push(spec),
                    Err(e) => errors.push(e),
                }
            }
            if !errors.is_empty() {
                return Err(SpecErrors(errors));
            }
            out
        }
    };
    if specs.is_empty() {
        return Err(SpecErrors::single("spec", "the file holds no workload"));
    }
    let many = specs.len() > 1;
    let mut errors = Vec::new();
    let mut names = std::collections::BTreeMap::new();
    for (i, spec) in specs.iter().enumerate() {
        let root = if many {
            format!("spec[{i}]")
        } else {
            "spec".to_string()
        };
        if let Err(e) = spec.validate(&root) {
            errors.extend(e.0);
        }
        if let Some(first) = names.insert(spec.name.as_str(), i) {
            errors.push(FieldError::new(
                format!("{root}.name"),
                format!("{:?} is also the name of spec[{first}]", spec.name),
            ));
        }
    }
    if errors.is_empty() {
        Ok(specs)
    } else {
        Err(SpecErrors(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const EXAMPLE: &str = r#"
name: web
replicas: 3
image: registry.example.com/shop/web:1.4
command: ["/bin/web", "--port", "8080"]
env: { LOG_LEVEL: info }
resources: { cpu: 500m, memory: 256Mi }
ports: [{ container: 8080, host: 80 }]
restart: always            # never | on-failure | always
health: { http: { path: /healthz, port: 8080 }, interval: 5s }
placement:
  sites: [onprem-dc1, aws-us-east-1, azure-westeurope]   # allowed
  prefer: [onprem-dc1]      # fill these first (cheapest)
  spread: site              # spread replicas over sites
  constraints: ["node.labels.disk == ssd"]
priority: 50
"#;

    fn errors(text: &str) -> Vec<String> {
        parse_workloads(text, Format::Detect)
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn control_characters_and_endless_streams_are_refused_quickly() {
        for text in ["\0", "name: a\nimage: b\u{1}\n", "{\"name\": \"a\u{0}\"}"] {
            let e = parse_workloads(text, Format::Detect).unwrap_err();
            assert!(
                e.0[0]
                    .to_string()
                    .starts_with("spec: the file holds a control character"),
                "{text:?}: {e:?}"
            );
        }
        // JSON Schema's integers include 3.0; so do JSON bodies.
        let specs = parse_workloads(
            "{\"name\": \"a\", \"image\": \"b\", \"replicas\": 3.0}",
            Format::Detect,
        )
        .unwrap();
        assert_eq!(specs[0].replicas, 3);
        let many = "name: a\nimage: b\n---\n".repeat(MAX_DOCUMENTS + 1);
        let e = parse_workloads(&many, Format::Yaml).unwrap_err();
        assert_eq!(
            e.0[0].to_string(),
            format!("spec: the file holds more than {MAX_DOCUMENTS} workloads")
        );
    }

    #[test]
    fn the_sketch_example_is_valid() {
        let specs = parse_workloads(EXAMPLE, Format::Yaml).unwrap();
        assert_eq!(specs.len(), 1);
        let w = &specs[0];
        assert_eq!(w.name, "web");
        assert_eq!(w.replicas, 3);
        assert_eq!(w.resources.cpu.millis(), 500);
        assert_eq!(w.resources.memory.bytes(), 256 << 20);
        assert_eq!(w.ports[0].host, Some(80));
        assert_eq!(w.health.as_ref().unwrap().interval.as_millis(), 5000);
        assert_eq!(w.placement.prefer, vec!["onprem-dc1"]);
        assert_eq!(
            w.placement.constraints[0].to_string(),
            "node.labels.disk == ssd"
        );
        assert_eq!(w.image.registry(), "registry.example.com");
    }

    #[test]
    fn json_and_yaml_agree() {
        let yaml = parse_workloads(EXAMPLE, Format::Yaml).unwrap();
        let json = serde_json::to_string(&yaml[0]).unwrap();
        let again = parse_workloads(&json, Format::Detect).unwrap();
        assert_eq!(yaml, again);
        let array = format!("[{json}]");
        assert_eq!(parse_workloads(&array, Format::Json).unwrap(), yaml);
    }

    #[test]
    fn bad_specs_name_the_field() {
        let cases: &[(&str, &str)] = &[
            (
                "name: web\nimage: busybox\nports: [{container: 80}, {container: 70000}]",
                "spec.ports[1].container: 70000 is not a port",
            ),
            (
                "name: web\nimage: busybox\nreplica: 3",
                "spec.replica: unknown field `replica`",
            ),
            (
                "name: web\nimage: busybox\nresources: {memory: 12Zb}",
                "spec.resources.memory: \"12Zb\" is not a size in bytes",
            ),
            (
                "name: web\nimage: busybox\nresources: {cpu: lots}",
                "spec.resources.cpu: \"lots\" is not a CPU quantity",
            ),
            (
                "name: Web\nimage: busybox",
                "spec.name: \"Web\" is not a valid name",
            ),
            (
                "name: web\nimage: UPPER",
                "spec.image: \"UPPER\" is not an image reference",
            ),
            (
                "name: web\nimage: busybox\nrestart: sometimes",
                "spec.restart: unknown variant `sometimes`",
            ),
            (
                "name: web\nimage: busybox\nplacement: {prefre: [a]}",
                "spec.placement.prefre: unknown field `prefre`",
            ),
            (
                "name: web\nimage: busybox\nplacement: {sites: [a], prefer: [b]}",
                "spec.placement.prefer[0]: \"b\" is not one of the allowed sites",
            ),
            (
                "name: web\nimage: busybox\nplacement: {constraints: [\"disk == ssd\"]}",
                "spec.placement.constraints[0]: \"disk == ssd\" is not a constraint",
            ),
            (
                "name: web\nimage: busybox\nhealth: {interval: 5s}",
                "spec.health: needs one probe",
            ),
            (
                "name: web\nimage: busybox\nhealth: {http: {path: x, port: 80}}",
                "spec.health.http.path: \"x\" must start with '/'",
            ),
            (
                "name: web\nimage: busybox\nhealth: {tcp: {port: 80}, interval: 5}",
                "spec.health.interval: invalid type: integer `5`, expected a duration",
            ),
            (
                "name: web\nimage: busybox\npriority: 0",
                "spec.priority: 0 is not between 1 and 100",
            ),
            (
                "name: web\nimage: busybox\nresources: {memory: 1Mi}",
                "spec.resources.memory: 1Mi is less than the minimum of 4Mi",
            ),
            (
                "name: web\nimage: busybox\nnetwork: host\nports: [{container: 80, host: 80}]",
                "spec.network: published ports need the bridge network",
            ),
            (
                "name: web\nimage: busybox\nports: [{container: 80, host: 8080}, {container: 81, host: 8080}]",
                "spec.ports[1].host: 8080 is published twice",
            ),
            ("image: busybox", "spec: missing field `name`"),
            (
                "{\"name\": \"web\", \"image\": \"busybox\", \"ports\": [{\"container\": -1}]}",
                "spec.ports[0].container: invalid value: integer `-1`",
            ),
            ("", "spec: the file holds no workload"),
        ];
        for (text, want) in cases {
            let got = errors(text);
            assert!(
                got.iter().any(|g| g.starts_with(want)),
                "for {text:?}\nwanted a line starting with {want:?}\ngot {got:#?}"
            );
            for line in &got {
                assert!(!line.contains('\n'), "multi-line error {line:?}");
            }
        }
    }

    #[test]
    fn every_error_is_reported_not_only_the_first() {
        let got = errors("name: web\nimage: busybox\npriority: 0\nports: [{container: 0}]");
        assert_eq!(got.len(), 2, "{got:?}");
    }

    #[test]
    fn several_documents() {
        let text =
            "name: a\nimage: busybox\n---\nname: b\nimage: busybox\nports: [{container: 0}]\n";
        let got = errors(text);
        assert_eq!(got, vec!["spec[1].ports[0].container: 0 is not a port"]);
        let dup = errors("name: a\nimage: busybox\n---\nname: a\nimage: busybox\n");
        assert_eq!(dup, vec!["spec[1].name: \"a\" is also the name of spec[0]"]);
    }

    #[test]
    fn defaults() {
        let w = &parse_workloads("name: x\nimage: busybox", Format::Yaml).unwrap()[0];
        assert_eq!(w.replicas, 1);
        assert_eq!(w.restart_policy(), crate::RestartPolicy::Always);
        assert_eq!(w.priority, 50);
        assert_eq!(w.resources.cpu.millis(), 100);
        assert_eq!(w.resources.memory.bytes(), 128 << 20);
        assert_eq!(w.stop_timeout.as_millis(), 10_000);
    }
}
