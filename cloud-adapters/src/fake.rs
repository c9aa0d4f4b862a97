//! An in-memory cloud: instances are records, failures are injected. For
//! tests of the autoscaler and of [`crate::with_retry`] /
//! [`crate::terminate_owned`]; the real adapters are tested against moto
//! and a fake ARM server instead.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use crate::{CloudError, CloudProvider, Instance, InstanceState, InstanceType, LaunchRequest};

/// Which call a failure is injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    Launch,
    Describe,
    Terminate,
}

#[derive(Debug, Default)]
struct Inner {
    instances: BTreeMap<String, Instance>,
    failures: BTreeMap<Op, VecDeque<CloudError>>,
    calls: Vec<(Op, String)>,
}

/// The fake provider.
#[derive(Debug)]
pub struct FakeCloud {
    types: Vec<InstanceType>,
    inner: Mutex<Inner>,
}

impl FakeCloud {
    pub fn new(types: Vec<InstanceType>) -> Self {
        Self {
            types,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The next calls of `op` fail with these errors, in order.
    pub fn fail(&self, op: Op, errors: impl IntoIterator<Item = CloudError>) {
        self.inner
            .lock()
            .expect("lock")
            .failures
            .entry(op)
            .or_default()
            .extend(errors);
    }

    /// Every call so far: the operation and its subject.
    pub fn calls(&self) -> Vec<(Op, String)> {
        self.inner.lock().expect("lock").calls.clone()
    }

    /// All instances, terminated ones included.
    pub fn instances(&self) -> Vec<Instance> {
        self.inner
            .lock()
            .expect("lock")
            .instances
            .values()
            .cloned()
            .collect()
    }

    /// Adds an instance someone else launched (for safety tests).
    pub fn insert(&self, instance: Instance) {
        self.inner
            .lock()
            .expect("lock")
            .instances
            .insert(instance.id.clone(), instance);
    }

    fn call(&self, op: Op, subject: String) -> Result<(), CloudError> {
        let mut inner = self.inner.lock().expect("lock");
        inner.calls.push((op, subject));
        match inner.failures.get_mut(&op).and_then(VecDeque::pop_front) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl CloudProvider for FakeCloud {
    async fn instance_types(&self) -> Result<Vec<InstanceType>, CloudError> {
        Ok(self.types.clone())
    }

    async fn launch(&self, req: &LaunchRequest) -> Result<Vec<Instance>, CloudError> {
        self.call(Op::Launch, format!("{} x{}", req.instance_type, req.count))?;
        if !self.types.iter().any(|t| t.name == req.instance_type) {
            return Err(CloudError::Invalid(format!(
                "unknown instance type {}",
                req.instance_type
            )));
        }
        let mut inner = self.inner.lock().expect("lock");
        let mut out = Vec::new();
        for _ in 0..req.count {
            // Unique across fakes, as real clouds' ids are.
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let i = Instance {
                id: format!("i-{n:08x}"),
                site: req.site.clone(),
                instance_type: req.instance_type.clone(),
                state: InstanceState::Pending,
                tags: req.tags.clone(),
            };
            inner.instances.insert(i.id.clone(), i.clone());
            out.push(i);
        }
        Ok(out)
    }

    async fn describe(&self, tag: &str, value: &str) -> Result<Vec<Instance>, CloudError> {
        self.call(Op::Describe, format!("{tag}={value}"))?;
        Ok(self
            .inner
            .lock()
            .expect("lock")
            .instances
            .values()
            .filter(|i| i.tags.get(tag).map(String::as_str) == Some(value))
            .cloned()
            .collect())
    }

    async fn terminate(&self, ids: &[String]) -> Result<(), CloudError> {
        self.call(Op::Terminate, ids.join(","))?;
        let mut inner = self.inner.lock().expect("lock");
        for id in ids {
            match inner.instances.get_mut(id) {
                Some(i) => i.state = InstanceState::Terminated,
                None => return Err(CloudError::Invalid(format!("no instance {id}"))),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{Backoff, Secret, TAG_CLUSTER, TAG_SITE, terminate_owned, with_retry};

    fn cloud() -> FakeCloud {
        FakeCloud::new(vec![InstanceType {
            name: "m.large".into(),
            cpu_millis: 2000,
            memory_bytes: 8 << 30,
            price_micros_per_hour: 96_000,
            arch: "amd64".into(),
        }])
    }

    fn request(cluster: &str) -> LaunchRequest {
        LaunchRequest {
            site: "aws-us-east-1".into(),
            instance_type: "m.large".into(),
            count: 2,
            user_data: Secret("#cloud-config\njoin_token: skiff-join-secret\n".into()),
            tags: [
                (TAG_CLUSTER.to_string(), cluster.to_string()),
                (TAG_SITE.to_string(), "aws-us-east-1".to_string()),
            ]
            .into(),
            spot: false,
        }
    }

    #[test]
    fn user_data_never_prints() {
        let text = format!("{:?}", request("c1"));
        assert!(!text.contains("skiff-join-secret"), "{text}");
        assert!(text.contains("<redacted"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_is_retried_after_retry_after_and_quota_is_not() {
        let c = cloud();
        c.fail(
            Op::Launch,
            [
                CloudError::Throttled {
                    message: "RequestLimitExceeded".into(),
                    retry_after: Some(Duration::from_secs(3)),
                },
                CloudError::Other("503".into()),
            ],
        );
        let req = request("c1");
        let t = tokio::time::Instant::now();
        let got = with_retry(Backoff::default(), || c.launch(&req))
            .await
            .unwrap();
        assert_eq!(got.len(), 2);
        // 3 s as asked, then 400 ms (the doubled back-off).
        assert_eq!(t.elapsed(), Duration::from_millis(3400));
        assert_eq!(c.calls().len(), 3);

        c.fail(Op::Launch, [CloudError::Quota("vCPU limit".into())]);
        let e = with_retry(Backoff::default(), || c.launch(&req))
            .await
            .unwrap_err();
        assert!(e.wants_fallback() && !e.is_retryable());
        assert_eq!(c.calls().len(), 4, "a quota error is not retried");

        // Retries end.
        c.fail(
            Op::Launch,
            (0..10).map(|i| CloudError::Other(format!("fail {i}"))),
        );
        let e = with_retry(
            Backoff {
                attempts: 3,
                ..Backoff::default()
            },
            || c.launch(&req),
        )
        .await
        .unwrap_err();
        assert_eq!(e, CloudError::Other("fail 2".into()));
    }

    #[tokio::test]
    async fn only_the_clusters_own_instances_are_terminated() {
        let c = cloud();
        let ours = c.launch(&request("c1")).await.unwrap();
        let theirs = c.launch(&request("c2")).await.unwrap();
        c.insert(Instance {
            id: "i-untagged".into(),
            site: "aws-us-east-1".into(),
            instance_type: "m.large".into(),
            state: InstanceState::Running,
            tags: BTreeMap::new(),
        });
        let ids = vec![
            ours[0].id.clone(),
            theirs[0].id.clone(),
            "i-untagged".to_string(),
        ];
        let refused = terminate_owned(&c, "c1", &ids).await.unwrap();
        assert_eq!(
            refused,
            vec![theirs[0].id.clone(), "i-untagged".to_string()]
        );
        let state = |id: &str| {
            c.instances()
                .into_iter()
                .find(|i| i.id == id)
                .map(|i| i.state)
        };
        assert_eq!(state(&ours[0].id), Some(InstanceState::Terminated));
        assert_eq!(state(&ours[1].id), Some(InstanceState::Pending));
        assert_eq!(state(&theirs[0].id), Some(InstanceState::Pending));
        assert_eq!(state("i-untagged"), Some(InstanceState::Running));
    }
}
