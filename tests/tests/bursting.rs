//! Cloud bursting end to end, as root: a gateway whose on-prem site is
//! full (one real agent, its allocatable taken by a running workload) and
//! whose cloud site points at a real cloud API (moto for EC2); a workload
//! is submitted; the launch arrives at the cloud carrying the bootstrap
//! user data; the VM simulator reads that user data back from the cloud
//! and boots the instance as a network namespace running exactly that
//! bootstrap; its agent joins, pulls the image and runs the workload.
//! Then the workload is deleted, and after the cooldown the node is
//! drained and the instance terminated in the cloud.

use skiff_cloud::aws::{AwsCloud, AwsSettings};
use skiff_cloud::local::{LocalCloud, LocalConfig};
use skiff_cloud::{CloudProvider, InstanceState, TAG_SITE};
use skiff_e2e::cloud::{LaunchedVms, Moto, VmSimulator};
use skiff_e2e::{Agent, Gateway, eventually};
use skiff_test_support::images::OciImage;
use skiff_test_support::net::NetSlot;
use skiff_test_support::registry::Registry;
use skiff_test_support::tools::require_root;

/// A cloud site under test: its `[[sites]]` table (after name and kind),
/// the gateway's environment, and the cloud as the simulator sees it.
struct CloudUnderTest<C: LaunchedVms + CloudProvider + Clone> {
    site: &'static str,
    kind: &'static str,
    /// `[sites.<kind>]` and anything else of the site.
    settings: String,
    instance_type: &'static str,
    env: Vec<(String, String)>,
    cloud: C,
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn burst_and_scale_in<C: LaunchedVms + CloudProvider + Clone>(
    dir: &std::path::Path,
    slot: &NetSlot,
    host: std::net::Ipv4Addr,
    c: CloudUnderTest<C>,
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
    let local = LocalCloud::new(LocalConfig {
        root: dir.join("vms"),
        agent_bin: skiff_e2e::bin("skiff-agent"),
        bridge: slot.bridge(),
        subnet: slot.subnet().parse().unwrap(),
        types: Vec::new(),
    });
    let sim = VmSimulator::start(c.cloud.clone(), c.site, local);

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
    let user_data = rt.block_on(c.cloud.user_data(&vm.id)).unwrap();
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
    let state = rt
        .block_on(c.cloud.describe(TAG_SITE, c.site))
        .unwrap()
        .into_iter()
        .find(|i| i.id == vm.id)
        .map(|i| i.state);
    assert!(
        matches!(
            state,
            Some(InstanceState::Terminated | InstanceState::Stopping)
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
}

#[test]
fn full_on_prem_bursts_to_aws_in_moto_and_scales_back_in() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start();
    let slot = NetSlot::take().unwrap();
    let host = LocalCloud::new(LocalConfig {
        root: dir.path().join("vms"),
        agent_bin: skiff_e2e::bin("skiff-agent"),
        bridge: slot.bridge(),
        subnet: slot.subnet().parse().unwrap(),
        types: Vec::new(),
    })
    .ensure_bridge()
    .unwrap();
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
    let cloud = rt().block_on(AwsCloud::new("aws-us-east-1", settings, Vec::new()));
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
            cloud,
        },
    );
}
