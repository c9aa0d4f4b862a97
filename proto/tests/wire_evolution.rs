//! The wire contract may grow but never break: every field, enum value and
//! method of the committed baseline (`proto/wire-baseline.txt`) must still
//! exist with the same number and type, and older receivers must decode
//! messages from newer senders.
//!
//! After an intended, compatible addition, refresh the baseline with
//! `SKIFF_BLESS=1 cargo test -p skiff-proto --test wire_evolution`.

use std::collections::BTreeSet;

use prost::Message;
use skiff_proto::wire::v1;

const BASELINE: &str = "wire-baseline.txt";

fn describe() -> BTreeSet<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let fds = protox::compile(["skiff/agent/v1/agent.proto"], [format!("{root}/proto")])
        .expect("the contract compiles");
    let mut out = BTreeSet::new();
    for file in &fds.file {
        let pkg = file.package();
        for m in &file.message_type {
            for f in &m.field {
                out.insert(format!(
                    "field {pkg}.{}.{} = {} {:?} {} {:?}",
                    m.name(),
                    f.name(),
                    f.number(),
                    f.r#type(),
                    f.type_name(),
                    f.label()
                ));
            }
        }
        for e in &file.enum_type {
            for v in &e.value {
                out.insert(format!(
                    "enum {pkg}.{}.{} = {}",
                    e.name(),
                    v.name(),
                    v.number()
                ));
            }
        }
        for s in &file.service {
            for m in &s.method {
                out.insert(format!(
                    "rpc {pkg}.{}.{} {}{} -> {}{}",
                    s.name(),
                    m.name(),
                    if m.client_streaming() { "stream " } else { "" },
                    m.input_type(),
                    if m.server_streaming() { "stream " } else { "" },
                    m.output_type()
                ));
            }
        }
    }
    out
}

#[test]
fn nothing_in_the_baseline_was_removed_renumbered_or_retyped() {
    let path = format!("{}/{BASELINE}", env!("CARGO_MANIFEST_DIR"));
    let current = describe();
    if std::env::var_os("SKIFF_BLESS").is_some() {
        let text: String = current.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, text).unwrap();
    }
    let baseline = std::fs::read_to_string(&path).expect("proto/wire-baseline.txt is committed");
    let missing: Vec<&str> = baseline
        .lines()
        .filter(|l| !l.is_empty() && !current.contains(*l))
        .collect();
    assert!(
        missing.is_empty(),
        "the contract broke compatibility with v1; gone or changed:\n{}",
        missing.join("\n")
    );
    let added: Vec<&String> = current
        .iter()
        .filter(|l| !baseline.lines().any(|b| b == l.as_str()))
        .collect();
    assert!(
        added.is_empty(),
        "new contract elements are not in the baseline yet (bless with SKIFF_BLESS=1):\n{added:#?}"
    );
}

#[test]
fn every_enum_starts_with_unspecified() {
    let root = env!("CARGO_MANIFEST_DIR");
    let fds = protox::compile(["skiff/agent/v1/agent.proto"], [format!("{root}/proto")]).unwrap();
    for e in fds.file.iter().flat_map(|f| &f.enum_type) {
        let first = &e.value[0];
        assert_eq!(first.number(), 0, "{}", e.name());
        assert!(
            first.name().ends_with("_UNSPECIFIED"),
            "{}: {}",
            e.name(),
            first.name()
        );
    }
}

/// Appends an unknown field (as a newer sender would) to an encoded message.
fn with_unknown_field(mut bytes: Vec<u8>, number: u32) -> Vec<u8> {
    prost::encoding::string::encode(number, &"from the future".to_string(), &mut bytes);
    prost::encoding::uint64::encode(number + 1, &7, &mut bytes);
    bytes
}

#[test]
fn older_receivers_skip_fields_they_do_not_know() {
    let state = v1::DesiredState {
        generation: 42,
        allocations: vec![v1::Allocation {
            id: "a1".into(),
            workload: "web".into(),
            workload_version: 3,
            spec: Some(v1::ContainerSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            local_volumes: [("pg".to_string(), "web.pg.0".to_string())].into(),
            secrets: vec![v1::SecretData {
                name: "db".into(),
                version: 2,
                data: [("password".to_string(), b"hunter2".to_vec())].into(),
            }],
            namespace: "team-a".into(),
        }],
        remove_volumes: vec!["web.pg.1".into()],
        network_policies: vec![v1::NamespaceNetwork {
            namespace: "team-a".into(),
            allow_from: vec!["team-b".into()],
        }],
    };
    let bytes = with_unknown_field(state.encode_to_vec(), 1000);
    let decoded = v1::DesiredState::decode(bytes.as_slice()).unwrap();
    assert_eq!(decoded, state);
    // A secret's value never shows in Debug output.
    let shown = format!("{state:?}");
    assert!(
        shown.contains("password") && !shown.contains("hunter2") && !shown.contains("104, 117"),
        "{shown}"
    );
}

#[test]
fn an_unknown_message_kind_decodes_as_empty_not_as_an_error() {
    // A newer agent sends a kind this gateway does not know (field 99 of
    // the oneof): it decodes with no kind, and the receiver skips it.
    let bytes = with_unknown_field(Vec::new(), 99);
    let msg = v1::AgentMessage::decode(bytes.as_slice()).unwrap();
    assert!(msg.kind.is_none());
    let bytes = with_unknown_field(Vec::new(), 99);
    let msg = v1::GatewayMessage::decode(bytes.as_slice()).unwrap();
    assert!(msg.kind.is_none());
}

#[test]
fn unknown_enum_values_survive_decoding() {
    let status = v1::AllocationStatus {
        allocation_id: "a1".into(),
        state: 77, // a state added by a newer agent
        ..Default::default()
    };
    let decoded = v1::AllocationStatus::decode(status.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded.state, 77);
    assert_eq!(skiff_proto::wire::allocation_state(decoded.state), None);
}
