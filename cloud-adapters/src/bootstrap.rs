//! The cloud-init user data that turns a fresh Linux VM into a node: the
//! template `bootstrap/cloud-init.yaml.tmpl` (shared with the Terraform
//! modules, which render it with `templatefile`) filled in with checked
//! values. Every value is checked against a strict character set before it
//! goes into YAML and shell, so no value can change the document's shape;
//! the result holds a join token and is a [`Secret`].

use base64::Engine as _;
use std::collections::BTreeMap;

use crate::Secret;

/// The template.
pub const TEMPLATE: &str = include_str!("../bootstrap/cloud-init.yaml.tmpl");

/// The template's placeholders, in the order they appear first.
pub const VARIABLES: [&str; 8] = [
    "gateway_url",
    "ca_hash",
    "join_token",
    "node_name",
    "labels",
    "agent_config_b64",
    "agent_url",
    "agent_sha256",
];

/// What one VM needs to join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    /// `https://HOST:PORT` of the gateway's agent port.
    pub gateway_url: String,
    /// `sha256:HEX` of the gateway's CA.
    pub ca_hash: String,
    pub join_token: Secret,
    pub node_name: String,
    pub labels: BTreeMap<String, String>,
    /// Where to download the agent (https); `None`: it is in the image.
    pub agent_url: Option<String>,
    /// The agent binary's SHA-256 (hex), required with `agent_url`.
    pub agent_sha256: Option<String>,
    /// `/etc/skiff/agent.toml` for the VM (a site's `agent_config`, e.g.
    /// registry mirrors or the reserve); empty: the agent's defaults. It
    /// goes in base64, so it cannot change the document's shape.
    pub agent_config: String,
}

/// A value that may not go into the template, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bootstrap {field}: {reason}")]
pub struct BootstrapError {
    pub field: &'static str,
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> BootstrapError {
    BootstrapError {
        field,
        reason: reason.into(),
    }
}

/// Letters, digits and a few separators: safe unquoted in YAML block
/// scalars, single-quoted shell strings and systemd environment files.
fn plain(s: &str, extra: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.as_bytes().contains(&b))
}

fn https_url(field: &'static str, url: &str) -> Result<(), BootstrapError> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| bad(field, format!("{url:?} must be an https:// URL")))?;
    if !plain(rest, "-._~:/[]%+@=") {
        return Err(bad(
            field,
            format!("{url:?} has characters a URL here may not"),
        ));
    }
    Ok(())
}

fn hex(field: &'static str, s: &str, len: usize) -> Result<(), BootstrapError> {
    if s.len() != len || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(field, format!("must be {len} hex digits")));
    }
    Ok(())
}

impl Bootstrap {
    /// Checks every value; the error names the field.
    pub fn check(&self) -> Result<(), BootstrapError> {
        https_url("gateway_url", &self.gateway_url)?;
        let h = self
            .ca_hash
            .strip_prefix("sha256:")
            .ok_or_else(|| bad("ca_hash", "must be sha256:HEX"))?;
        hex("ca_hash", h, 64)?;
        if !plain(&self.join_token.0, "-_") {
            return Err(bad("join_token", "letters, digits, '-' and '_' only"));
        }
        if !skiff_proto::is_valid_name(&self.node_name) {
            return Err(bad(
                "node_name",
                format!("{:?} is not a valid node name", self.node_name),
            ));
        }
        for (k, v) in &self.labels {
            if !plain(k, "-_./") || !(v.is_empty() || plain(v, "-_./")) {
                return Err(bad("labels", format!("{k:?}={v:?} is not a valid label")));
            }
        }
        match (&self.agent_url, &self.agent_sha256) {
            (None, None) => {}
            (Some(url), Some(sum)) => {
                https_url("agent_url", url)?;
                hex("agent_sha256", sum, 64)?;
            }
            (Some(_), None) => return Err(bad("agent_sha256", "required with agent_url")),
            (None, Some(_)) => return Err(bad("agent_url", "required with agent_sha256")),
        }
        Ok(())
    }

    /// The user data.
    pub fn render(&self) -> Result<Secret, BootstrapError> {
        self.check()?;
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let values: BTreeMap<&str, String> = [
            ("gateway_url", self.gateway_url.clone()),
            ("ca_hash", self.ca_hash.clone()),
            ("join_token", self.join_token.0.clone()),
            ("node_name", self.node_name.clone()),
            ("labels", labels.join(",")),
            (
                "agent_config_b64",
                base64::engine::general_purpose::STANDARD.encode(&self.agent_config),
            ),
            ("agent_url", self.agent_url.clone().unwrap_or_default()),
            (
                "agent_sha256",
                self.agent_sha256.clone().unwrap_or_default(),
            ),
        ]
        .into();
        Ok(Secret(fill(TEMPLATE, &values)))
    }
}

/// Replaces every `${name}` with its value (the subset of Terraform's
/// template syntax the bootstrap uses).
fn fill(template: &str, values: &BTreeMap<&str, String>) -> String {
    let mut out = String::with_capacity(template.len() + 512);
    let mut rest = template;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find('}') {
            Some(j) if values.contains_key(&after[..j]) => {
                out.push_str(&values[&after[..j]]);
                rest = &after[j + 1..];
            }
            _ => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Bootstrap {
        Bootstrap {
            gateway_url: "https://gw.example.com:7071".into(),
            ca_hash: format!("sha256:{}", "ab".repeat(32)),
            join_token: Secret("skiff-join-0123abcd".into()),
            node_name: "aws-us-east-1-7f3a".into(),
            labels: [("skiff/site".to_string(), "aws-us-east-1".to_string())].into(),
            agent_url: Some("https://downloads.example.com/skiff-agent-0.1.0".into()),
            agent_sha256: Some("cd".repeat(32)),
            agent_config: "[reserve]\ncpu = \"100m\"\n".into(),
        }
    }

    #[test]
    fn the_template_uses_only_known_placeholders_and_no_directives() {
        assert!(
            !TEMPLATE.contains("%{"),
            "Terraform directives are not rendered here"
        );
        let mut rest = TEMPLATE;
        let mut seen = Vec::new();
        while let Some(i) = rest.find("${") {
            let after = &rest[i + 2..];
            let j = after.find('}').unwrap();
            let name = &after[..j];
            assert!(VARIABLES.contains(&name), "unknown placeholder {name}");
            if !seen.contains(&name) {
                seen.push(name);
            }
            rest = &after[j + 1..];
        }
        assert_eq!(seen, VARIABLES);
    }

    #[test]
    fn rendered_user_data_is_cloud_config_with_the_values() {
        let b = sample();
        let data = b.render().unwrap();
        assert!(data.0.starts_with("#cloud-config\n"));
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&data.0).unwrap();
        let files = doc["write_files"].as_sequence().unwrap();
        let file = |path: &str| {
            files
                .iter()
                .find(|f| f["path"].as_str() == Some(path))
                .unwrap_or_else(|| panic!("{path} missing"))
        };
        let env = file("/etc/skiff/agent.env");
        assert_eq!(env["permissions"].as_str(), Some("0600"));
        let env = env["content"].as_str().unwrap();
        assert!(env.contains("SKIFF_AGENT_GATEWAY=https://gw.example.com:7071\n"));
        assert!(env.contains("SKIFF_AGENT_JOIN_TOKEN=skiff-join-0123abcd\n"));
        assert!(env.contains("SKIFF_AGENT_NAME=aws-us-east-1-7f3a\n"));
        assert!(env.contains("SKIFF_AGENT_LABELS=skiff/site=aws-us-east-1\n"));
        let script = file("/usr/local/lib/skiff/install-agent")["content"]
            .as_str()
            .unwrap();
        assert!(script.contains("url='https://downloads.example.com/skiff-agent-0.1.0'"));
        let unit = file("/etc/systemd/system/skiff-agent.service")["content"]
            .as_str()
            .unwrap();
        assert!(unit.contains("KillMode=process"));
        assert_eq!(doc["runcmd"].as_sequence().unwrap().len(), 3);
        // The token never prints.
        assert!(!format!("{data:?}").contains("skiff-join-0123abcd"));
        assert!(!format!("{b:?}").contains("skiff-join-0123abcd"));
    }

    #[test]
    fn values_that_could_change_the_documents_shape_are_refused() {
        let cases: Vec<(Bootstrap, &str)> = vec![
            (
                Bootstrap {
                    gateway_url: "http://gw:7071".into(),
                    ..sample()
                },
                "bootstrap gateway_url: \"http://gw:7071\" must be an https:// URL",
            ),
            (
                Bootstrap {
                    join_token: Secret("x\n  - path: /root/.ssh/authorized_keys".into()),
                    ..sample()
                },
                "bootstrap join_token: letters, digits, '-' and '_' only",
            ),
            (
                Bootstrap {
                    agent_url: Some("https://x/a';rm -rf /;'".into()),
                    ..sample()
                },
                "bootstrap agent_url:",
            ),
            (
                Bootstrap {
                    agent_sha256: None,
                    ..sample()
                },
                "bootstrap agent_sha256: required with agent_url",
            ),
            (
                Bootstrap {
                    labels: [("a".to_string(), "b c".to_string())].into(),
                    ..sample()
                },
                "bootstrap labels:",
            ),
            (
                Bootstrap {
                    ca_hash: "sha256:00".into(),
                    ..sample()
                },
                "bootstrap ca_hash: must be 64 hex digits",
            ),
        ];
        for (b, want) in cases {
            let e = b.render().unwrap_err().to_string();
            assert!(e.starts_with(want), "{e}");
        }
        // Without a download the image must have the agent.
        let b = Bootstrap {
            agent_url: None,
            agent_sha256: None,
            ..sample()
        };
        assert!(b.render().unwrap().0.contains("url=''"));
    }
}
