//! The local cloud provider end to end, as root: a "VM" (a network
//! namespace on a bridge of its own) booted from the cloud-init user data
//! the gateway would give a cloud VM joins a real gateway, and is gone
//! when terminated.

use std::collections::BTreeMap;

use skiff_cloud::bootstrap::Bootstrap;
use skiff_cloud::local::{LocalCloud, LocalConfig};
use skiff_cloud::{
    CloudProvider, InstanceState, InstanceType, LaunchRequest, Secret, TAG_CLUSTER, TAG_SITE,
    terminate_owned,
};
use skiff_e2e::{Gateway, eventually};
use skiff_test_support::images::OciImage;
use skiff_test_support::net::NetSlot;
use skiff_test_support::registry::Registry;
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
        agent_config: String::new(),
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
    eventually(
        10,
        || running().is_empty(),
        || format!("still running: {:?}", running()),
    );
}

#[test]
fn pending_work_bursts_to_a_local_vm_that_joins_and_takes_it() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let slot = NetSlot::take().unwrap();
    let vms = dir.path().join("vms");
    // The VMs' bridge first: the registry the VMs pull from listens on it.
    let host = LocalCloud::new(LocalConfig {
        root: vms.clone(),
        agent_bin: skiff_e2e::bin("skiff-agent"),
        bridge: slot.bridge(),
        subnet: slot.subnet().parse().unwrap(),
        types: Vec::new(),
    })
    .ensure_bridge()
    .unwrap();
    let registry = Registry::start_on(host).unwrap();
    let image = OciImage::busybox(&dir.path().join("image"), "test", &[])
        .unwrap()
        .push(&registry, "skiff/busybox")
        .unwrap();
    let host = host.to_string();
    let config = format!(
        "heartbeat_interval = \"250ms\"\ndown_after = \"2s\"\nadvertise = [\"{host}\"]\n\
         [[sites]]\nname = \"local\"\nkind = \"local\"\ngateway_url = \"{{{{agent_url}}}}\"\njoin_timeout = \"60s\"\nscale_in_after = \"1s\"\n\
         agent_config = \"[images]\\ninsecure_registries = [\\\"{}\\\"]\\n\"\n\
         [[sites.instance_types]]\nname = \"local.small\"\ncpu = \"1\"\nmemory = \"1Gi\"\nprice_per_hour = \"0\"\n\
         [sites.local]\nroot = \"{}\"\nagent_bin = \"{}\"\nbridge = \"{}\"\nsubnet = \"{}\"\n",
        registry.host(),
        vms.display(),
        skiff_e2e::bin("skiff-agent").display(),
        slot.bridge(),
        slot.subnet()
    );
    let g = Gateway::start_on(&dir.path().join("gw"), &config, &host);
    // No node at all: the workload can only run on a VM launched for it.
    let (code, v) = g.call(
        "POST",
        "/v1/workloads",
        Some(&format!(
            "name: web\nimage: {image}\nreplicas: 1\ncommand: [\"sleep\", \"3600\"]\nresources: {{cpu: 500m, memory: 64Mi}}\nstop_timeout: 1s\n"
        )),
    );
    assert_eq!(code, 202, "{v}");
    let w = g.until("/v1/workloads/web", "running on a new VM", 60, |w| {
        w["allocations"][0]["state"] == "running"
            && w["allocations"][0]["node"]
                .as_str()
                .is_some_and(|n| n.starts_with("local-"))
    });
    let node = w["allocations"][0]["node"].as_str().unwrap().to_string();
    let n = g.call("GET", &format!("/v1/nodes/{node}"), None).1;
    assert_eq!(n["site"], "local");
    assert_eq!(n["status"], "ready");
    let log = g.log();
    assert!(log.contains("launched local-"), "{log}");
    assert!(!log.contains("skiff-join-"), "a join token was logged");
    // Exactly one VM was launched for the one replica.
    let vm_dirs = std::fs::read_dir(&vms).unwrap().count();
    assert_eq!(vm_dirs, 1);

    // The work goes: the idle node is cordoned, its VM terminated, the
    // node removed.
    let (code, _) = g.call("DELETE", "/v1/workloads/web", None);
    assert_eq!(code, 202);
    eventually(
        30,
        || g.call("GET", &format!("/v1/nodes/{node}"), None).0 == 404,
        || format!("never scaled in: {}", g.log()),
    );
    let log = g.log();
    assert!(log.contains("scale-in: idle, cordoned"), "{log}");
    assert!(log.contains("scale-in: terminated local-"), "{log}");
    // Whatever happens above, no VM outlives the test.
    let cloud = LocalCloud::new(LocalConfig {
        root: vms.clone(),
        agent_bin: skiff_e2e::bin("skiff-agent"),
        bridge: slot.bridge(),
        subnet: slot.subnet().parse().unwrap(),
        types: Vec::new(),
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ids: Vec<String> = rt
        .block_on(cloud.describe(TAG_SITE, "local"))
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    let states: Vec<InstanceState> = rt
        .block_on(cloud.describe(TAG_SITE, "local"))
        .unwrap()
        .into_iter()
        .map(|i| i.state)
        .collect();
    assert_eq!(states, [InstanceState::Terminated]);
    rt.block_on(cloud.terminate(&ids)).unwrap();
}
