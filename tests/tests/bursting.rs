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
use skiff_e2e::azure::{ArmFailure, ArmOp, CLIENT_ID, CLIENT_SECRET, FakeArm, TENANT};
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

/// What the agents of the VMs booted under `dir` logged.
fn vm_logs(dir: &std::path::Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir.join("vms"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let log = std::fs::read_to_string(e.path().join("agent.log")).unwrap_or_default();
        out += &format!("VM {}:\n{log}\n", e.file_name().to_string_lossy());
    }
    out
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A `[[sites]]` table of a cloud site whose VMs join within 90 s and are
/// scaled in after 1 s idle; `{agent_config}` is filled in later.
fn cloud_site(name: &str, kind: &str, cost_rank: u32, ty: &str, settings: &str) -> String {
    format!(
        "[[sites]]\nname = \"{name}\"\nkind = \"{kind}\"\ncost_rank = {cost_rank}\nmax_nodes = 3\n\
         gateway_url = \"{{{{agent_url}}}}\"\njoin_timeout = \"90s\"\nscale_in_after = \"1s\"\n\
         agent_config = '''\n{{agent_config}}'''\n\
         [[sites.instance_types]]\nname = \"{ty}\"\ncpu = \"1900m\"\nmemory = \"3Gi\"\nprice_per_hour = \"0.0416\"\n\
         {settings}"
    )
}

/// A registry with the test image and a gateway with a static on-prem
/// site and `sites`, both listening on the VMs' bridge: (registry,
/// image, the agent config that trusts the registry, gateway).
fn gateway_for_vms(
    dir: &std::path::Path,
    host: std::net::Ipv4Addr,
    sites: &[String],
    env: Vec<(String, String)>,
) -> (Registry, String, String, Gateway) {
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
         [[sites]]\nname = \"onprem\"\nkind = \"static\"\n{}",
        sites.join("").replace("{agent_config}", &insecure)
    );
    let g = Gateway::start_env(&dir.join("gw"), &config, &host.to_string(), env);
    (registry, image, insecure, g)
}

/// A workload of one replica of 500m that sleeps.
fn sleeper(name: &str, image: &str) -> String {
    format!(
        "name: {name}\nimage: {image}\ncommand: [\"sleep\", \"3600\"]\nresources: {{cpu: 500m, memory: 64Mi}}\nstop_timeout: 1s\n"
    )
}

/// On-prem: one node with 500m allocatable, filled by a running workload.
fn full_onprem(dir: &std::path::Path, g: &Gateway, insecure: &str, image: &str) -> Agent {
    let (token, ca) = g.join_token("onprem", "10m");
    let onprem = Agent::spawn_configured(
        dir,
        "onprem-1",
        g,
        &token,
        &ca,
        &format!("{insecure}[reserve]\ncpu = \"1500m\"\n"),
    );
    g.until("/v1/nodes/onprem-1", "ready", 30, |n| {
        n["status"] == "ready"
    });
    assert_eq!(
        g.call("POST", "/v1/workloads", Some(&sleeper("filler", image)))
            .0,
        202
    );
    g.until("/v1/workloads/filler", "running on-prem", 60, |w| {
        w["allocations"][0]["state"] == "running" && w["allocations"][0]["node"] == "onprem-1"
    });
    onprem
}

fn burst_and_scale_in(
    dir: &std::path::Path,
    slot: &NetSlot,
    host: std::net::Ipv4Addr,
    c: CloudUnderTest,
) {
    let site = cloud_site(c.site, c.kind, 2, c.instance_type, &c.settings);
    let (_registry, image, insecure, g) = gateway_for_vms(dir, host, &[site], c.env.clone());
    let onprem = full_onprem(dir, &g, &insecure, &image);

    // The VM simulator boots whatever the cloud is asked to launch.
    let sim = VmSimulator::start(c.launched.clone(), c.site, vm_cloud(dir, slot));

    // On-prem is full: the workload bursts to the cloud and runs there.
    assert_eq!(
        g.call("POST", "/v1/workloads", Some(&sleeper("web", &image)))
            .0,
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

/// `[sites.azure]` for the fake ARM server, and the gateway's environment
/// (a service principal, as the gateway finds it).
fn azure_site(arm: &FakeArm) -> (String, Vec<(String, String)>) {
    let subnet = "/subscriptions/sub-1/resourceGroups/skiff-rg/providers/Microsoft.Network/virtualNetworks/vnet/subnets/default";
    let settings = format!(
        "[sites.azure]\nsubscription_id = \"sub-1\"\nresource_group = \"skiff-rg\"\nlocation = \"westeurope\"\n\
         subnet_id = \"{subnet}\"\nimage = \"Canonical:ubuntu-24_04-lts:server:latest\"\n\
         ssh_public_key = \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBkrZ2T3J0FakeKeyForTests skiff\"\n\
         endpoint = \"{}\"\n",
        arm.url
    );
    let env = [
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_ID", CLIENT_ID),
        ("AZURE_CLIENT_SECRET", CLIENT_SECRET),
        ("AZURE_AUTHORITY_HOST", arm.url.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    (settings, env)
}

/// `[sites.aws]` for moto; the test process itself talks to moto too.
fn aws_site(moto: &Moto) -> (String, AwsSettings) {
    for (k, v) in Moto::env() {
        // SAFETY: set before this test starts any thread of its own.
        unsafe { std::env::set_var(k, v) };
    }
    let settings = format!(
        "[sites.aws]\nregion = \"us-east-1\"\nendpoint = \"{}\"\nimage_id = \"ami-760aaa0f\"\n",
        moto.endpoint
    );
    let parsed: toml::Table = settings.parse().unwrap();
    (settings, parsed["sites"]["aws"].clone().try_into().unwrap())
}

#[test]
fn full_on_prem_bursts_to_aws_in_moto_and_scales_back_in() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start();
    let slot = NetSlot::take().unwrap();
    let host = vm_host(dir.path(), &slot);
    let (settings_toml, settings) = aws_site(&moto);
    let cloud = Arc::new(rt().block_on(AwsCloud::new("aws-us-east-1", settings, Vec::new())));
    burst_and_scale_in(
        dir.path(),
        &slot,
        host,
        CloudUnderTest {
            site: "aws-us-east-1",
            kind: "aws",
            settings: settings_toml,
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
    let (settings, env) = azure_site(&arm);
    let cloud = Arc::new(azure_cloud(&arm, &settings));
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

/// The provider for the fake ARM server, for the test's own view.
fn azure_cloud(arm: &FakeArm, settings: &str) -> AzureCloud {
    let parsed: toml::Table = settings.parse().unwrap();
    let azure: AzureSettings = parsed["sites"]["azure"].clone().try_into().unwrap();
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
    .unwrap()
}

#[test]
fn a_gateway_killed_mid_scale_in_finishes_it_after_restart() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let arm = Arc::new(FakeArm::start());
    let slot = NetSlot::take().unwrap();
    let host = vm_host(dir.path(), &slot);
    let (settings, env) = azure_site(&arm);
    let site = cloud_site("azure-westeurope", "azure", 1, "Standard_D2s_v5", &settings);
    let (_registry, image, _, mut g) = gateway_for_vms(dir.path(), host, &[site], env);
    let _sim = VmSimulator::start(arm.clone(), "azure-westeurope", vm_cloud(dir.path(), &slot));
    assert_eq!(
        g.call("POST", "/v1/workloads", Some(&sleeper("web", &image)))
            .0,
        202
    );
    let w = g.until("/v1/workloads/web", "running on a VM", 120, |w| {
        w["allocations"][0]["state"] == "running"
    });
    let node = w["allocations"][0]["node"].as_str().unwrap().to_string();
    let path = format!("/v1/nodes/{node}");
    g.until(&path, "on its instance", 10, |n| {
        n["instance_id"] == node.as_str()
    });

    // Every ARM operation now takes about 8 s: the gateway is killed while
    // it waits for the VM's deletion, with the node marked `terminating`.
    arm.set_operation_polls(8);
    assert_eq!(g.call("DELETE", "/v1/workloads/web", None).0, 202);
    eventually(
        30,
        || {
            let deleting = arm
                .vms()
                .iter()
                .any(|v| v.name == node && v.provisioning_state == "Deleting");
            deleting && g.call("GET", &path, None).1["scale_in"] == "terminating"
        },
        || format!("never began to terminate: {}", g.log()),
    );
    g.process.as_mut().unwrap().kill9();
    assert!(
        arm.vms().iter().any(|v| v.name == node),
        "the kill came after the deletion ended"
    );

    // Restarted, it finishes the scale-in it had begun: the VM, its NIC
    // and disk are deleted and the node removed; nothing new launched.
    arm.set_operation_polls(1);
    let before = g.log().len();
    g.restart();
    eventually(
        60,
        || {
            g.call("GET", &path, None).0 == 404
                && arm.vms().is_empty()
                && arm.nics().is_empty()
                && arm.disks().is_empty()
        },
        || format!("scale-in not finished: {:?} {}", arm.vms(), g.log()),
    );
    let after = g.log()[before..].to_string();
    assert!(
        after.contains(&format!("scale-in: terminated {node}")),
        "{after}"
    );
    assert_eq!(arm.created().len(), 1);
    assert!(!after.contains("for pending work"), "{after}");
    drop(g);
}

#[test]
fn throttling_and_quota_in_azure_back_off_then_fall_back_to_aws() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let arm = Arc::new(FakeArm::start());
    let moto = Moto::start();
    let slot = NetSlot::take().unwrap();
    let host = vm_host(dir.path(), &slot);
    let (az_settings, mut env) = azure_site(&arm);
    let (aws_settings, aws) = aws_site(&moto);
    env.extend(Moto::env());
    // Azure is preferred (cost rank 1), AWS next (2).
    let sites = [
        cloud_site(
            "azure-westeurope",
            "azure",
            1,
            "Standard_D2s_v5",
            &az_settings,
        ),
        cloud_site("aws-us-east-1", "aws", 2, "t3.medium", &aws_settings),
    ];
    let (_registry, image, _, g) = gateway_for_vms(dir.path(), host, &sites, env);
    let aws = Arc::new(rt().block_on(AwsCloud::new("aws-us-east-1", aws, Vec::new())));
    let sim = VmSimulator::start(aws.clone(), "aws-us-east-1", vm_cloud(dir.path(), &slot));
    // ARM throttles the NIC once, then refuses the VM for quota.
    arm.fail_next(
        ArmOp::CreateNic,
        ArmFailure::Status {
            status: 429,
            code: "TooManyRequests".into(),
            message: "The request is being throttled.".into(),
            retry_after: Some(1),
        },
    );
    arm.fail_next(
        ArmOp::CreateVm,
        ArmFailure::Status {
            status: 409,
            code: "OperationNotAllowed".into(),
            message: "Operation could not be completed as it results in exceeding approved standardDSv5Family Cores quota.".into(),
            retry_after: None,
        },
    );
    assert_eq!(
        g.call("POST", "/v1/workloads", Some(&sleeper("web", &image)))
            .0,
        202
    );
    let w = g.until("/v1/workloads/web", "running in AWS", 120, |w| {
        w["allocations"][0]["state"] == "running" && w["allocations"][0]["site"] == "aws-us-east-1"
    });
    let node = w["allocations"][0]["node"].as_str().unwrap();
    assert!(node.starts_with("aws-us-east-1-"), "{node}");
    let count = |method: &str, what: &str| {
        arm.requests()
            .iter()
            .filter(|(m, p)| m == method && p.contains(what))
            .count()
    };
    // The throttled call was retried; the quota error was not, and the
    // NIC made for the refused VM was deleted.
    assert_eq!(count("PUT", "/networkInterfaces/"), 2);
    assert_eq!(count("PUT", "/virtualMachines/"), 1);
    assert!(
        arm.vms().is_empty() && arm.nics().is_empty(),
        "{:?}",
        arm.nics()
    );
    let log = g.log();
    assert!(
        log.contains("could not launch Standard_D2s_v5: quota exceeded"),
        "{log}"
    );
    assert!(log.contains("Standard_D2s_v5 set aside"), "{log}");
    // No failure loop: the type stays aside while the work runs in AWS.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(count("PUT", "/virtualMachines/"), 1);
    assert_eq!(
        rt().block_on(aws.describe(TAG_SITE, "aws-us-east-1"))
            .unwrap()
            .len(),
        1
    );
    drop(g);
    drop(sim);
}

#[test]
fn a_launched_instance_boots_as_a_real_vm_joins_and_runs_the_workload() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start();
    let (aws_settings, aws) = aws_site(&moto);
    // The guest reaches this host's loopback as 10.0.2.2 (qemu user mode).
    let registry = Registry::start().unwrap();
    let port = registry.addr().port();
    OciImage::busybox(&dir.path().join("image"), "test", &[])
        .unwrap()
        .push(&registry, "skiff/busybox")
        .unwrap();
    let image = format!("10.0.2.2:{port}/skiff/busybox:test");
    let site = cloud_site("aws-us-east-1", "aws", 2, "t3.medium", &aws_settings)
        .replace("{{agent_url}}", "https://10.0.2.2:{{agent_port}}")
        .replace("join_timeout = \"90s\"", "join_timeout = \"10m\"")
        .replace(
            "{agent_config}",
            &format!("[images]\ninsecure_registries = [\"10.0.2.2:{port}\"]\n"),
        );
    let config = format!(
        "heartbeat_interval = \"1s\"\ndown_after = \"30s\"\nadvertise = [\"10.0.2.2\"]\n\
         [[sites]]\nname = \"onprem\"\nkind = \"static\"\n{site}"
    );
    let g = Gateway::start_env(&dir.path().join("gw"), &config, "127.0.0.1", Moto::env());
    let aws = Arc::new(rt().block_on(AwsCloud::new("aws-us-east-1", aws, Vec::new())));
    let qemu = Arc::new(skiff_e2e::cloud::QemuVms::new(&dir.path().join("qemu")));
    let sim = VmSimulator::start(aws.clone(), "aws-us-east-1", qemu.clone());

    // No bridge in the VM's kernel modules: the workload has no network.
    let spec = format!(
        "name: web\nimage: {image}\nnetwork: none\ncommand: [\"sleep\", \"3600\"]\nresources: {{cpu: 500m, memory: 64Mi}}\nstop_timeout: 1s\n"
    );
    assert_eq!(g.call("POST", "/v1/workloads", Some(&spec)).0, 202);
    let console = || {
        let ids = sim.vms().0;
        ids.iter()
            .map(|id| qemu.console(id))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    let w = loop {
        let (code, w) = g.call("GET", "/v1/workloads/web", None);
        if code == 200 && w["allocations"][0]["state"] == "running" {
            break w;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never running in the VM: {w}\n--- VM:\n{}\n--- gateway:\n{}",
            console(),
            g.log()
        );
        std::thread::sleep(std::time::Duration::from_secs(1));
    };
    let node = w["allocations"][0]["node"].as_str().unwrap().to_string();
    // The node is the VM (its kernel and host name), not this host.
    let n = g.until(&format!("/v1/nodes/{node}"), "on its instance", 10, |n| {
        n["instance_id"].is_string()
    });
    assert_eq!(n["hostname"], "skiff-cloud-vm", "{n}");
    assert_eq!(n["site"], "aws-us-east-1");
    let c = console();
    assert!(c.contains("cgroup2 controllers:"), "{c}");
    assert!(
        c.contains("skiff-vm: starting /usr/local/bin/skiff-agent serve"),
        "{c}"
    );

    // Scaled in: TerminateInstances at moto, the VM powered off.
    assert_eq!(g.call("DELETE", "/v1/workloads/web", None).0, 202);
    eventually(
        120,
        || g.call("GET", &format!("/v1/nodes/{node}"), None).0 == 404,
        || format!("never scaled in: {}", g.log()),
    );
    let id = n["instance_id"].as_str().unwrap_or_default().to_string();
    eventually(
        30,
        || sim.vms().1.contains(&id),
        || format!("{id} not powered off: {:?}", sim.vms()),
    );
    drop(g);
}

#[test]
fn a_batch_job_bursts_to_aws_in_moto_and_its_vm_scales_in_once_the_job_is_done() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start();
    let slot = NetSlot::take().unwrap();
    let host = vm_host(dir.path(), &slot);
    let (settings, aws) = aws_site(&moto);
    let cloud = Arc::new(rt().block_on(AwsCloud::new("aws-us-east-1", aws, Vec::new())));
    let site = cloud_site("aws-us-east-1", "aws", 2, "t3.medium", &settings);
    let (_registry, image, insecure, g) = gateway_for_vms(dir.path(), host, &[site], Moto::env());
    let onprem = full_onprem(dir.path(), &g, &insecure, &image);
    let _sim = VmSimulator::start(cloud.clone(), "aws-us-east-1", vm_cloud(dir.path(), &slot));

    // Two runs of 500m that succeed: they burst to one VM.
    let job = format!(
        "name: crunch\nkind: batch\nimage: {image}\ncommand: [\"sleep\", \"2\"]\nresources: {{cpu: 500m, memory: 64Mi}}\nbatch: {{completions: 2, parallelism: 2}}\n"
    );
    assert_eq!(g.call("POST", "/v1/workloads", Some(&job)).0, 202);
    let w = g.until("/v1/workloads/crunch", "complete", 180, |w| {
        w["job"]["state"] == "complete"
    });
    assert_eq!(w["job"]["succeeded"], 2, "{w}");
    let runs = w["allocations"].as_array().cloned().unwrap_or_default();
    assert!(
        runs.iter()
            .all(|a| a["site"] == "aws-us-east-1" && a["exit_code"] == 0),
        "{w}"
    );
    let node = runs[0]["node"].as_str().unwrap().to_string();
    let instances = rt()
        .block_on(cloud.describe(TAG_SITE, "aws-us-east-1"))
        .unwrap();
    assert_eq!(instances.len(), 1, "{instances:?}");

    // Done, the VM has no work: scaled in and terminated.
    eventually(
        60,
        || g.call("GET", &format!("/v1/nodes/{node}"), None).0 == 404,
        || format!("never scaled in: {}", g.log()),
    );
    let state = rt()
        .block_on(cloud.describe(TAG_SITE, "aws-us-east-1"))
        .unwrap()
        .into_iter()
        .find(|i| i.id == instances[0].id)
        .map(|i| i.state);
    assert!(
        matches!(
            state,
            None | Some(InstanceState::Terminated | InstanceState::Stopping)
        ),
        "{state:?}"
    );
    assert_eq!(onprem.running().len(), 1);
    drop(g);
}

#[test]
fn a_gateway_killed_between_a_launch_and_its_record_leaves_no_instance_unmanaged() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start();
    let slot = NetSlot::take().unwrap();
    let host = vm_host(dir.path(), &slot);
    let (settings_toml, settings) = aws_site(&moto);
    let cloud = Arc::new(rt().block_on(AwsCloud::new("aws-us-east-1", settings, Vec::new())));
    let site = cloud_site("aws-us-east-1", "aws", 2, "t3.medium", &settings_toml);
    let (_registry, image, insecure, mut g) =
        gateway_for_vms(dir.path(), host, &[site], Moto::env());
    let _onprem = full_onprem(dir.path(), &g, &insecure, &image);
    let sim = VmSimulator::start(cloud.clone(), "aws-us-east-1", vm_cloud(dir.path(), &slot));
    let rt = rt();
    let listed = || {
        rt.block_on(cloud.describe(TAG_SITE, "aws-us-east-1"))
            .unwrap_or_default()
    };

    // A burst: the moment its launch reaches the cloud, the gateway is
    // killed (`kill -9`); whether its record was made is a race.
    assert_eq!(
        g.call("POST", "/v1/workloads", Some(&sleeper("web", &image)))
            .0,
        202
    );
    let mut launched = Vec::new();
    eventually(
        60,
        || {
            launched = listed();
            !launched.is_empty()
        },
        || g.log(),
    );
    g.kill9();
    let first = launched[0].clone();
    // And a launch certain to be unrecorded (the window is a few
    // milliseconds wide): what the dead gateway would have left, with
    // its cluster's tags, through the same adapter.
    let tags = std::collections::BTreeMap::from([
        (
            skiff_cloud::TAG_CLUSTER.to_string(),
            first.tags[skiff_cloud::TAG_CLUSTER].clone(),
        ),
        (TAG_SITE.to_string(), "aws-us-east-1".to_string()),
    ]);
    let orphan = rt
        .block_on(cloud.launch(&skiff_cloud::LaunchRequest {
            site: "aws-us-east-1".into(),
            instance_type: "t3.medium".into(),
            count: 1,
            user_data: skiff_cloud::Secret(String::new()),
            tags,
            spot: false,
        }))
        .unwrap()
        .remove(0);

    let t = std::time::Instant::now();
    g.restart();
    // Started again: the unrecorded instance is terminated, the work runs
    // on a VM the gateway knows, and no instance of the cluster runs
    // that is not a node's or a VM it waits for.
    let state_of = |id: &str| listed().into_iter().find(|i| i.id == id).map(|i| i.state);
    eventually(
        120,
        || {
            matches!(
                state_of(&orphan.id),
                None | Some(InstanceState::Terminated | InstanceState::Stopping)
            )
        },
        || g.log(),
    );
    let terminated = t.elapsed();
    let last = std::cell::RefCell::new(serde_json::Value::Null);
    eventually(
        120,
        || {
            let w = g.call("GET", "/v1/workloads/web", None).1;
            let up = w["allocations"][0]["state"] == "running"
                && w["allocations"][0]["site"] == "aws-us-east-1";
            *last.borrow_mut() = w;
            up
        },
        || {
            format!(
                "web never ran on a cloud VM: {}\n{}\n{}",
                last.borrow(),
                g.log(),
                vm_logs(dir.path())
            )
        },
    );
    let w = last.into_inner();
    let node = w["allocations"][0]["node"].as_str().unwrap().to_string();
    let running_for = t.elapsed();
    // A VM's node takes its instance at the autoscaler's next pass after
    // it registered (until then the VM record holds it).
    g.until(&format!("/v1/nodes/{node}"), "on its instance", 10, |n| {
        n["instance_id"].is_string()
    });
    let (_, nodes) = g.call("GET", "/v1/nodes", None);
    let known: Vec<String> = nodes
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["instance_id"].as_str().map(str::to_string))
        .collect();
    let unmanaged: Vec<_> = listed()
        .into_iter()
        .filter(|i| matches!(i.state, InstanceState::Pending | InstanceState::Running))
        .filter(|i| !known.contains(&i.id))
        .collect();
    assert!(unmanaged.is_empty(), "running unmanaged: {unmanaged:?}");
    // The first launch: adopted (its VM recorded before the kill, it is
    // the node) or terminated like the other.
    let outcome = if known.contains(&first.id) {
        "adopted"
    } else {
        assert!(
            matches!(
                state_of(&first.id),
                None | Some(InstanceState::Terminated | InstanceState::Stopping)
            ),
            "{first:?}"
        );
        "terminated"
    };
    assert!(
        g.log().contains(&format!(
            "terminated {}: tagged for this cluster but never recorded",
            orphan.id
        )),
        "{}",
        g.log()
    );
    println!(
        "scenario orphan-vm: unrecorded_terminated_after_restart_s={:.2} first_launch={outcome} \
         web_running_on={node} after_s={:.2} unmanaged={}",
        terminated.as_secs_f64(),
        running_for.as_secs_f64(),
        unmanaged.len()
    );
    drop(sim);
    drop(g);
}
