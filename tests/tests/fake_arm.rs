//! The fake Azure Resource Manager, driven with curl the way a client
//! would: tokens, a NIC and VMs with their long-running operations,
//! paging, auth errors, injected failures, and deletion.

use std::io::{Read, Write};
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use skiff_e2e::azure::{ArmFailure, ArmOp, CLIENT_ID, CLIENT_SECRET, FakeArm, TENANT};

const RG: &str = "/subscriptions/sub-1/resourceGroups/rg-1/providers";
const COMPUTE: &str = "api-version=2024-11-01";
const NETWORK: &str = "api-version=2024-07-01";

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// One HTTP call with curl.
fn curl(method: &str, url: &str, headers: &[String], body: Option<&str>) -> Resp {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-m", "10", "-D", "-", "-X", method]);
    for h in headers {
        cmd.arg("-H").arg(h);
    }
    if let Some(b) = body {
        cmd.args(["--data-binary", b]);
    }
    let out = cmd.arg(url).output().expect("curl");
    assert!(
        out.status.success(),
        "curl {method} {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: body.to_string(),
    }
}

fn sp_token(arm: &FakeArm, secret: &str) -> Resp {
    let form = format!(
        "grant_type=client_credentials&client_id={CLIENT_ID}&client_secret={secret}&scope=https%3A%2F%2Fmanagement.azure.com%2F.default"
    );
    curl(
        "POST",
        &format!("{}/{TENANT}/oauth2/v2.0/token", arm.url),
        &["Content-Type: application/x-www-form-urlencoded".into()],
        Some(&form),
    )
}

/// A client with a service principal's token.
struct Client<'a> {
    arm: &'a FakeArm,
    token: String,
}

impl Client<'_> {
    fn new(arm: &FakeArm) -> Client<'_> {
        let r = sp_token(arm, CLIENT_SECRET);
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        assert_eq!(v["token_type"], "Bearer");
        assert_eq!(v["expires_in"], 3599);
        let token = v["access_token"].as_str().unwrap().to_string();
        assert!(!token.is_empty());
        Client { arm, token }
    }

    /// `target` is a path (prefixed with the server's URL) or a full URL.
    fn call(&self, method: &str, target: &str, body: Option<&Value>) -> Resp {
        let url = if target.starts_with("http") {
            target.to_string()
        } else {
            format!("{}{target}", self.arm.url)
        };
        let mut headers = vec![format!("Authorization: Bearer {}", self.token)];
        if body.is_some() {
            headers.push("Content-Type: application/json".into());
        }
        let body = body.map(Value::to_string);
        curl(method, &url, &headers, body.as_deref())
    }

    /// Polls an Azure-AsyncOperation URL: in progress first, then its end.
    fn finish_async(&self, url: &str) -> Value {
        let first = self.call("GET", url, None);
        assert_eq!(first.status, 200, "{}", first.body);
        assert_eq!(first.json(), json!({"status": "InProgress"}));
        assert_eq!(first.header("retry-after"), Some("1"));
        let second = self.call("GET", url, None);
        assert_eq!(second.status, 200, "{}", second.body);
        second.json()
    }

    fn create_nic(&self, name: &str) -> Resp {
        let body = json!({
            "location": "westus",
            "properties": {"ipConfigurations": [{
                "name": "ipconfig1",
                "properties": {"subnet": {"id": "/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.Network/virtualNetworks/vnet/subnets/default"}},
            }]},
        });
        self.call(
            "PUT",
            &format!("{RG}/Microsoft.Network/networkInterfaces/{name}?{NETWORK}"),
            Some(&body),
        )
    }

    fn create_vm(&self, name: &str, nic: &str, size: &str, user_data: &str) -> Resp {
        self.call(
            "PUT",
            &format!("{RG}/Microsoft.Compute/virtualMachines/{name}?{COMPUTE}"),
            Some(&vm_params(name, nic, size, &STANDARD.encode(user_data))),
        )
    }

    /// A NIC and a VM on it, both provisioned.
    fn vm_ready(&self, name: &str, user_data: &str) {
        let nic = format!("{name}-nic");
        let r = self.create_nic(&nic);
        assert_eq!(r.status, 201, "{}", r.body);
        self.finish_async(r.header("azure-asyncoperation").unwrap());
        let r = self.create_vm(name, &nic, "Standard_B2s", user_data);
        assert_eq!(r.status, 201, "{}", r.body);
        let end = self.finish_async(r.header("azure-asyncoperation").unwrap());
        assert_eq!(end["status"], "Succeeded");
    }
}

/// VirtualMachine_Create_WithUserData.json's parameters, Linux flavoured.
fn vm_params(name: &str, nic: &str, size: &str, custom_data: &str) -> Value {
    json!({
        "location": "westus",
        "tags": {"skiff-site": "burst"},
        "properties": {
            "hardwareProfile": {"vmSize": size},
            "storageProfile": {
                "imageReference": {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "latest"},
                "osDisk": {"createOption": "FromImage", "deleteOption": "Delete", "managedDisk": {"storageAccountType": "Standard_LRS"}},
            },
            "osProfile": {
                "computerName": name,
                "adminUsername": "skiff",
                "customData": custom_data,
                "linuxConfiguration": {
                    "disablePasswordAuthentication": true,
                    "ssh": {"publicKeys": [{"path": "/home/skiff/.ssh/authorized_keys", "keyData": "ssh-ed25519 AAAA test"}]},
                },
            },
            "networkProfile": {"networkInterfaces": [{
                "id": format!("/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.Network/networkInterfaces/{nic}"),
                "properties": {"primary": true, "deleteOption": "Delete"},
            }]},
        },
    })
}

#[test]
fn nic_vm_list_and_delete_with_long_running_operations() {
    let arm = FakeArm::start();
    let c = Client::new(&arm);

    let sizes = c.call(
        "GET",
        &format!(
            "/subscriptions/sub-1/providers/Microsoft.Compute/locations/westus/vmSizes?{COMPUTE}"
        ),
        None,
    );
    assert_eq!(sizes.status, 200, "{}", sizes.body);
    let sizes = sizes.json();
    let b2s = sizes["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "Standard_B2s")
        .unwrap();
    assert_eq!(
        (b2s["numberOfCores"].as_u64(), b2s["memoryInMB"].as_u64()),
        (Some(2), Some(4096))
    );
    assert_eq!(sizes["value"].as_array().unwrap().len(), 4);

    // The NIC: 201 "Updating", then its operation, then "Succeeded".
    let r = c.create_nic("nic-1");
    assert_eq!(r.status, 201, "{}", r.body);
    let nic = r.json();
    assert_eq!(nic["type"], "Microsoft.Network/networkInterfaces");
    assert_eq!(nic["properties"]["provisioningState"], "Updating");
    let ip = nic["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"]
        .as_str()
        .unwrap();
    assert!(ip.starts_with("10.0.0."), "{ip}");
    let op = r.header("azure-asyncoperation").unwrap().to_string();
    assert!(
        op.starts_with(&format!(
            "{}/subscriptions/sub-1/providers/Microsoft.Network/locations/westus/operations/",
            arm.url
        )) && op.ends_with(NETWORK),
        "{op}"
    );
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(c.finish_async(&op), json!({"status": "Succeeded"}));
    let nic_path = format!("{RG}/Microsoft.Network/networkInterfaces/nic-1?{NETWORK}");
    let got = c.call("GET", &nic_path, None);
    assert_eq!(got.json()["properties"]["provisioningState"], "Succeeded");

    // The VM on it, with custom data.
    let script = "#cloud-config\nruncmd: [echo hi]\n";
    let r = c.create_vm("vm-1", "nic-1", "Standard_B2s", script);
    assert_eq!(r.status, 201, "{}", r.body);
    let vm = r.json();
    assert_eq!(
        vm["id"],
        "/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.Compute/virtualMachines/vm-1"
    );
    assert_eq!(vm["type"], "Microsoft.Compute/virtualMachines");
    assert_eq!(vm["properties"]["provisioningState"], "Creating");
    assert_eq!(
        vm["properties"]["hardwareProfile"]["vmSize"],
        "Standard_B2s"
    );
    assert!(
        vm["properties"]["vmId"]
            .as_str()
            .is_some_and(|s| s.len() == 36)
    );
    assert!(vm["properties"]["osProfile"]["customData"].is_null());
    assert_eq!(vm["properties"]["osProfile"]["computerName"], "vm-1");
    assert_eq!(vm["tags"]["skiff-site"], "burst");
    let op = r.header("azure-asyncoperation").unwrap().to_string();
    assert!(
        op.contains("/providers/Microsoft.Compute/locations/westus/operations/")
            && op.ends_with(COMPUTE),
        "{op}"
    );
    let vm_path = format!("{RG}/Microsoft.Compute/virtualMachines/vm-1?{COMPUTE}");
    assert_eq!(
        c.call("GET", &vm_path, None).json()["properties"]["provisioningState"],
        "Creating"
    );
    assert_eq!(c.finish_async(&op), json!({"status": "Succeeded"}));
    let got = c.call("GET", &vm_path, None);
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["properties"]["provisioningState"], "Succeeded");
    assert_eq!(got.json()["properties"]["vmId"], vm["properties"]["vmId"]);
    assert_eq!(
        c.call("GET", &nic_path, None).json()["properties"]["virtualMachine"]["id"],
        vm["id"]
    );

    let vms = arm.vms();
    assert_eq!(vms.len(), 1);
    assert_eq!(vms[0].name, "vm-1");
    assert_eq!(vms[0].custom_data, script);
    assert_eq!(vms[0].size, "Standard_B2s");
    assert_eq!(vms[0].provisioning_state, "Succeeded");
    assert_eq!(
        vms[0].tags.get("skiff-site").map(String::as_str),
        Some("burst")
    );
    assert!(!vms[0].spot);
    assert!(vms[0].nic_ids[0].ends_with("/networkInterfaces/nic-1"));
    assert_eq!(arm.disks(), vec!["vm-1_OsDisk".to_string()]);

    // Three VMs, listed two per page.
    c.vm_ready("vm-2", "two");
    c.vm_ready("vm-3", "three");
    let mut names = Vec::new();
    let mut next = format!("{RG}/Microsoft.Compute/virtualMachines?{COMPUTE}");
    let mut pages = 0;
    loop {
        let page = c.call("GET", &next, None);
        assert_eq!(page.status, 200, "{}", page.body);
        let page = page.json();
        pages += 1;
        names.extend(
            page["value"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["name"].as_str().unwrap().to_string()),
        );
        match page["nextLink"].as_str() {
            Some(link) => {
                assert!(
                    link.starts_with(&arm.url) && link.contains("$skiptoken="),
                    "{link}"
                );
                next = link.to_string();
            }
            None => break,
        }
    }
    assert_eq!(pages, 2);
    assert_eq!(names, ["vm-1", "vm-2", "vm-3"]);

    // A NIC in use cannot go.
    let r = c.call(
        "DELETE",
        &format!("{RG}/Microsoft.Network/networkInterfaces/vm-2-nic?{NETWORK}"),
        None,
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "NicInUse");

    // Deleting vm-1: 202 + Location, "Deleting", then gone with its disk and NIC.
    let r = c.call(
        "DELETE",
        &format!("{RG}/Microsoft.Compute/virtualMachines/vm-1?forceDeletion=false&{COMPUTE}"),
        None,
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("1"));
    let location = r.header("location").unwrap().to_string();
    assert!(
        location.starts_with(&format!(
            "{}/subscriptions/sub-1/providers/Microsoft.Compute/locations/westus/operations/",
            arm.url
        )) && location.ends_with(&format!("monitor=true&{COMPUTE}")),
        "{location}"
    );
    assert_eq!(
        c.call("GET", &vm_path, None).json()["properties"]["provisioningState"],
        "Deleting"
    );
    let first = c.call("GET", &location, None);
    assert_eq!(first.status, 202);
    assert_eq!(first.header("retry-after"), Some("1"));
    assert!(arm.vms().iter().any(|v| v.name == "vm-1"));
    let done = c.call("GET", &location, None);
    assert_eq!(done.status, 200);
    assert!(done.body.is_empty(), "{}", done.body);
    let gone = c.call("GET", &vm_path, None);
    assert_eq!(gone.status, 404);
    assert_eq!(gone.json()["error"]["code"], "ResourceNotFound");
    assert!(
        !arm.disks().contains(&"vm-1_OsDisk".to_string()),
        "{:?}",
        arm.disks()
    );
    assert!(
        !arm.nics().contains(&"nic-1".to_string()),
        "{:?}",
        arm.nics()
    );
    assert_eq!(c.call("GET", &nic_path, None).status, 404);
    assert_eq!(arm.vms().len(), 2);
    let created = arm.created();
    assert_eq!(created.len(), 3);
    assert_eq!(created[0].custom_data, script);
    // Deleting what is gone: 204.
    assert_eq!(c.call("DELETE", &vm_path, None).status, 204);

    let requests = arm.requests();
    assert_eq!(
        requests[0],
        ("POST".into(), format!("/{TENANT}/oauth2/v2.0/token"))
    );
    assert!(requests.contains(&(
        "PUT".into(),
        "/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.Compute/virtualMachines/vm-1".into()
    )));
}

#[test]
fn tokens_auth_and_api_versions() {
    let arm = FakeArm::start();
    let r = sp_token(&arm, "wrong");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "invalid_client");

    let list = format!(
        "{}{RG}/Microsoft.Compute/virtualMachines?{COMPUTE}",
        arm.url
    );
    let r = curl("GET", &list, &[], None);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "InvalidAuthenticationToken");
    let r = curl(
        "GET",
        &list,
        &["Authorization: Bearer made-up".into()],
        None,
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "InvalidAuthenticationToken");

    // Managed identity: the Metadata header is required.
    let imds = format!(
        "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F",
        arm.url
    );
    let r = curl("GET", &imds, &[], None);
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"error": "invalid_request", "error_description": "Required metadata header not specified"})
    );
    let r = curl("GET", &imds, &["Metadata: true".into()], None);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], "3599");
    assert_eq!(v["resource"], "https://management.azure.com/");
    assert!(v["expires_on"].as_str().unwrap().parse::<u64>().is_ok());
    let token = v["access_token"].as_str().unwrap();
    let r = curl(
        "GET",
        &list,
        &[format!("Authorization: Bearer {token}")],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"value": []}));

    let c = Client::new(&arm);
    let base = format!("{RG}/Microsoft.Compute/virtualMachines/vm-x");
    let r = c.call("GET", &base, None);
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, json!("MissingApiVersionParameter"))
    );
    let r = c.call("GET", &format!("{base}?{NETWORK}"), None);
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, json!("InvalidApiVersionParameter"))
    );
    let r = c.call("GET", &format!("{base}?{COMPUTE}"), None);
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (404, json!("ResourceNotFound"))
    );
    let r = c.call("GET", "/subscriptions/sub-1/nothing-here", None);
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]["code"].is_string());
}

#[test]
fn injected_failures_and_validation() {
    let arm = FakeArm::start();
    let c = Client::new(&arm);

    // Throttling: the status, the error body and Retry-After; then normal again.
    arm.fail_next(
        ArmOp::ListVms,
        ArmFailure::Status {
            status: 429,
            code: "TooManyRequests".into(),
            message: "Slow down".into(),
            retry_after: Some(7),
        },
    );
    let list = format!("{RG}/Microsoft.Compute/virtualMachines?{COMPUTE}");
    let r = c.call("GET", &list, None);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(
        r.json(),
        json!({"error": {"code": "TooManyRequests", "message": "Slow down"}})
    );
    assert_eq!(c.call("GET", &list, None).status, 200);

    let r = c.create_nic("nic-a");
    c.finish_async(r.header("azure-asyncoperation").unwrap());

    // Validation.
    let r = c.create_vm("vm-a", "nic-a", "Standard_Huge", "x");
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (409, json!("SkuNotAvailable"))
    );
    let r = c.create_vm("vm-a", "no-such-nic", "Standard_B2s", "x");
    assert_eq!(r.status, 400);
    let err = &r.json()["error"];
    assert_eq!(err["code"], "InvalidParameter");
    assert_eq!(err["target"], "networkProfile.networkInterfaces");
    assert!(err["message"].as_str().unwrap().contains("no-such-nic"));
    let mut params = vm_params("vm-a", "nic-a", "Standard_B2s", "not base64!");
    let vm_path = format!("{RG}/Microsoft.Compute/virtualMachines/vm-a?{COMPUTE}");
    let r = c.call("PUT", &vm_path, Some(&params));
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, json!("InvalidParameter"))
    );
    params["properties"]["osProfile"]["customData"] = json!(STANDARD.encode("ok"));
    params["properties"]["osProfile"]
        .as_object_mut()
        .unwrap()
        .remove("adminUsername");
    let r = c.call("PUT", &vm_path, Some(&params));
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("adminUsername")
    );
    let r = c.call(
        "PUT",
        &format!("{RG}/Microsoft.Network/networkInterfaces/bad?{NETWORK}"),
        Some(&json!({"properties": {}})),
    );
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("location")
    );
    assert!(arm.vms().is_empty());

    // An allocation failure surfaces in the operation; the VM is left "Failed".
    arm.fail_next(
        ArmOp::CreateVm,
        ArmFailure::AsyncFailed {
            code: "AllocationFailed".into(),
            message: "No capacity".into(),
        },
    );
    let r = c.create_vm("vm-a", "nic-a", "Standard_B2s", "hello");
    assert_eq!(r.status, 201, "{}", r.body);
    let end = c.finish_async(r.header("azure-asyncoperation").unwrap());
    assert_eq!(
        end,
        json!({"status": "Failed", "error": {"code": "AllocationFailed", "message": "No capacity"}})
    );
    assert_eq!(
        c.call("GET", &vm_path, None).json()["properties"]["provisioningState"],
        "Failed"
    );
    assert_eq!(arm.vms()[0].provisioning_state, "Failed");
    assert_eq!(arm.created()[0].custom_data, "hello");

    // A token failure.
    arm.fail_next(
        ArmOp::Token,
        ArmFailure::Status {
            status: 503,
            code: "temporarily_unavailable".into(),
            message: "try later".into(),
            retry_after: None,
        },
    );
    assert_eq!(sp_token(&arm, CLIENT_SECRET).status, 503);
    assert_eq!(sp_token(&arm, CLIENT_SECRET).status, 200);
}

#[test]
fn nic_deletion_failed_vm_deletion_and_prompt_stop() {
    let arm = FakeArm::start();
    let c = Client::new(&arm);

    // A free NIC goes through its Location: 202, then 200 and gone.
    let r = c.create_nic("nic-free");
    c.finish_async(r.header("azure-asyncoperation").unwrap());
    let r = c.call(
        "DELETE",
        &format!("{RG}/Microsoft.Network/networkInterfaces/nic-free?{NETWORK}"),
        None,
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let location = r.header("location").unwrap().to_string();
    assert!(
        location.starts_with(&format!(
            "{}{RG}/Microsoft.Network/networkInterfaces/nic-free/operationResults/",
            arm.url
        )) && location.ends_with(NETWORK),
        "{location}"
    );
    assert_eq!(c.call("GET", &location, None).status, 202);
    assert_eq!(arm.nics(), ["nic-free"]);
    assert_eq!(c.call("GET", &location, None).status, 200);
    assert!(arm.nics().is_empty());
    let again = format!("{RG}/Microsoft.Network/networkInterfaces/nic-free?{NETWORK}");
    assert_eq!(c.call("DELETE", &again, None).status, 204);

    // A delete whose operation fails leaves the VM, "Failed".
    c.vm_ready("vm-f", "data");
    arm.fail_next(
        ArmOp::DeleteVm,
        ArmFailure::AsyncFailed {
            code: "InternalExecutionError".into(),
            message: "boom".into(),
        },
    );
    let vm_path = format!("{RG}/Microsoft.Compute/virtualMachines/vm-f?{COMPUTE}");
    let r = c.call("DELETE", &vm_path, None);
    assert_eq!(r.status, 202);
    let location = r.header("location").unwrap().to_string();
    assert_eq!(c.call("GET", &location, None).status, 202);
    let end = c.call("GET", &location, None);
    assert_eq!(end.status, 409);
    assert_eq!(end.json()["status"], "Failed");
    assert_eq!(end.json()["error"]["code"], "InternalExecutionError");
    assert_eq!(arm.vms()[0].provisioning_state, "Failed");
    assert_eq!(arm.disks(), ["vm-f_OsDisk"]);

    // Stopping does not wait for a client's idle keep-alive connection.
    let addr = arm.url.trim_start_matches("http://").to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.write_all(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    let n = conn.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 404"));
    // (Were it waiting for the connection, the drop would never return.)
    drop(arm);
    // The server closed the idle connection, and listens no more.
    assert_eq!(conn.read(&mut buf).unwrap_or(0), 0);
    assert!(std::net::TcpStream::connect(&addr).is_err());
}
