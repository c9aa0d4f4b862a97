//! The schemas of the workload spec's fields that need more than their
//! type says: the limits `WorkloadSpec::validate` enforces, written so
//! that a request the schema accepts is one the server accepts (checked
//! by the tests below against the parser, and by the API fuzzer).

use schemars::{Schema, SchemaGenerator, json_schema};
use serde_json::json;

use super::decimal::{above, at_most, in_units};
use crate::quantity::{CPU_UNITS, byte_units};
use crate::workload::{MAX_CPU, MAX_DISK, MAX_MEMORY, MIN_MEMORY};

/// A workload, site or node name (see `is_valid_name`).
pub const NAME_PATTERN: &str = "^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$";
/// A string without a NUL byte (which no argv or environment can hold).
pub const NO_NUL: &str = "^[^\\x00]*$";

pub fn name(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": NAME_PATTERN,
        "description": "Unique name: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters."
    })
}

/// Capability names.
pub fn capabilities(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": { "type": "string", "pattern": "^(CAP_)?[A-Z_]+$" },
        "description": "Capabilities added to the default set (`NET_ADMIN`, `SYS_TIME`)."
    })
}

/// A namespace's name (`default` when absent).
pub fn namespace(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": NAME_PATTERN,
        "default": "default",
        "description": "The namespace it belongs to: lowercase letters, digits and '-', at most 63 characters (`default` when absent)."
    })
}

/// A quantity written in `units` (size in the base unit) or as a number of
/// `scale` base units: above `low` when given, at most `max`.
fn quantity(
    units: &[(&str, u128)],
    scale: u64,
    low: Option<u64>,
    max: u64,
) -> [serde_json::Value; 2] {
    let mut string = vec![json!({ "pattern": in_units(units, max.into(), at_most) })];
    let mut number = json!({ "type": "number", "maximum": max / scale });
    match low {
        Some(bound) => {
            string.insert(
                0,
                json!({ "pattern": in_units(units, bound.into(), above) }),
            );
            number["exclusiveMinimum"] = json!(bound / scale);
        }
        None => number["minimum"] = json!(0),
    }
    [json!({ "type": "string", "allOf": string }), number]
}

/// More than 0 (any amount rounds up to 1m) and at most `MAX_CPU`.
pub fn cpu(_: &mut SchemaGenerator) -> Schema {
    let [string, number] = quantity(&CPU_UNITS, 1000, Some(0), MAX_CPU.millis());
    json_schema!({
        "description": format!("Reserved for placement and enforced as a CPU quota: cores (`2`, `0.5`) or millicores (`500m`), more than 0 and at most {MAX_CPU}; finer than 1m rounds up. Default 100m."),
        "oneOf": [string, number],
        "default": "100m"
    })
}

/// At least `MIN_MEMORY` once rounded up to a byte, at most `MAX_MEMORY`.
pub fn memory(_: &mut SchemaGenerator) -> Schema {
    let [string, number] = quantity(
        &byte_units(),
        1,
        Some(MIN_MEMORY.bytes() - 1),
        MAX_MEMORY.bytes(),
    );
    json_schema!({
        "description": format!("Reserved for placement and enforced as a hard limit: bytes with an optional suffix (Ki Mi Gi Ti Pi Ei, or k M G T P E), at least {MIN_MEMORY} and at most {MAX_MEMORY}; fractions of a byte round up. Default 128Mi."),
        "oneOf": [string, number],
        "default": "128Mi"
    })
}

/// A tmpfs volume's size: more than 0, at most `MAX_MEMORY`.
pub fn tmpfs_size(_: &mut SchemaGenerator) -> Schema {
    let [string, number] = quantity(&byte_units(), 1, Some(0), MAX_MEMORY.bytes());
    json_schema!({
        "description": format!("Bytes with an optional suffix, more than 0 and at most {MAX_MEMORY}."),
        "oneOf": [string, number]
    })
}

/// A local volume's size: more than 0, at most `MAX_DISK`, or none.
pub fn local_size(_: &mut SchemaGenerator) -> Schema {
    let [string, number] = quantity(&byte_units(), 1, Some(0), MAX_DISK.bytes());
    json_schema!({
        "description": format!("Bytes with an optional suffix, more than 0 and at most {MAX_DISK}; held by a project quota where the node's filesystem has them. Default: no limit."),
        "anyOf": [string, number, { "type": "null" }]
    })
}

/// A name as [`name`] has it, or none.
pub fn name_or_null(generator: &mut SchemaGenerator) -> Schema {
    let some = name(generator);
    json_schema!({ "anyOf": [some, { "type": "null" }] })
}

/// Where a volume is mounted: see [`crate::check_mount_path`].
pub fn mount_path(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": "^(?!/(?:proc|sys|dev)(?:/|$))(?!.*/\\.{1,2}(?:/|$))(?:/[^/\\u0000]+)+/?$",
        "description": "An absolute path in the container, without //, . or .. components: not /, and not under /proc, /sys or /dev."
    })
}

/// A mount path, or none.
pub fn mount_path_or_null(generator: &mut SchemaGenerator) -> Schema {
    let some = mount_path(generator);
    json_schema!({ "anyOf": [some, { "type": "null" }] })
}

/// A secret's environment variables: names as `env`'s, values its keys.
pub fn secret_env(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "propertyNames": { "pattern": "^[^=\\x00]+$" },
        "additionalProperties": { "type": "string", "pattern": "^(?!\\.{1,2}$)[A-Za-z0-9._-]{1,253}$" },
        "description": "VARIABLE: key of the secret (read when the container starts)."
    })
}

/// A secret is used as files (`path`), variables (`env`) or both.
pub fn secret_used(schema: &mut Schema) {
    schema.insert(
        "anyOf".into(),
        json!([
            { "required": ["path"], "properties": { "path": { "type": "string" } } },
            { "required": ["env"], "properties": { "env": { "minProperties": 1 } } }
        ]),
    );
}

/// The most CPU a namespace's quota may name.
pub const MAX_QUOTA_CPU: crate::Cpu = crate::Cpu::from_cores(10_000_000);

/// A namespace quota's fields (the gateway's `Quota`), for its OpenAPI
/// schema: CPU up to [`MAX_QUOTA_CPU`], bytes up to `MAX_DISK`, a price
/// of at most 12 digits and 6 decimals.
pub fn quota_properties() -> serde_json::Value {
    let [cpu, cpu_n] = quantity(&CPU_UNITS, 1000, None, MAX_QUOTA_CPU.millis());
    let [bytes, bytes_n] = quantity(&byte_units(), 1, None, MAX_DISK.bytes());
    let (bytes2, bytes2_n) = (bytes.clone(), bytes_n.clone());
    json!({
        "cpu": { "anyOf": [cpu, cpu_n, { "type": "null" }], "description": format!("Most CPU its workloads reserve together, at most {MAX_QUOTA_CPU} cores.") },
        "memory": { "anyOf": [bytes2, bytes2_n, { "type": "null" }], "description": format!("Most memory, at most {MAX_DISK}.") },
        "disk": { "anyOf": [bytes, bytes_n, { "type": "null" }], "description": format!("Most disk (scratch and local volumes), at most {MAX_DISK}.") },
        "cloud_spend_per_hour": {
            "anyOf": [{ "type": "string", "pattern": "^[0-9]{1,12}(\\.[0-9]{0,6})?$" }, { "type": "null" }],
            "description": "Most the cloud capacity it holds may cost per hour, e.g. \"2.50\"."
        }
    })
}

/// Any size up to `MAX_DISK`, or none.
pub fn disk(_: &mut SchemaGenerator) -> Schema {
    let [string, number] = quantity(&byte_units(), 1, None, MAX_DISK.bytes());
    json_schema!({
        "description": format!("Scratch disk reserved for placement, at most {MAX_DISK}. Default 0."),
        "anyOf": [string, number, { "type": "null" }]
    })
}

/// A duration that is not zero.
pub fn nonzero_duration(generator: &mut SchemaGenerator) -> Schema {
    let duration = generator.subschema_for::<crate::Duration>();
    json_schema!({
        "allOf": [duration, { "not": { "pattern": "^(?:0|(?:0+h)?(?:0+m)?(?:0+s)?(?:0+ms)?)$" } }],
        "description": "More than 0s."
    })
}

/// [`nonzero_duration`], or none.
pub fn optional_nonzero_duration(generator: &mut SchemaGenerator) -> Schema {
    let some = nonzero_duration(generator);
    json_schema!({ "anyOf": [some, { "type": "null" }] })
}

/// Arguments: no NUL byte, and a first one that is not empty.
pub fn command(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": { "type": "string", "pattern": NO_NUL },
        // (`items` is for the items after these.)
        "prefixItems": [{ "type": "string", "minLength": 1, "pattern": NO_NUL }],
        "description": "Replaces the image's ENTRYPOINT (as in Kubernetes); the image CMD is dropped unless `args` is given. The program (the first) must not be empty."
    })
}

pub fn args(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": { "type": "string", "pattern": NO_NUL },
        "description": "Replaces the image's CMD."
    })
}

pub fn env(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "propertyNames": { "pattern": "^[^=\\x00]+$" },
        "additionalProperties": { "type": "string", "pattern": NO_NUL },
        "description": "Environment variables, added to the image's: names without '=', no NUL byte."
    })
}

/// A list of site names, each once.
pub fn sites(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": { "type": "string", "pattern": NAME_PATTERN },
        "uniqueItems": true
    })
}

/// An IPv4 or IPv6 address, or none.
pub fn host_ip(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "anyOf": [
            { "type": "string", "format": "ipv4" },
            { "type": "string", "format": "ipv6" },
            { "type": "null" }
        ],
        "description": "Node address to publish on; all addresses when absent. Needs `host`."
    })
}

/// The exec probe's command: a program that is not empty.
pub fn probe_command(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": { "type": "string" },
        "minItems": 1,
        "prefixItems": [{ "type": "string", "minLength": 1 }]
    })
}

/// Adds an `if`/`then` rule to an object schema.
fn rule(schema: &mut Schema, when: serde_json::Value, then: serde_json::Value) {
    let rule = json!({ "if": when, "then": then });
    match schema.get_mut("allOf").and_then(|a| a.as_array_mut()) {
        Some(all) => all.push(rule),
        None => {
            schema.insert("allOf".into(), json!([rule]));
        }
    }
}

/// Published ports need the bridge network; a batch job's rules. (Two rules are not here, as
/// no JSON Schema can state them: a container port and a host port each
/// appear once per protocol, and `placement.prefer` names allowed sites.)
pub fn workload_rules(schema: &mut Schema) {
    rule(
        schema,
        json!({ "required": ["network"], "properties": { "network": { "enum": ["host", "none"] } } }),
        json!({ "properties": { "ports": { "items": { "properties": { "host": { "type": "null" } } } } } }),
    );
    // A batch job: one container per run, runs that end; `batch` is
    // for batch jobs only.
    let batch = json!({ "required": ["kind"], "properties": { "kind": { "const": "batch" } } });
    rule(
        schema,
        batch.clone(),
        json!({ "properties": {
            "replicas": { "const": 1 },
            "restart": { "enum": ["never", "on-failure", null] }
        } }),
    );
    rule(
        schema,
        json!({ "not": batch }),
        json!({ "properties": { "batch": { "type": "null" } } }),
    );
    // A system workload: one copy per node.
    rule(
        schema,
        json!({ "required": ["kind"], "properties": { "kind": { "const": "system" } } }),
        json!({ "properties": { "replicas": { "const": 1 } } }),
    );
    // Local volumes are a service's (one per replica slot).
    rule(
        schema,
        json!({ "required": ["kind"], "properties": { "kind": { "enum": ["batch", "system"] } } }),
        json!({ "properties": { "volumes": { "items": { "properties": { "local": { "type": "null" } } } } } }),
    );
}

/// `host_ip` needs `host`.
pub fn port_rules(schema: &mut Schema) {
    rule(
        schema,
        json!({ "required": ["host_ip"], "properties": { "host_ip": { "type": "string" } } }),
        json!({ "required": ["host"], "properties": { "host": { "type": "integer" } } }),
    );
}

/// Exactly one of `http`, `tcp` and `exec`.
pub fn one_probe(schema: &mut Schema) {
    let given = |p: &str| json!({ "required": [p], "properties": { p: { "type": "object" } } });
    schema.insert(
        "oneOf".into(),
        json!([given("http"), given("tcp"), given("exec")]),
    );
}

/// Exactly one of `host`, `local` and `tmpfs`.
pub fn one_volume_kind(schema: &mut Schema) {
    let given = |p: &str, ty: &str| json!({ "required": [p], "properties": { p: { "type": ty } } });
    schema.insert(
        "oneOf".into(),
        json!([
            given("host", "string"),
            given("local", "object"),
            given("tmpfs", "object")
        ]),
    );
}

/// `max_skew` needs `spread`.
pub fn skew_needs_spread(schema: &mut Schema) {
    rule(
        schema,
        json!({ "required": ["max_skew"], "properties": { "max_skew": { "type": "integer" } } }),
        json!({ "required": ["spread"], "properties": { "spread": { "type": "string" } } }),
    );
}

#[cfg(test)]
mod tests {
    //! The schema against the parser: for values of each field, a spec
    //! the schema accepts is exactly a spec `parse_workloads` accepts.

    use std::sync::LazyLock;

    use proptest::prelude::*;
    use serde_json::{Value, json};

    use crate::{Format, parse_workloads};

    static VALIDATOR: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
        jsonschema::options()
            .should_validate_formats(true)
            .build(&crate::schema::workload_schema())
            .unwrap()
    });

    /// Both verdicts on a spec, with the parser's error when it refuses.
    fn verdicts(spec: &Value) -> (bool, Result<(), crate::SpecErrors>) {
        let by_schema = VALIDATOR.is_valid(spec);
        let by_parser = parse_workloads(&spec.to_string(), Format::Json).map(|_| ());
        (by_schema, by_parser)
    }

    fn agree(spec: Value) -> Result<(), TestCaseError> {
        let (schema, parser) = verdicts(&spec);
        prop_assert_eq!(schema, parser.is_ok(), "{} (parser: {:?})", spec, parser);
        Ok(())
    }

    fn with(path: &[&str], v: Value) -> Value {
        let mut spec = json!({ "name": "web", "image": "busybox" });
        let mut at = &mut spec;
        for (i, key) in path.iter().enumerate() {
            if i + 1 == path.len() {
                at[*key] = v.clone();
            } else {
                if at.get(*key).is_none() {
                    at[*key] = json!({});
                }
                at = &mut at[*key];
            }
        }
        spec
    }

    fn quantity() -> impl Strategy<Value = Value> {
        prop_oneof![
            "[0-9]{0,8}(\\.[0-9]{0,8})?(m|Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|mi| )?"
                .prop_map(Value::from),
            (0u64..1 << 52).prop_map(Value::from),
            (0u64..20_000).prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            (0.0f64..20_000.0).prop_map(Value::from),
            (0.0f64..1e-3).prop_map(Value::from),
            prop::sample::select(vec![
                "4Mi",
                "4194304",
                "4194303.5",
                "4194303",
                "0.00390625Gi",
                "0.003906249Gi",
                "4095.9990234375Ki",
                "4095.999Ki",
                "1Pi",
                "1024Ti",
                "1.0000001Pi",
                "0",
                "0m",
                "0.0000000001",
                "10000",
                "10000.0001",
                "10000000m",
                "10000000.1m",
                "1Ei",
                "1.152921504606846976E",
                "1.152921504606846977E",
                ".5",
                "5.",
                "",
            ])
            .prop_map(Value::from),
        ]
    }

    fn duration() -> impl Strategy<Value = Value> {
        prop_oneof![
            "([0-9]{1,3}(h|m|s|ms|d)){1,4}",
            "0|0s|0h0m|00ms|[0-9]{11,13}h|1h[0-9]{11,13}ms",
            "[0-9hms ]{0,8}",
        ]
        .prop_map(Value::from)
    }

    fn constraint() -> impl Strategy<Value = Value> {
        let blank = "[ \\t\\u{a0}]{0,2}";
        let value = "[a-z0-9._/-]{0,4}|[A-Z=!,()]";
        let attr = prop_oneof![
            Just("node.name".to_string()),
            Just("node.site".to_string()),
            Just("node.os".to_string()),
            Just("node.nam".to_string()),
            value.prop_map(|k| format!("node.labels.{k}")),
        ];
        let op = prop_oneof![
            (blank, value).prop_map(|(b, v)| format!("=={b}{v}")),
            (blank, value).prop_map(|(b, v)| format!("!={b}{v}")),
            (blank, prop::collection::vec(value, 0..3), blank)
                .prop_map(|(b, vs, c)| format!("in{b}({c}{})", vs.join(","))),
            (blank, prop::collection::vec(value, 0..3))
                .prop_map(|(b, vs)| format!("not in{b}({})", vs.join(", "))),
            prop::sample::select(vec!["exists", "not exists", "notexists", "=", "in"])
                .prop_map(String::from),
        ];
        (blank, attr, blank, op, blank)
            .prop_map(|(a, k, b, o, c)| Value::from(format!("{a}{k}{b}{o}{c}")))
    }

    fn image() -> impl Strategy<Value = Value> {
        let component = "[a-z0-9]{1,3}([._-]|__|--)?[a-z0-9]{0,2}|[A-Za-z0-9._-]{0,4}";
        let domain = "(localhost|[A-Za-z0-9-]{1,4}(\\.[A-Za-z0-9-]{1,4})?)(:[0-9]{0,4})?";
        let tag = "(:[A-Za-z0-9_.-]{0,5})?";
        let digest = prop_oneof![
            Just(String::new()),
            Just(format!("@sha256:{}", "a".repeat(64))),
            Just(format!("@sha512:{}", "F".repeat(128))),
            Just(format!("@sha256:{}", "a".repeat(63))),
            Just(format!("@md5:{}", "a".repeat(32))),
        ];
        (
            prop::option::of(domain),
            prop::collection::vec(component, 1..3),
            tag,
            digest,
        )
            .prop_map(|(d, path, t, g)| {
                let mut s = d.map(|d| format!("{d}/")).unwrap_or_default();
                s.push_str(&path.join("/"));
                Value::from(format!("{s}{t}{g}"))
            })
    }

    #[test]
    fn known_verdicts() {
        for (path, v, ok) in [
            (&["resources", "memory"][..], json!("4Mi"), true),
            (&["resources", "memory"], json!("4095.999Ki"), false),
            (&["resources", "memory"], json!("4095.9990234376Ki"), true),
            (&["resources", "memory"], json!("1.0000001Pi"), false),
            (&["resources", "cpu"], json!("0.0000001"), true),
            (&["resources", "cpu"], json!("0m"), false),
            (&["resources", "cpu"], json!(10000.5), false),
            (&["stop_timeout"], json!("1m30s"), true),
            (&["stop_timeout"], json!("30s1m"), false),
            (&["image"], json!("Registry.example.com:5000/a/b:v1"), true),
            (&["image"], json!("Foo/bar"), false),
            (
                &["image"],
                json!(format!("r.io:5000/{}:v1", "a".repeat(245))),
                true,
            ),
            (
                &["image"],
                json!(format!("r.io:5000/{}:v1", "a".repeat(246))),
                false,
            ),
            (
                &["image"],
                json!(format!("{}@sha256:{}", "a".repeat(255), "0".repeat(64))),
                true,
            ),
            (&["image"], json!(format!("{}", "a".repeat(256))), false),
            (
                &["placement", "constraints"],
                json!(["node.labels.disk==ssd"]),
                true,
            ),
            (
                &["placement", "constraints"],
                json!(["node.nameexists"]),
                false,
            ),
        ] {
            let (schema, parser) = verdicts(&with(path, v.clone()));
            assert_eq!(
                (schema, parser.is_ok()),
                (ok, ok),
                "{path:?} = {v}: {parser:?}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn cpu(v in quantity()) {
            agree(with(&["resources", "cpu"], v))?;
        }

        #[test]
        fn memory(v in quantity()) {
            agree(with(&["resources", "memory"], v))?;
        }

        #[test]
        fn disk(v in quantity()) {
            agree(with(&["resources", "disk"], v))?;
        }

        #[test]
        fn durations(v in duration()) {
            agree(with(&["stop_timeout"], v.clone()))?;
            agree(with(&["health"], json!({ "tcp": { "port": 80 }, "interval": v })))?;
        }

        #[test]
        fn constraints(v in constraint()) {
            agree(with(&["placement", "constraints"], json!([v])))?;
        }

        #[test]
        fn images(v in image()) {
            agree(with(&["image"], v))?;
        }

        #[test]
        fn names(v in "[a-z0-9-]{0,3}|[a-zA-Z0-9_.-]{0,5}|[a-z]{60,66}") {
            agree(with(&["name"], json!(v)))?;
            agree(with(&["placement", "sites"], json!([v])))?;
        }

        #[test]
        fn env_and_command(k in "[A-Z=]{0,3}|\\u{0}", v in "[a-z\\u{0}]{0,2}") {
            agree(with(&["env"], json!({ k.clone(): v.clone() })))?;
            agree(with(&["command"], json!([v.clone(), k])))?;
            agree(with(&["health"], json!({ "exec": { "command": [v] } })))?;
        }

        #[test]
        fn numbers_and_rules(
            replicas in prop::sample::select(vec![0u64, 1, 100_000, 100_001]),
            priority in prop::sample::select(vec![0u64, 1, 100, 101]),
            skew in prop::option::of(0u64..3),
            spread in prop::option::of(prop::sample::select(vec!["site", "node"])),
            network in prop::sample::select(vec!["bridge", "host", "none"]),
            host in prop::option::of(prop::sample::select(vec![0u64, 80, 65536])),
            host_ip in prop::option::of(prop::sample::select(vec!["127.0.0.1", "::1", "localhost", "1.2.3"])),
            probes in prop::collection::vec(prop::sample::select(vec!["http", "tcp", "exec"]), 0..3),
            path in prop::sample::select(vec!["/", "/healthz", "healthz", ""]),
            retries in 0u64..2,
        ) {
            let mut port = json!({ "container": 8080 });
            if let Some(h) = host { port["host"] = json!(h); }
            if let Some(ip) = host_ip { port["host_ip"] = json!(ip); }
            let mut health = json!({ "retries": retries });
            for p in probes {
                health[p] = match p {
                    "http" => json!({ "path": path, "port": 80 }),
                    "tcp" => json!({ "port": 80 }),
                    _ => json!({ "command": ["true"] }),
                };
            }
            let mut placement = json!({});
            if let Some(s) = skew { placement["max_skew"] = json!(s); }
            if let Some(s) = spread { placement["spread"] = json!(s); }
            agree(json!({
                "name": "web", "image": "busybox", "replicas": replicas, "priority": priority,
                "network": network, "ports": [port], "health": health, "placement": placement,
            }))?;
        }

        #[test]
        fn volumes_and_mounts(
            name in "[a-z0-9-]{0,3}|[A-Z_]{1,2}",
            host in prop::option::of("[a-z0-9-]{0,3}|[A-Z/.]{1,3}"),
            local in any::<bool>(),
            tmpfs in prop::option::of(quantity()),
            path in "(/[a-z.]{0,3}){0,3}/?|[a-z]{1,3}|/(proc|sys|dev)(/[a-z]{0,2})?|/a\\u{0}",
            read_only in any::<bool>(),
            kind in prop::sample::select(vec!["service", "batch", "system"]),
            recreate in any::<bool>(),
            local_size in prop::option::of(quantity()),
        ) {
            let mut volume = json!({ "name": name });
            if let Some(h) = host { volume["host"] = json!(h); }
            if local {
                volume["local"] = if recreate { json!({ "on_node_loss": "recreate" }) } else { json!({}) };
                if let Some(size) = local_size { volume["local"]["size"] = json!(size); }
            }
            if let Some(size) = tmpfs { volume["tmpfs"] = json!({ "size": size }); }
            // (A mount names a volume there is: no schema can say so.)
            agree(json!({
                "name": "db", "image": "busybox", "kind": kind, "volumes": [volume],
                "mounts": [{ "volume": name, "path": path, "read_only": read_only }],
            }))?;
        }

        #[test]
        fn secrets(
            name in "[a-z0-9-]{0,3}|[A-Z_]{1,2}",
            path in prop::option::of("(/[a-z.]{0,3}){0,2}/?|[a-z]{1,3}|/proc"),
            var in prop::option::of("[A-Z=]{0,2}"),
            key in "[a-z.]{0,3}|[/ ]",
        ) {
            let mut secret = json!({ "name": name });
            if let Some(p) = path { secret["path"] = json!(p); }
            if let Some(v) = var { secret["env"] = json!({ v: key }); }
            agree(json!({ "name": "app", "image": "busybox", "secrets": [secret] }))?;
        }

        #[test]
        fn batch_rules(
            kind in prop::option::of(prop::sample::select(vec!["service", "batch", "system", ""])),
            replicas in prop::option::of(prop::sample::select(vec![0u64, 1, 2])),
            restart in prop::option::of(prop::sample::select(vec!["never", "on-failure", "always"])),
            completions in prop::option::of(prop::sample::select(vec![0u64, 1, 100_000, 100_001])),
            parallelism in prop::option::of(prop::sample::select(vec![0u64, 5, 100_001])),
            backoff_limit in prop::option::of(prop::sample::select(vec![0u64, 100_000, 100_001])),
            deadline in prop::option::of(duration()),
            backoff in prop::option::of(duration()),
            given in any::<bool>(),
        ) {
            let mut spec = json!({ "name": "job", "image": "busybox" });
            if let Some(k) = kind { spec["kind"] = json!(k); }
            if let Some(r) = replicas { spec["replicas"] = json!(r); }
            if let Some(r) = restart { spec["restart"] = json!(r); }
            let mut batch = json!({});
            if let Some(v) = completions { batch["completions"] = json!(v); }
            if let Some(v) = parallelism { batch["parallelism"] = json!(v); }
            if let Some(v) = backoff_limit { batch["backoff_limit"] = json!(v); }
            if let Some(v) = deadline { batch["deadline"] = v; }
            if let Some(v) = backoff { batch["backoff"] = v; }
            if given { spec["batch"] = batch; }
            agree(spec)?;
        }
    }
}
