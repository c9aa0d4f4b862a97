//! The AWS and Azure providers against their peers, call by call: moto
//! (EC2 in server mode) and the fake ARM server (shaped by Azure's
//! published examples). No root needed.

use std::collections::BTreeMap;

use skiff_cloud::aws::{AwsCloud, AwsSettings};
use skiff_cloud::azure::{AzureCloud, AzureSettings, Credential};
use skiff_cloud::{
    CloudError, CloudProvider, InstanceState, InstanceType, LaunchRequest, Secret, TAG_CLUSTER,
    TAG_NODE, TAG_SITE, terminate_owned,
};
use skiff_e2e::azure::{ArmFailure, ArmOp, CLIENT_ID, CLIENT_SECRET, FakeArm, TENANT};
use skiff_e2e::cloud::Moto;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn priced(name: &str) -> InstanceType {
    InstanceType {
        name: name.into(),
        cpu_millis: 0,
        memory_bytes: 0,
        price_micros_per_hour: 41_600,
        arch: "amd64".into(),
    }
}

fn request(site: &str, ty: &str, node: &str, cluster: &str) -> LaunchRequest {
    LaunchRequest {
        site: site.into(),
        instance_type: ty.into(),
        count: 1,
        user_data: Secret("#cloud-config\nwrite_files: []\n".into()),
        tags: BTreeMap::from([
            (TAG_CLUSTER.to_string(), cluster.to_string()),
            (TAG_SITE.to_string(), site.to_string()),
            (TAG_NODE.to_string(), node.to_string()),
        ]),
        spot: false,
    }
}

fn aws(moto: &Moto, subnet_id: Option<&str>) -> AwsCloud {
    for (k, v) in Moto::env() {
        // SAFETY: set before this test starts any thread of its own.
        unsafe { std::env::set_var(k, v) };
    }
    let settings = AwsSettings {
        region: "us-east-1".into(),
        endpoint: Some(moto.endpoint.clone()),
        image_id: "ami-760aaa0f".into(),
        subnet_id: subnet_id.map(String::from),
        security_group_ids: Vec::new(),
        instance_profile: None,
        spot: false,
        key_name: None,
    };
    rt().block_on(AwsCloud::new(
        "aws-us-east-1",
        settings,
        vec![priced("t3.medium")],
    ))
}

#[test]
fn aws_shapes_launch_describe_and_owned_only_termination_against_moto() {
    let moto = Moto::start();
    let cloud = aws(&moto, None);
    let rt = rt();
    // Shapes from EC2, the price from the config.
    let types = rt.block_on(cloud.instance_types()).unwrap();
    assert_eq!(types.len(), 1);
    assert_eq!(
        (types[0].cpu_millis, types[0].memory_bytes),
        (2000, 4 << 30)
    );
    assert_eq!(types[0].price_micros_per_hour, 41_600);

    let ours = rt
        .block_on(cloud.launch(&request("aws-us-east-1", "t3.medium", "aws-1", "c1")))
        .unwrap();
    let theirs = rt
        .block_on(cloud.launch(&request("aws-us-east-1", "t3.medium", "aws-2", "other")))
        .unwrap();
    assert_eq!(ours[0].tags[TAG_NODE], "aws-1");
    // The user data goes to EC2 as launched.
    let data = rt.block_on(cloud.user_data(&ours[0].id)).unwrap();
    assert_eq!(data.0, "#cloud-config\nwrite_files: []\n");
    let listed = rt.block_on(cloud.describe(TAG_CLUSTER, "c1")).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, ours[0].id);
    // Only this cluster's instances are terminated.
    let refused = rt
        .block_on(terminate_owned(
            &cloud,
            "c1",
            &[ours[0].id.clone(), theirs[0].id.clone()],
        ))
        .unwrap();
    assert_eq!(refused, [theirs[0].id.clone()]);
    let state = |id: &str, cluster: &str| {
        rt.block_on(cloud.describe(TAG_CLUSTER, cluster))
            .unwrap()
            .into_iter()
            .find(|i| i.id == id)
            .unwrap()
            .state
    };
    assert_eq!(state(&ours[0].id, "c1"), InstanceState::Terminated);
    assert_ne!(state(&theirs[0].id, "other"), InstanceState::Terminated);
}

#[test]
fn aws_errors_are_classified_and_name_what_is_wrong() {
    let moto = Moto::start();
    let rt = rt();
    let bad_subnet = aws(&moto, Some("subnet-0000000000000000f"));
    let e = rt
        .block_on(bad_subnet.launch(&request("aws-us-east-1", "t3.medium", "n", "c1")))
        .unwrap_err();
    assert!(
        matches!(&e, CloudError::Invalid(m) if m.contains("InvalidSubnetID")),
        "{e:?}"
    );
    // An endpoint nobody answers: a transient error, retried by callers.
    let gone = {
        let settings = AwsSettings {
            region: "us-east-1".into(),
            endpoint: Some("http://127.0.0.1:9".into()),
            image_id: "ami-760aaa0f".into(),
            subnet_id: None,
            security_group_ids: Vec::new(),
            instance_profile: None,
            spot: false,
            key_name: None,
        };
        rt.block_on(AwsCloud::new("aws-us-east-1", settings, Vec::new()))
    };
    let e = rt.block_on(gone.describe(TAG_CLUSTER, "c1")).unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
}

fn azure(arm: &FakeArm, credential: Credential) -> AzureCloud {
    let settings = AzureSettings {
        subscription_id: "sub-1".into(),
        resource_group: "skiff-rg".into(),
        location: "westeurope".into(),
        subnet_id: "/subscriptions/sub-1/resourceGroups/skiff-rg/providers/Microsoft.Network/virtualNetworks/vnet/subnets/default".into(),
        image: "Canonical:ubuntu-24_04-lts:server:latest".into(),
        admin_username: "skiff".into(),
        ssh_public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBkrZ2T3J0FakeKeyForTests skiff".into(),
        spot: false,
        endpoint: Some(arm.url.clone()),
        imds_endpoint: Some(arm.url.clone()),
        identity_client_id: None,
    };
    AzureCloud::new(
        "azure-westeurope",
        settings,
        credential,
        vec![priced("Standard_D2s_v5")],
    )
    .unwrap()
}

fn service_principal(arm: &FakeArm, secret: &str) -> Credential {
    Credential::ServicePrincipal {
        authority: arm.url.clone(),
        tenant: TENANT.into(),
        client_id: CLIENT_ID.into(),
        secret: secret.into(),
    }
}

#[test]
fn azure_managed_identity_lists_shapes_and_a_wrong_secret_is_an_auth_error() {
    let arm = FakeArm::start();
    let rt = rt();
    let mi = azure(
        &arm,
        Credential::ManagedIdentity {
            imds: arm.url.clone(),
            client_id: None,
        },
    );
    let types = rt.block_on(mi.instance_types()).unwrap();
    assert_eq!(
        (types[0].cpu_millis, types[0].memory_bytes),
        (2000, 8192 << 20)
    );
    assert!(
        arm.requests()
            .iter()
            .any(|(m, p)| m == "GET" && p == "/metadata/identity/oauth2/token")
    );
    let wrong = azure(&arm, service_principal(&arm, "not-the-secret"));
    let e = rt.block_on(wrong.instance_types()).unwrap_err();
    assert!(matches!(e, CloudError::Auth(_)), "{e:?}");
    assert!(!format!("{e}").contains("not-the-secret"));
}

#[test]
fn azure_launches_pages_and_cleans_up_after_an_allocation_failure() {
    let arm = FakeArm::start();
    let rt = rt();
    let cloud = azure(&arm, service_principal(&arm, CLIENT_SECRET));
    // Three VMs: listed across pages.
    let mut req = request("azure-westeurope", "Standard_D2s_v5", "az-1", "c1");
    req.count = 3;
    let vms = rt.block_on(cloud.launch(&req)).unwrap();
    assert_eq!(vms.len(), 3);
    assert_eq!(
        rt.block_on(cloud.describe(TAG_CLUSTER, "c1"))
            .unwrap()
            .len(),
        3
    );
    let created = arm.created();
    assert!(
        created
            .iter()
            .all(|v| v.custom_data.starts_with("#cloud-config"))
    );
    // The region is out of capacity: the operation fails, the error says
    // so (the caller falls back), and no NIC or VM is left.
    arm.fail_next(
        ArmOp::CreateVm,
        ArmFailure::AsyncFailed {
            code: "AllocationFailed".into(),
            message: "Allocation failed. We do not have sufficient capacity.".into(),
        },
    );
    let e = rt
        .block_on(cloud.launch(&request(
            "azure-westeurope",
            "Standard_D2s_v5",
            "az-9",
            "c1",
        )))
        .unwrap_err();
    assert!(matches!(e, CloudError::Capacity(_)), "{e:?}");
    assert!(!arm.vms().iter().any(|v| v.name == "az-9"));
    assert!(!arm.nics().iter().any(|n| n.starts_with("az-9")));
    // A size the region does not offer: another type or site may do.
    let e = rt
        .block_on(cloud.launch(&request("azure-westeurope", "Standard_Nope", "az-8", "c1")))
        .unwrap_err();
    assert!(
        matches!(&e, CloudError::Capacity(m) if m.contains("SkuNotAvailable")),
        "{e:?}"
    );
    // A launch whose VM was refused and whose NIC could not be deleted
    // either (as when a gateway stops between the two): the sweep deletes
    // that NIC, and only it (the running VMs' NICs stay).
    arm.fail_next(
        ArmOp::CreateVm,
        ArmFailure::Status {
            status: 409,
            code: "OperationNotAllowed".into(),
            message: "Operation could not be completed as it results in exceeding approved quota."
                .into(),
            retry_after: None,
        },
    );
    arm.fail_next(
        ArmOp::DeleteNic,
        ArmFailure::Status {
            status: 500,
            code: "InternalServerError".into(),
            message: "An error occurred.".into(),
            retry_after: None,
        },
    );
    assert!(
        rt.block_on(cloud.launch(&request(
            "azure-westeurope",
            "Standard_D2s_v5",
            "az-7",
            "c1"
        )))
        .is_err()
    );
    assert!(
        arm.nics().iter().any(|n| n == "az-7-nic"),
        "{:?}",
        arm.nics()
    );
    assert_eq!(
        rt.block_on(cloud.sweep("c2")).unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        rt.block_on(cloud.sweep("c1")).unwrap(),
        vec!["az-7-nic".to_string()]
    );
    assert_eq!(arm.nics().len(), 3, "{:?}", arm.nics());
    // Terminated: VM, NIC and disk gone.
    let ids: Vec<String> = vms.iter().map(|v| v.id.clone()).collect();
    rt.block_on(terminate_owned(&cloud, "c1", &ids)).unwrap();
    assert!(arm.vms().is_empty(), "{:?}", arm.vms());
    assert!(arm.nics().is_empty(), "{:?}", arm.nics());
    assert!(arm.disks().is_empty(), "{:?}", arm.disks());
}

/// A gateway config with one AWS site on moto listing `types` (TOML
/// tables of `[[sites.instance_types]]`).
fn aws_gateway_config(moto: &Moto, types: &str) -> String {
    format!(
        "[[sites]]\nname = \"aws\"\nkind = \"aws\"\n{types}\
         [sites.aws]\nregion = \"us-east-1\"\nendpoint = \"{}\"\nimage_id = \"ami-760aaa0f\"\n",
        moto.endpoint
    )
}

#[test]
fn types_named_alone_take_their_shape_from_ec2_and_one_the_region_lacks_stops_the_start() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    // t3.medium by name only; c5.xlarge with the operator's own shape.
    let config = aws_gateway_config(
        &moto,
        "[[sites.instance_types]]\nname = \"t3.medium\"\nprice_per_hour = \"0.0416\"\n\
         [[sites.instance_types]]\nname = \"c5.xlarge\"\ncpu = \"3\"\nmemory = \"6Gi\"\nprice_per_hour = \"0.17\"\n",
    );
    let g =
        skiff_e2e::Gateway::start_env(&dir.path().join("gw"), &config, "127.0.0.1", Moto::env());
    let (code, sites) = g.call("GET", "/v1/sites", None);
    assert_eq!(code, 200, "{sites}");
    let types = &sites
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "aws")
        .unwrap()["instance_types"];
    // EC2's 2 vCPUs and 4 GiB, less the agent's default reserve.
    assert_eq!(types[0]["name"], "t3.medium");
    assert_eq!(types[0]["cpu_millis"], 1900);
    assert_eq!(types[0]["memory_bytes"], (4u64 << 30) - (256 << 20));
    assert_eq!(types[0]["price_per_hour"], "0.0416");
    assert_eq!(
        (
            types[1]["cpu_millis"].as_u64(),
            types[1]["memory_bytes"].as_u64()
        ),
        (Some(3000), Some(6 << 30))
    );
    drop(g);

    // A type us-east-1 does not have: the gateway does not start, and says
    // which.
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        aws_gateway_config(
            &moto,
            "[[sites.instance_types]]\nname = \"m9.huge\"\nprice_per_hour = \"1\"\n",
        ),
    )
    .unwrap();
    let out = std::process::Command::new(skiff_e2e::bin("skiff-gateway"))
        .arg("serve")
        .arg("--state-dir")
        .arg(dir.path().join("bad-state"))
        .args(["--listen", &format!("127.0.0.1:{}", skiff_e2e::free_port())])
        .args([
            "--agent-listen",
            &format!("127.0.0.1:{}", skiff_e2e::free_port()),
        ])
        .arg("--config")
        .arg(&path)
        .envs(Moto::env())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started: {stderr}");
    assert!(
        stderr.contains("site aws:") && stderr.contains("m9.huge"),
        "{stderr}"
    );
    println!("refused at start: {}", stderr.trim());
}
