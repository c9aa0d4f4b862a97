//! Cloud bursting end to end, as root: a gateway whose on-prem site is
//! full (one real agent, its allocatable taken by a running workload) and
//! whose cloud site points at a real cloud API (moto for EC2); a workload
//! is submitted; the launch arrives at the cloud carrying the bootstrap
//! user data; the VM simulator reads that user data back from the cloud
//! and boots the instance as a network namespace running exactly that
//! bootstrap; its agent joins, pulls the image and runs the workload.
//! Then the workload is deleted, and after the cooldown the node is
//! drained and the instance terminated in the cloud.

use std::sync::Arc;

use skiff_cloud::aws::{AwsCloud, AwsSettings};
use skiff_cloud::azure::{AzureCloud, AzureSettings, Credential};
use skiff_cloud::local::{LocalCloud, LocalConfig};
use skiff_cloud::{CloudProvider, InstanceState, TAG_SITE};
use skiff_e2e::azure::{CLIENT_ID, CLIENT_SECRET, FakeArm, TENANT};
use skiff_e2e::cloud::{LaunchedVms, Moto, VmSimulator};
use skiff_e2e::{Agent, Gateway, eventually};
use skiff_test_support::images::OciImage;
use skiff_test_support::net::NetSlot;
use skiff_test_support::registry::Registry;
use skiff_test_support::tools::require_root;

/// A cloud site under test: its `[[sites]]` table (after name and kind),
/// the gateway's environment, the provider (for the test's own view of
/// the cloud) and the cloud as the simulator sees it.
struct CloudUnderTest {
    site: &'static str,
    kind: &'static str,
    /// `[sites.<kind>]` and anything else of the site.
    settings: String,
    instance_type: &'static str,
    env: Vec<(String, String)>,
    cloud: Arc<dyn CloudProvider>,
    launched: Arc<dyn LaunchedVms>,
}

/// The simulator's VMs (in `dir/vms`, on the slot's bridge).
fn vm_cloud(dir: &std::path::Path, slot: &NetSlot) -> LocalCloud {
    LocalCloud::new(LocalConfig {
        root: dir.join("vms"),
        agent_bin: skiff_e2e::bin("skiff-agent"),
        bridge: slot.bridge(),
        subnet: slot.subnet().parse().unwrap(),
        types: Vec::new(),
    })
}

/// The host's address on the VMs' bridge (the gateway's agent port and
/// the registry listen there).
fn vm_host(dir: &std::path::Path, slot: &NetSlot) -> std::net::Ipv4Addr {
    vm_cloud(dir, slot).ensure_bridge().unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn burst_and_scale_in(
    dir: &std::path::Path,
    slot: &NetSlot,
    host: std::net::Ipv4Addr,
    c: CloudUnderTest,
) {
    // Images come from a registry the VMs reach on their bridge.
    let registry = Registry::start_on(host).unwrap();
    let image = OciImage::busybox(&dir.join("image"), "test", &[])
        .unwrap()
        .push(&registry, "skiff/busybox")
        .unwrap();
    let insecure = format!(
        "[images]\ninsecure_registries = [\"{}\"]\n",
        registry.host()
    );
    let config = format!(
        "heartbeat_interval = \"250ms\"\ndown_after = \"2s\"\nadvertise = [\"{host}\"]\n\
         [[sites]]\nname = \"onprem\"\nkind = \"static\"\n\
         [[sites]]\nname = \"{site}\"\nkind = \"{kind}\"\ncost_rank = 2\nmax_nodes = 3\n\
         gateway_url = \"{{{{agent_url}}}}\"\njoin_timeout = \"90s\"\nscale_in_after = \"1s\"\n\
         agent_config = '''\n{insecure}'''\n\
         [[sites.instance_types]]\nname = \"{ty}\"\ncpu = \"1900m\"\nmemory = \"3Gi\"\nprice_per_hour = \"0.0416\"\n\
         {settings}",
        site = c.site,
        kind = c.kind,
        ty = c.instance_type,
        settings = c.settings,
    );
    let g = Gateway::start_env(&dir.join("gw"), &config, &host.to_string(), c.env.clone());
    // On-prem: one node with 500m allocatable, filled by a running workload.
    let (token, ca) = g.join_token("onprem", "10m");
    let onprem = Agent::spawn_configured(
        dir,
        "onprem-1",
        &g,
        &token,
        &ca,
        &format!("{insecure}[reserve]\ncpu = \"1500m\"\n"),
    );
    g.until("/v1/nodes/onprem-1", "ready", 30, |n| {
        n["status"] == "ready"
    });
    let sleeper = |name: &str| {
        format!(
            "name: {name}\nimage: {image}\ncommand: [\"sleep\", \"3600\"]\nresources: {{cpu: 500m, memory: 64Mi}}\nstop_timeout: 1s\n"
        )
    };
    assert_eq!(
        g.call("POST", "/v1/workloads", Some(&sleeper("filler"))).0,
        202
    );
    g.until("/v1/workloads/filler", "running on-prem", 60, |w| {
        w["allocations"][0]["state"] == "running" && w["allocations"][0]["node"] == "onprem-1"
    });

    // The VM simulator boots whatever the cloud is asked to launch.
    let sim = VmSimulator::start(c.launched.clone(), c.site, vm_cloud(dir, slot));

    // On-prem is full: the workload bursts to the cloud and runs there.
    assert_eq!(
        g.call("POST", "/v1/workloads", Some(&sleeper("web"))).0,
        202
    );
    let w = g.until("/v1/workloads/web", "running on a cloud VM", 120, |w| {
        w["allocations"][0]["state"] == "running" && w["allocations"][0]["site"] == c.site
    });
    let node = w["allocations"][0]["node"].as_str().unwrap().to_string();
    let rt = rt();
    let instances = rt.block_on(c.cloud.describe(TAG_SITE, c.site)).unwrap();
    assert_eq!(instances.len(), 1, "one VM for one replica: {instances:?}");
    let vm = &instances[0];
    assert_eq!(vm.instance_type, c.instance_type);
    assert_eq!(vm.tags[skiff_cloud::TAG_NODE], node);
    assert!(vm.tags.contains_key(skiff_cloud::TAG_CLUSTER));
    // The launch carried the bootstrap, with a join token in it.
    let user_data = rt.block_on(c.launched.user_data(&vm.id)).unwrap();
    assert!(user_data.0.starts_with("#cloud-config"));
    assert!(user_data.0.contains("SKIFF_AGENT_JOIN_TOKEN=skiff-join-"));
    assert!(user_data.0.contains(&format!("SKIFF_AGENT_NAME={node}")));
    let (booted, _) = sim.vms();
    assert_eq!(booted, std::slice::from_ref(&vm.id));
    let n = g.until(&format!("/v1/nodes/{node}"), "on its instance", 10, |n| {
        n["instance_id"] == vm.id.as_str()
    });
    assert_eq!(n["site"], c.site);
    // The token was never logged.
    let log = g.log();
    assert!(!log.contains("skiff-join-"), "a join token was logged");
    assert!(log.contains(&format!("launched {}", vm.id)), "{log}");

    // The work goes: drained and terminated in the cloud after the cooldown.
    assert_eq!(g.call("DELETE", "/v1/workloads/web", None).0, 202);
    eventually(
        60,
        || g.call("GET", &format!("/v1/nodes/{node}"), None).0 == 404,
        || format!("never scaled in: {}", g.log()),
    );
    // Terminated (AWS lists it so a while), or gone (Azure deletes).
    let state = rt
        .block_on(c.cloud.describe(TAG_SITE, c.site))
        .unwrap()
        .into_iter()
        .find(|i| i.id == vm.id)
        .map(|i| i.state);
    assert!(
        matches!(
            state,
            None | Some(InstanceState::Terminated | InstanceState::Stopping)
        ),
        "the cloud still runs {}: {state:?}",
        vm.id
    );
    eventually(
        10,
        || sim.vms().1.contains(&vm.id),
        || "the simulator never powered the VM off".into(),
    );
    // The on-prem work was never touched.
    assert_eq!(onprem.running().len(), 1);
    let log = g.log();
    assert!(log.contains("scale-in: idle, cordoned"), "{log}");
    assert!(
        log.contains(&format!("scale-in: terminated {}", vm.id)),
        "{log}"
    );
    // And nothing else was planned or launched, before or after.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let log = g.log();
    assert_eq!(log.matches("launch planned").count(), 1, "{log}");
    assert_eq!(log.matches("for pending work").count(), 1, "{log}");
    // The gateway goes first, so that it does not react to the teardown
    // (the on-prem agent's end would make the filler pending again).
    drop(g);
}

#[test]
fn full_on_prem_bursts_to_aws_in_moto_and_scales_back_in() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start();
    let slot = NetSlot::take().unwrap();
    let host = vm_host(dir.path(), &slot);
    let settings = AwsSettings {
        region: "us-east-1".into(),
        endpoint: Some(moto.endpoint.clone()),
        image_id: "ami-760aaa0f".into(),
        subnet_id: None,
        security_group_ids: Vec::new(),
        instance_profile: None,
        spot: false,
        key_name: None,
    };
    // The test's own view of moto (the simulator's and the assertions').
    for (k, v) in Moto::env() {
        // SAFETY: set before any other thread of this test process runs.
        unsafe { std::env::set_var(k, v) };
    }
    let cloud = Arc::new(rt().block_on(AwsCloud::new("aws-us-east-1", settings, Vec::new())));
    burst_and_scale_in(
        dir.path(),
        &slot,
        host,
        CloudUnderTest {
            site: "aws-us-east-1",
            kind: "aws",
            settings: format!(
                "[sites.aws]\nregion = \"us-east-1\"\nendpoint = \"{}\"\nimage_id = \"ami-760aaa0f\"\n",
                moto.endpoint
            ),
            instance_type: "t3.medium",
            env: Moto::env(),
            cloud: cloud.clone(),
            launched: cloud,
        },
    );
}

#[test]
fn full_on_prem_bursts_to_azure_through_arm_and_scales_back_in() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let arm = Arc::new(FakeArm::start());
    let slot = NetSlot::take().unwrap();
    let host = vm_host(dir.path(), &slot);
    let subnet = "/subscriptions/sub-1/resourceGroups/skiff-rg/providers/Microsoft.Network/virtualNetworks/vnet/subnets/default";
    let settings = format!(
        "[sites.azure]
subscription_id = \"sub-1\"
resource_group = \"skiff-rg\"
location = \"westeurope\"
         subnet_id = \"{subnet}\"
image = \"Canonical:ubuntu-24_04-lts:server:latest\"
         ssh_public_key = \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBkrZ2T3J0FakeKeyForTests skiff\"
endpoint = \"{}\"
",
        arm.url
    );
    // A service principal, as the gateway finds it in its environment.
    let env: Vec<(String, String)> = [
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_ID", CLIENT_ID),
        ("AZURE_CLIENT_SECRET", CLIENT_SECRET),
        ("AZURE_AUTHORITY_HOST", arm.url.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let parsed: toml::Table = settings.parse().unwrap();
    let azure: AzureSettings = parsed["sites"]["azure"].clone().try_into().unwrap();
    let cloud = Arc::new(
        AzureCloud::new(
            "azure-westeurope",
            azure,
            Credential::ServicePrincipal {
                authority: arm.url.clone(),
                tenant: TENANT.into(),
                client_id: CLIENT_ID.into(),
                secret: CLIENT_SECRET.into(),
            },
            Vec::new(),
        )
        .unwrap(),
    );
    burst_and_scale_in(
        dir.path(),
        &slot,
        host,
        CloudUnderTest {
            site: "azure-westeurope",
            kind: "azure",
            settings,
            instance_type: "Standard_D2s_v5",
            env,
            cloud,
            launched: arm.clone(),
        },
    );
    // The VM, its NIC and its disk are gone; it had been created with
    // the bootstrap as custom data, spot off, tagged.
    assert!(arm.vms().is_empty(), "{:?}", arm.vms());
    assert!(arm.nics().is_empty(), "{:?}", arm.nics());
    assert!(arm.disks().is_empty(), "{:?}", arm.disks());
    let created = arm.created();
    assert_eq!(created.len(), 1);
    assert!(created[0].custom_data.starts_with("#cloud-config"));
    assert!(!created[0].spot);
    assert_eq!(created[0].tags[skiff_cloud::TAG_SITE], "azure-westeurope");
}
