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
    /// The site's instances, as the cloud lists them (`None`: the cloud
    /// did not answer, which says nothing about them).
    async fn instances(&self, site: &str) -> Option<Vec<Instance>>;
    /// The user data an instance was launched with.
    async fn user_data(&self, id: &str) -> Option<Secret>;
}

#[async_trait::async_trait]
impl LaunchedVms for skiff_cloud::aws::AwsCloud {
    async fn instances(&self, site: &str) -> Option<Vec<Instance>> {
        self.describe(TAG_SITE, site).await.ok()
    }
    async fn user_data(&self, id: &str) -> Option<Secret> {
        skiff_cloud::aws::AwsCloud::user_data(self, id).await.ok()
    }
}

/// The fake ARM server's VMs; their `customData` is the user data (ARM
/// itself never returns it).
#[async_trait::async_trait]
impl LaunchedVms for crate::azure::FakeArm {
    async fn instances(&self, site: &str) -> Option<Vec<Instance>> {
        let vms = self
            .vms()
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
            .collect();
        Some(vms)
    }
    async fn user_data(&self, id: &str) -> Option<Secret> {
        self.vms()
            .into_iter()
            .find(|v| v.name == id)
            .map(|v| Secret(v.custom_data))
    }
}

/// How the simulator runs an instance.
#[async_trait::async_trait]
pub trait Boot: Send + Sync + 'static {
    /// Boots instance `id` from the launch's user data.
    async fn boot(&self, id: &str, req: &LaunchRequest) -> Result<(), String>;
    /// Powers these instances off.
    async fn power_off(&self, ids: &[String]);
}

#[async_trait::async_trait]
impl<T: Boot> Boot for Arc<T> {
    async fn boot(&self, id: &str, req: &LaunchRequest) -> Result<(), String> {
        T::boot(self, id, req).await
    }
    async fn power_off(&self, ids: &[String]) {
        T::power_off(self, ids).await;
    }
}

/// As network namespaces on this host.
#[async_trait::async_trait]
impl Boot for LocalCloud {
    async fn boot(&self, id: &str, req: &LaunchRequest) -> Result<(), String> {
        self.boot_launched(id, req).map_err(|e| e.to_string())
    }
    async fn power_off(&self, ids: &[String]) {
        let _ = self.terminate(ids).await;
    }
}

/// As real VMs: qemu (software emulation) booting Debian's cloud kernel,
/// through `scripts/vm-test --cloud-root` (the agent is in the image; the
/// user data's write_files are written into it; its init plays the rest
/// of the bootstrap). The guest reaches this host as 10.0.2.2.
#[derive(Debug)]
pub struct QemuVms {
    dir: PathBuf,
    vms: std::sync::Mutex<BTreeMap<String, ChildGuard>>,
}

impl QemuVms {
    pub fn new(dir: &std::path::Path) -> QemuVms {
        std::fs::create_dir_all(dir).unwrap();
        QemuVms {
            dir: dir.to_path_buf(),
            vms: Default::default(),
        }
    }

    /// What `scripts/vm-test` and the VM's console printed.
    pub fn console(&self, id: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{id}.console"))).unwrap_or_default()
    }
}

#[async_trait::async_trait]
impl Boot for QemuVms {
    async fn boot(&self, id: &str, req: &LaunchRequest) -> Result<(), String> {
        // What cloud-init's write_files would leave on the VM's disk.
        let root = self.dir.join(format!("{id}.root"));
        skiff_cloud::local::write_files_under(&req.user_data.0, &root)
            .map_err(|e| e.to_string())?;
        let console = std::fs::File::create(self.dir.join(format!("{id}.console")))
            .map_err(|e| e.to_string())?;
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/vm-test");
        let child = ChildGuard::spawn(
            "qemu VM",
            Command::new("bash")
                .arg(script)
                .arg("--cloud-root")
                .arg(&root)
                .stdin(Stdio::null())
                .stdout(console.try_clone().map_err(|e| e.to_string())?)
                .stderr(console),
        )
        .map_err(|e| e.to_string())?;
        self.vms.lock().unwrap().insert(id.to_string(), child);
        Ok(())
    }

    async fn power_off(&self, ids: &[String]) {
        for id in ids {
            let vm = self.vms.lock().unwrap().remove(id);
            if let Some(mut vm) = vm {
                vm.stop(Duration::from_secs(5));
            }
        }
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
    /// Watches `site` of `cloud` every 200 ms; boots new instances with
    /// `local`, powers off those the cloud terminated.
    pub fn start(cloud: Arc<dyn LaunchedVms>, site: &str, local: impl Boot) -> VmSimulator {
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
                    // A list that failed (a busy moto timing out) is no
                    // news: powering everything off on it would kill
                    // healthy VMs.
                    let Some(listed) = cloud.instances(&site).await else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    };
                    // Gone from the cloud's list (Azure deletes): off too.
                    let gone: Vec<String> = b
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|(id, off)| !**off && !listed.iter().any(|i| &i.id == *id))
                        .map(|(id, _)| id.clone())
                        .collect();
                    for id in gone {
                        local.power_off(std::slice::from_ref(&id)).await;
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
                                let ok = local.boot(&i.id, &req).await;
                                if let Err(e) = &ok {
                                    eprintln!("vm simulator: boot {}: {e}", i.id);
                                }
                                b.lock().unwrap().insert(i.id.clone(), ok.is_err());
                            }
                            (Some(false), InstanceState::Stopping | InstanceState::Terminated) => {
                                local.power_off(std::slice::from_ref(&i.id)).await;
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
                local.power_off(&running).await;
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
