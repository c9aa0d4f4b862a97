//! Namespaces: every workload, allocation, secret, volume and event
//! belongs to one, and names are unique within it.
//!
//! Records are keyed by a **qualified key**: the bare name in the
//! `default` namespace (so a fleet made before namespaces keeps its keys,
//! ids and container names), `NAMESPACE.NAME` in any other. Names never
//! hold a `.`, so a key splits back one way only. Allocation ids start
//! with their workload's key (`team-a.web-1f2e3d4c`), and local volume ids
//! with it too (`team-a.web.data.0`).

/// The namespace of everything not given one.
pub const DEFAULT: &str = "default";

/// The key of `name` in `namespace`.
pub fn qualify(namespace: &str, name: &str) -> String {
    if namespace == DEFAULT {
        name.to_string()
    } else {
        format!("{namespace}.{name}")
    }
}

/// A workload's or secret's key as (namespace, name).
pub fn split(key: &str) -> (&str, &str) {
    match key.split_once('.') {
        Some((ns, name)) => (ns, name),
        None => (DEFAULT, key),
    }
}

/// The namespace of an allocation id (`WORKLOAD-KEY-HEX`).
pub fn of_allocation(id: &str) -> &str {
    split(id).0
}

/// The namespace of a local volume id (`[NAMESPACE.]WORKLOAD.VOLUME.N`).
pub fn of_volume(id: &str) -> &str {
    if id.matches('.').count() >= 3 {
        split(id).0
    } else {
        DEFAULT
    }
}

/// The namespace a fleet event belongs to (by its kind and id), or `None`
/// for the fleet's own (nodes, sites, tokens, gateways).
pub fn of_event<'a>(kind: &str, id: &'a str) -> Option<&'a str> {
    match kind {
        "workload" | "secret" => Some(split(id).0),
        "allocation" => Some(of_allocation(id)),
        "volume" => Some(of_volume(id)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_back_and_the_default_keeps_bare_names() {
        assert_eq!(qualify(DEFAULT, "web"), "web");
        assert_eq!(qualify("team-a", "web"), "team-a.web");
        assert_eq!(split("web"), (DEFAULT, "web"));
        assert_eq!(split("team-a.web"), ("team-a", "web"));
        assert_eq!(of_allocation("web-1f2e3d4c"), DEFAULT);
        assert_eq!(of_allocation("team-a.web-1f2e3d4c"), "team-a");
        assert_eq!(of_volume("web.data.0"), DEFAULT);
        assert_eq!(of_volume("team-a.web.data.0"), "team-a");
        assert_eq!(of_event("node", "n1"), None);
        assert_eq!(of_event("secret", "team-b.db"), Some("team-b"));
    }
}
