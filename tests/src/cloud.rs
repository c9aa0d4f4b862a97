//! Clouds for end-to-end tests: moto (a real EC2 API, in server mode, on
//! a loopback port) and the VM simulator, which boots what a cloud was
//! asked to launch: it reads each instance's user data back from the
//! cloud and runs exactly that bootstrap in a local "VM" (a network
//! namespace, see `skiff_cloud::local`); when the cloud says an instance
//! is terminated, its VM is powered off.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use skiff_cloud::local::LocalCloud;
use skiff_cloud::{CloudProvider, Instance, InstanceState, LaunchRequest, Secret, TAG_SITE};
use skiff_test_support::net::{free_port, wait_for_listener};
use skiff_test_support::procs::ChildGuard;

/// `moto_server` on a free loopback port; stopped by pid on drop.
#[derive(Debug)]
pub struct Moto {
    pub endpoint: String,
    _process: ChildGuard,
    _dir: tempfile::TempDir,
}

impl Moto {
    pub fn start() -> Moto {
        let venv = std::env::var("SKIFF_MOTO_VENV")
            .unwrap_or_else(|_| "/var/tmp/skiff-moto-venv".to_string());
        let bin = PathBuf::from(venv).join("bin/moto_server");
        assert!(
            bin.is_file(),
            "{} is missing: run scripts/install-test-deps",
            bin.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port().unwrap();
        let log = std::fs::File::create(dir.path().join("moto.log")).unwrap();
        let process = ChildGuard::spawn(
            "moto_server",
            Command::new(bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        )
        .unwrap();
        wait_for_listener(([127, 0, 0, 1], port).into(), Duration::from_secs(30)).unwrap();
        Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            _process: process,
            _dir: dir,
        }
    }

    /// The environment the AWS SDK needs to talk to it (fake credentials
    /// through the standard chain).
    pub fn env() -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

/// Where the simulator learns what was launched.
#[async_trait::async_trait]
pub trait LaunchedVms: Send + Sync + 'static {
    /// The site's instances, as the cloud lists them.
    async fn instances(&self, site: &str) -> Vec<Instance>;
    /// The user data an instance was launched with.
    async fn user_data(&self, id: &str) -> Option<Secret>;
}

#[async_trait::async_trait]
impl LaunchedVms for skiff_cloud::aws::AwsCloud {
    async fn instances(&self, site: &str) -> Vec<Instance> {
        self.describe(TAG_SITE, site).await.unwrap_or_default()
    }
    async fn user_data(&self, id: &str) -> Option<Secret> {
        skiff_cloud::aws::AwsCloud::user_data(self, id).await.ok()
    }
}

/// The fake ARM server's VMs; their `customData` is the user data (ARM
/// itself never returns it).
#[async_trait::async_trait]
impl LaunchedVms for crate::azure::FakeArm {
    async fn instances(&self, site: &str) -> Vec<Instance> {
        self.vms()
            .into_iter()
            .filter(|v| v.tags.get(TAG_SITE).map(String::as_str) == Some(site))
            .map(|v| Instance {
                id: v.name,
                site: site.to_string(),
                instance_type: v.size,
                state: match v.provisioning_state.as_str() {
                    "Creating" | "Updating" => InstanceState::Pending,
                    "Succeeded" => InstanceState::Running,
                    _ => InstanceState::Stopping,
                },
                tags: v.tags,
            })
            .collect()
    }
    async fn user_data(&self, id: &str) -> Option<Secret> {
        self.vms()
            .into_iter()
            .find(|v| v.name == id)
            .map(|v| Secret(v.custom_data))
    }
}

/// Boots what a cloud launched, until dropped (then powers everything
/// off).
#[derive(Debug)]
pub struct VmSimulator {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Instance ids booted so far, and those powered off.
    pub booted: Arc<std::sync::Mutex<BTreeMap<String, bool>>>,
}

impl VmSimulator {
    /// Watches `site` of `cloud` every 200 ms; boots new instances in
    /// `local`, powers off those the cloud terminated.
    pub fn start(cloud: Arc<dyn LaunchedVms>, site: &str, local: LocalCloud) -> VmSimulator {
        let stop = Arc::new(AtomicBool::new(false));
        let booted: Arc<std::sync::Mutex<BTreeMap<String, bool>>> = Arc::default();
        let (s, b, site) = (stop.clone(), booted.clone(), site.to_string());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                while !s.load(Ordering::SeqCst) {
                    let listed = cloud.instances(&site).await;
                    // Gone from the cloud's list (Azure deletes): off too.
                    let gone: Vec<String> = b
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|(id, off)| !**off && !listed.iter().any(|i| &i.id == *id))
                        .map(|(id, _)| id.clone())
                        .collect();
                    for id in gone {
                        let _ = local.terminate(std::slice::from_ref(&id)).await;
                        b.lock().unwrap().insert(id, true);
                    }
                    for i in listed {
                        let known = b.lock().unwrap().get(&i.id).copied();
                        match (known, i.state) {
                            (None, InstanceState::Pending | InstanceState::Running) => {
                                let Some(user_data) = cloud.user_data(&i.id).await else {
                                    continue;
                                };
                                let req = LaunchRequest {
                                    site: site.clone(),
                                    instance_type: i.instance_type.clone(),
                                    count: 1,
                                    user_data,
                                    tags: i.tags.clone(),
                                    spot: false,
                                };
                                let ok = local.boot_launched(&i.id, &req);
                                if let Err(e) = &ok {
                                    eprintln!("vm simulator: boot {}: {e}", i.id);
                                }
                                b.lock().unwrap().insert(i.id.clone(), ok.is_err());
                            }
                            (Some(false), InstanceState::Stopping | InstanceState::Terminated) => {
                                let _ = local.terminate(std::slice::from_ref(&i.id)).await;
                                b.lock().unwrap().insert(i.id.clone(), true);
                            }
                            _ => {}
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let running: Vec<String> = b
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(_, off)| !**off)
                    .map(|(id, _)| id.clone())
                    .collect();
                let _ = local.terminate(&running).await;
            });
        });
        VmSimulator {
            stop,
            thread: Some(thread),
            booted,
        }
    }

    /// (booted, powered off) instance ids.
    pub fn vms(&self) -> (Vec<String>, Vec<String>) {
        let b = self.booted.lock().unwrap();
        (
            b.keys().cloned().collect(),
            b.iter()
                .filter(|(_, off)| **off)
                .map(|(k, _)| k.clone())
                .collect(),
        )
    }
}

impl Drop for VmSimulator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
