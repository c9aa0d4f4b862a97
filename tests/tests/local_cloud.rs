//! The local cloud provider end to end, as root: a "VM" (a network
//! namespace on a bridge of its own) booted from the cloud-init user data
//! the gateway would give a cloud VM joins a real gateway, and is gone
//! when terminated.

use std::collections::BTreeMap;
use std::time::Duration;

use skiff_cloud::bootstrap::Bootstrap;
use skiff_cloud::local::{LocalCloud, LocalConfig};
use skiff_cloud::{
    CloudProvider, InstanceState, InstanceType, LaunchRequest, Secret, TAG_CLUSTER, TAG_SITE,
    terminate_owned,
};
use skiff_e2e::Gateway;
use skiff_test_support::net::NetSlot;
use skiff_test_support::tools::require_root;

#[test]
fn a_local_vm_boots_from_user_data_joins_and_is_terminated() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let slot = NetSlot::take().unwrap();
    let cloud = LocalCloud::new(LocalConfig {
        root: dir.path().join("vms"),
        agent_bin: skiff_e2e::bin("skiff-agent"),
        bridge: slot.bridge(),
        subnet: slot.subnet().parse().unwrap(),
        types: vec![InstanceType {
            name: "local.small".into(),
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            price_micros_per_hour: 0,
            arch: "amd64".into(),
        }],
    });
    // The gateway listens for agents on the VMs' bridge only.
    let host = cloud.ensure_bridge().unwrap().to_string();
    let g = Gateway::start_on(
        &dir.path().join("gw"),
        &format!(
            "heartbeat_interval = \"250ms\"\ndown_after = \"2s\"\nadvertise = [\"{host}\"]\n[[sites]]\nname = \"local\"\nkind = \"local\"\n"
        ),
        &host,
    );
    let (token, ca_hash) = g.join_token("local", "10m");
    let user_data = Bootstrap {
        gateway_url: g.agent_url.clone(),
        ca_hash,
        join_token: Secret(token),
        node_name: "vm-1".into(),
        labels: BTreeMap::from([("skiff/site".to_string(), "local".to_string())]),
        agent_url: None,
        agent_sha256: None,
    }
    .render()
    .unwrap();
    let req = LaunchRequest {
        site: "local".into(),
        instance_type: "local.small".into(),
        count: 1,
        user_data,
        tags: BTreeMap::from([
            (TAG_CLUSTER.to_string(), "test-cluster".to_string()),
            (TAG_SITE.to_string(), "local".to_string()),
        ]),
        spot: false,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let vms = rt.block_on(cloud.launch(&req)).unwrap();
    assert_eq!(vms.len(), 1);
    let id = vms[0].id.clone();
    let node = g.until("/v1/nodes/vm-1", "joined from the VM", 30, |n| {
        n["status"] == "ready"
    });
    assert_eq!(node["site"], "local");
    assert_eq!(node["labels"]["skiff/site"], "local");
    // The bootstrap's settings file is private inside the VM.
    let env = dir
        .path()
        .join(format!("vms/{id}/rootfs/etc/skiff/agent.env"));
    let mode = std::fs::metadata(&env).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );

    // Terminated (only this cluster's instances are): the VM and its agent
    // are gone, so the node goes down.
    let refused = rt
        .block_on(terminate_owned(
            &cloud,
            "test-cluster",
            &[id.clone(), "local-other".into()],
        ))
        .unwrap();
    assert_eq!(refused, ["local-other"]);
    let listed = rt
        .block_on(cloud.describe(TAG_CLUSTER, "test-cluster"))
        .unwrap();
    assert_eq!(listed[0].state, InstanceState::Terminated);
    assert!(!std::path::Path::new(&format!("/run/netns/skvm-{}", &id[id.len() - 8..])).exists());
    g.until("/v1/nodes/vm-1", "down", 10, |n| n["status"] == "down");
    // Nothing of the VM runs any more (its agent, supervisors, prepared
    // container processes).
    let vm_dir = dir.path().join("vms").join(&id);
    let vm_dir = vm_dir.to_string_lossy().into_owned();
    let running = || -> Vec<String> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(&vm_dir))
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !running().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "still running: {:?}",
            running()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
