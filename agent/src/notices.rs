//! The cloud's notice that it takes this VM back: AWS's spot interruption
//! notice (IMDS `spot/instance-action`, about 2 minutes ahead) or Azure's
//! Scheduled Events (`Preempt` for spot VMs, `Terminate`, up to 15 minutes
//! ahead). A watcher polls the instance metadata service and keeps the
//! standing notice in a `watch` channel; the session reports it, and the
//! gateway starts the node's work elsewhere before the VM goes.
//!
//! The parsers are pure (tested without a cloud); the HTTP calls are
//! plain HTTP to the link-local metadata address, as every cloud SDK
//! makes them.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use skiff_proto::wire::v1;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// `[notices]` in the agent config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NoticesConfig {
    /// Whose notices to watch: `none` (default), `aws` or `azure`.
    pub cloud: NoticeSource,
    /// The instance metadata service (default `http://169.254.169.254`).
    pub metadata_url: String,
    /// How often it is asked (default 5s, as AWS advises).
    pub poll_interval: skiff_proto::Duration,
}

impl Default for NoticesConfig {
    fn default() -> Self {
        Self {
            cloud: NoticeSource::None,
            metadata_url: "http://169.254.169.254".into(),
            poll_interval: skiff_proto::Duration::from_secs(5),
        }
    }
}

impl NoticesConfig {
    /// The key and reason of a bad value.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !self.metadata_url.starts_with("http://") && !self.metadata_url.starts_with("https://") {
            return Err((
                "notices.metadata_url".into(),
                format!("{:?} is not an http(s) URL", self.metadata_url),
            ));
        }
        if self.poll_interval.std() < Duration::from_millis(100) {
            return Err((
                "notices.poll_interval".into(),
                "must be at least 100ms".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoticeSource {
    None,
    Aws,
    Azure,
}

/// Why the metadata service could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum NoticeError {
    #[error("request {url}: {source}")]
    Request {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{url}: timed out")]
    Timeout { url: String },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: {source}")]
    Body {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

/// AWS's `spot/instance-action` document.
#[derive(Debug, Deserialize)]
struct InstanceAction {
    action: String,
    time: String,
}

/// The notice in AWS's `spot/instance-action` answer (`None`: 404, none
/// stands).
pub fn parse_aws(status: u16, body: &[u8], url: &str) -> Result<Option<v1::Notice>, NoticeError> {
    match status {
        404 => return Ok(None),
        200 => {}
        status => {
            return Err(NoticeError::Status {
                url: url.into(),
                status,
            });
        }
    }
    let a: InstanceAction = serde_json::from_slice(body).map_err(|source| NoticeError::Body {
        url: url.into(),
        source,
    })?;
    let deadline =
        time::OffsetDateTime::parse(&a.time, &time::format_description::well_known::Rfc3339)
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
            .unwrap_or(0);
    Ok(Some(v1::Notice {
        kind: format!("aws-spot-{}", a.action),
        message: format!("spot interruption: {} at {}", a.action, a.time),
        deadline_unix_ms: deadline,
    }))
}

/// Azure's Scheduled Events document (the fields used).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ScheduledEvents {
    #[serde(default)]
    events: Vec<ScheduledEvent>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ScheduledEvent {
    event_id: String,
    event_type: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    not_before: String,
}

/// The notice among Azure's Scheduled Events for VM `vm` (`Preempt` or
/// `Terminate` naming it; other VMs of its set and other kinds of event,
/// such as a reboot or a freeze, are not this agent's to report).
pub fn parse_azure(body: &[u8], vm: &str, url: &str) -> Result<Option<v1::Notice>, NoticeError> {
    let doc: ScheduledEvents =
        serde_json::from_slice(body).map_err(|source| NoticeError::Body {
            url: url.into(),
            source,
        })?;
    let Some(e) = doc.events.iter().find(|e| {
        matches!(e.event_type.as_str(), "Preempt" | "Terminate")
            && e.resources.iter().any(|r| r.eq_ignore_ascii_case(vm))
    }) else {
        return Ok(None);
    };
    let deadline = httpdate::parse_http_date(&e.not_before)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64);
    let when = if e.not_before.is_empty() {
        String::new()
    } else {
        format!(" not before {}", e.not_before)
    };
    Ok(Some(v1::Notice {
        kind: format!("azure-{}", e.event_type.to_ascii_lowercase()),
        message: format!("scheduled event {} ({}){when}", e.event_type, e.event_id),
        deadline_unix_ms: deadline,
    }))
}

/// Polls the metadata service until `stop`, keeping the standing notice
/// in the channel (a failed poll keeps what was there, and is logged
/// once until a poll succeeds again).
pub async fn watch(
    config: NoticesConfig,
    vm: String,
    tx: watch::Sender<Option<v1::Notice>>,
    stop: CancellationToken,
) {
    if config.cloud == NoticeSource::None {
        return;
    }
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut tick = tokio::time::interval(config.poll_interval.std());
    let mut failing = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let base = config.metadata_url.trim_end_matches('/');
        let r = match config.cloud {
            NoticeSource::Aws => aws(&client, base).await,
            NoticeSource::Azure => azure(&client, base, &vm).await,
            NoticeSource::None => return,
        };
        match r {
            Ok(n) => {
                failing = false;
                if let Some(n) = &n
                    && tx.borrow().as_ref() != Some(n)
                {
                    tracing::warn!(kind = %n.kind, message = %n.message, "the cloud takes this VM back: reporting it");
                }
                tx.send_if_modified(|cur| {
                    let changed = *cur != n;
                    *cur = n;
                    changed
                });
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cloud notices: the metadata service did not answer (tried again)");
            }
            Err(_) => {}
        }
    }
}

const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// One call: (status, body).
async fn call(
    client: &Client<HttpConnector, Empty<Bytes>>,
    req: hyper::Request<Empty<Bytes>>,
) -> Result<(u16, Bytes), NoticeError> {
    let url = req.uri().to_string();
    let request = |source: Box<dyn std::error::Error + Send + Sync>| NoticeError::Request {
        url: url.clone(),
        source,
    };
    let go = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| request(Box::new(e)))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| request(Box::new(e)))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(CALL_TIMEOUT, go)
        .await
        .map_err(|_| NoticeError::Timeout { url: url.clone() })?
}

fn request(
    method: hyper::Method,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<hyper::Request<Empty<Bytes>>, NoticeError> {
    let mut b = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Empty::new()).map_err(|e| NoticeError::Request {
        url: url.into(),
        source: Box::new(e),
    })
}

/// IMDSv2 (a session token first), or IMDSv1 where tokens are not served.
async fn aws(
    client: &Client<HttpConnector, Empty<Bytes>>,
    base: &str,
) -> Result<Option<v1::Notice>, NoticeError> {
    let token_url = format!("{base}/latest/api/token");
    let token = match call(
        client,
        request(
            hyper::Method::PUT,
            &token_url,
            &[("X-aws-ec2-metadata-token-ttl-seconds", "300")],
        )?,
    )
    .await?
    {
        (200, body) => Some(String::from_utf8_lossy(&body).trim().to_string()),
        _ => None,
    };
    let url = format!("{base}/latest/meta-data/spot/instance-action");
    let headers: Vec<(&str, &str)> = token
        .as_deref()
        .map(|t| vec![("X-aws-ec2-metadata-token", t)])
        .unwrap_or_default();
    let (status, body) = call(client, request(hyper::Method::GET, &url, &headers)?).await?;
    parse_aws(status, &body, &url)
}

async fn azure(
    client: &Client<HttpConnector, Empty<Bytes>>,
    base: &str,
    vm: &str,
) -> Result<Option<v1::Notice>, NoticeError> {
    let url = format!("{base}/metadata/scheduledevents?api-version=2020-07-01");
    let (status, body) = call(
        client,
        request(hyper::Method::GET, &url, &[("Metadata", "true")])?,
    )
    .await?;
    if status != 200 {
        return Err(NoticeError::Status { url, status });
    }
    parse_azure(&body, vm, &url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aws_spot_interruption_is_read_with_its_time_and_none_stands_on_404() {
        let url = "http://imds/latest/meta-data/spot/instance-action";
        let n = parse_aws(
            200,
            br#"{"action": "terminate", "time": "2026-12-04T08:22:00Z"}"#,
            url,
        )
        .unwrap()
        .unwrap();
        assert_eq!(n.kind, "aws-spot-terminate");
        assert_eq!(
            n.message,
            "spot interruption: terminate at 2026-12-04T08:22:00Z"
        );
        assert_eq!(n.deadline_unix_ms, 1_796_372_520_000);
        assert_eq!(parse_aws(404, b"Not Found", url).unwrap(), None);
        let e = parse_aws(500, b"", url).unwrap_err();
        assert_eq!(e.to_string(), format!("{url}: HTTP 500"));
        let e = parse_aws(200, b"{", url).unwrap_err().to_string();
        assert!(e.starts_with(url), "{e}");
    }

    #[test]
    fn an_azure_preemption_of_this_vm_is_a_notice_and_other_events_are_not() {
        let url = "http://imds/metadata/scheduledevents";
        let doc = br#"{"DocumentIncarnation": 3, "Events": [
            {"EventId": "A1", "EventType": "Freeze", "ResourceType": "VirtualMachine",
             "Resources": ["vm-1"], "EventStatus": "Scheduled", "NotBefore": "Fri, 04 Dec 2026 08:30:00 GMT"},
            {"EventId": "B2", "EventType": "Preempt", "ResourceType": "VirtualMachine",
             "Resources": ["vm-2"], "EventStatus": "Scheduled", "NotBefore": "Fri, 04 Dec 2026 08:31:00 GMT"},
            {"EventId": "C3", "EventType": "Preempt", "ResourceType": "VirtualMachine",
             "Resources": ["VM-1"], "EventStatus": "Scheduled", "NotBefore": "Fri, 04 Dec 2026 08:32:00 GMT"}
        ]}"#;
        let n = parse_azure(doc, "vm-1", url).unwrap().unwrap();
        assert_eq!(n.kind, "azure-preempt");
        assert_eq!(
            n.message,
            "scheduled event Preempt (C3) not before Fri, 04 Dec 2026 08:32:00 GMT"
        );
        assert_eq!(n.deadline_unix_ms, 1_796_373_120_000);
        // Another VM's preemption, or only a freeze of this one: nothing.
        assert_eq!(parse_azure(doc, "vm-3", url).unwrap(), None);
        assert_eq!(
            parse_azure(br#"{"DocumentIncarnation": 1, "Events": []}"#, "vm-1", url).unwrap(),
            None
        );
    }

    #[test]
    fn a_metadata_url_that_is_not_http_is_refused_by_key() {
        let c = NoticesConfig {
            metadata_url: "169.254.169.254".into(),
            ..NoticesConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "notices.metadata_url");
    }
}
