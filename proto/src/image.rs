//! Image references, parsed the way registries and Docker parse them
//! (`busybox` is `docker.io/library/busybox:latest`), into
//! `oci_spec::distribution::Reference`, the type the agent's registry
//! client uses, so what validates here pulls there.
//!
//! The grammar (distribution's `reference` package) is parsed by hand here
//! rather than with `Reference::from_str`: oci-spec matches it with one
//! regular expression whose Unicode `\w{0,127}` compiles to an automaton
//! of about 13 MiB, kept for the life of the process — most of the node
//! agent's memory budget — and several milliseconds at first use. A
//! differential property test checks this parser against oci-spec's.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use oci_spec::distribution::Reference;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// An image reference, keeping the text the user wrote.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    written: String,
    parsed: Reference,
}

/// Why an image reference did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an image reference: {reason}")]
pub struct ImageRefError {
    input: String,
    reason: String,
}

impl ImageRef {
    /// Registry host (and port): `docker.io`, `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        self.parsed.registry()
    }
    /// Repository path: `library/busybox`.
    pub fn repository(&self) -> &str {
        self.parsed.repository()
    }
    pub fn tag(&self) -> Option<&str> {
        self.parsed.tag()
    }
    pub fn digest(&self) -> Option<&str> {
        self.parsed.digest()
    }
    /// The fully qualified form: `docker.io/library/busybox:latest`.
    pub fn canonical(&self) -> String {
        self.parsed.whole()
    }
    /// Whether the reference names no registry (`bb:latest`, `team/tool`),
    /// so that Docker Hub was filled in.
    pub fn is_short(&self) -> bool {
        match self.written.split_once('/') {
            Some((left, _)) => !is_registry(left),
            None => true,
        }
    }
    /// For a short name, the same name under `localhost/` (`bb:latest` →
    /// `localhost/bb:latest`), where podman keeps images that came from no
    /// registry; `None` for a name with a registry.
    pub fn on_localhost(&self) -> Option<ImageRef> {
        if !self.is_short() {
            return None;
        }
        format!("localhost/{}", self.written).parse().ok()
    }
    /// The reference as written.
    pub fn as_str(&self) -> &str {
        &self.written
    }
    pub fn reference(&self) -> &Reference {
        &self.parsed
    }
}

/// `[a-z0-9]+` runs joined by one separator each: `.`, `_`, `__` or any
/// number of `-`.
fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// `host[.host...][:port]`, each label alphanumeric with inner dashes.
fn is_domain(d: &str) -> bool {
    let (host, port) = match d.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|x| x.is_ascii_digit())) {
        return false;
    }
    host.split('.').all(|label| {
        let b = label.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
    })
}

/// Whether the first component of a name is a registry, by Docker's rule:
/// it has a `.` or a port, or is `localhost`.
fn is_registry(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

/// Whether `t` is a tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn is_tag(t: &str) -> bool {
    let b = t.as_bytes();
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b.iter().all(|x| word(*x) || *x == b'.' || *x == b'-')
}

/// `algorithm:hex`, with the lengths of the digests registries use.
fn check_digest(d: &str) -> Result<(), &'static str> {
    let Some((algo, hex)) = d.split_once(':') else {
        return Err("invalid checksum digest format");
    };
    let algo_ok = algo.split(['-', '_', '+', '.']).all(|part| {
        let b = part.as_bytes();
        !b.is_empty() && b[0].is_ascii_alphabetic() && b.iter().all(u8::is_ascii_alphanumeric)
    });
    if !algo_ok || hex.len() < 32 || !hex.bytes().all(|x| x.is_ascii_hexdigit()) {
        return Err("invalid reference format");
    }
    let want = match algo {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err("unsupported digest algorithm"),
    };
    if hex.len() != want {
        return Err("invalid checksum digest length");
    }
    Ok(())
}

/// Parses `[domain/]path[:tag][@digest]` into a `Reference` (Docker Hub
/// and `latest` filled in as Docker does).
fn parse_reference(s: &str) -> Result<Reference, &'static str> {
    if s.is_empty() {
        return Err("repository name must have at least one component");
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].find(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if tag.is_some_and(|t| !is_tag(t)) {
        return Err("invalid reference format");
    }
    // Docker's limit, on the name as written (registry included).
    if name.len() > 255 {
        return Err("repository name must not be more than 255 characters");
    }
    let parts: Vec<&str> = name.split('/').collect();
    let all_paths = parts.iter().all(|c| is_path_component(c));
    let domain_then_paths =
        parts.len() > 1 && is_domain(parts[0]) && parts[1..].iter().all(|c| is_path_component(c));
    if !(all_paths || domain_then_paths) {
        return Err("invalid reference format");
    }
    if let Some(d) = digest {
        check_digest(d)?;
    }
    // Which part is the registry: Docker's rule.
    let (mut registry, mut repository) = match name.split_once('/') {
        Some((left, right)) if is_registry(left) => (left.to_string(), right.to_string()),
        _ => ("docker.io".to_string(), name.to_string()),
    };
    if registry == "index.docker.io" {
        registry = "docker.io".into();
    }
    if registry == "docker.io" && !repository.contains('/') {
        repository = format!("library/{repository}");
    }
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => {
            Reference::with_tag_and_digest(registry, repository, t.into(), d.into())
        }
        (None, Some(d)) => Reference::with_digest(registry, repository, d.into()),
        (t, None) => Reference::with_tag(registry, repository, t.unwrap_or("latest").into()),
    })
}

impl FromStr for ImageRef {
    type Err = ImageRefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parsed = parse_reference(s).map_err(|e| ImageRefError {
            input: s.to_string(),
            reason: e.to_string(),
        })?;
        // Docker refuses upper case in repository names; the shared grammar
        // lets it through when there is no registry part.
        if parsed.repository().bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ImageRefError {
                input: s.to_string(),
                reason: "repository name must be lowercase".into(),
            });
        }
        Ok(Self {
            written: s.to_string(),
            parsed,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

impl Serialize for ImageRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.written)
    }
}

impl<'de> Deserialize<'de> for ImageRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ImageRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an image reference such as busybox:1.36")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ImageRef, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// The reference grammar as a regular expression: exactly what `from_str`
/// accepts. The lookahead holds the name to 255 characters: it reaches the
/// end or `@` only through a name of that length and a tag (a `:` that a
/// `/` follows is a port, which a tag cannot hold).
pub(crate) const PATTERN: &str = concat!(
    r"^(?=[A-Za-z0-9._/:-]{1,255}(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@|$))",
    // A name of lowercase path components, or a registry (a host with a
    // dot or a port) and at least one component.
    r"(?:[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*",
    r"|[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+(?::[0-9]+)?|:[0-9]+)",
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)+)",
    // An optional tag, then an optional digest.
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?",
    r"(?:@(?:sha256:[0-9A-Fa-f]{64}|sha384:[0-9A-Fa-f]{96}|sha512:[0-9A-Fa-f]{128}))?$",
);

impl JsonSchema for ImageRef {
    fn schema_name() -> Cow<'static, str> {
        "ImageRef".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An OCI image reference: [registry[:port]/]repository[:tag][@digest], the name before the tag at most 255 characters",
            "type": "string",
            "pattern": PATTERN
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn table() {
        let cases = [
            (
                "busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                None,
            ),
            (
                "library/busybox:1.36",
                "docker.io",
                "library/busybox",
                Some("1.36"),
                None,
            ),
            (
                "registry.example.com/shop/web:1.4",
                "registry.example.com",
                "shop/web",
                Some("1.4"),
                None,
            ),
            (
                "127.0.0.1:5000/skiff/busybox:test",
                "127.0.0.1:5000",
                "skiff/busybox",
                Some("test"),
                None,
            ),
            ("localhost/x", "localhost", "x", Some("latest"), None),
        ];
        for (input, registry, repo, tag, digest) in cases {
            let r: ImageRef = input.parse().unwrap();
            assert_eq!(r.registry(), registry, "{input}");
            assert_eq!(r.repository(), repo, "{input}");
            assert_eq!(r.tag(), tag, "{input}");
            assert_eq!(r.digest(), digest, "{input}");
            assert_eq!(r.to_string(), input);
        }
        let by_digest: ImageRef = format!("host:5000/a/b@{DIGEST}").parse().unwrap();
        assert_eq!(by_digest.registry(), "host:5000");
        assert_eq!(by_digest.repository(), "a/b");
        assert_eq!(by_digest.digest(), Some(DIGEST));
        assert_eq!(by_digest.tag(), None);
    }

    #[test]
    fn short_names_and_their_localhost_form() {
        let local = |s: &str| {
            s.parse::<ImageRef>()
                .unwrap()
                .on_localhost()
                .map(|r| r.canonical())
        };
        assert_eq!(local("bb:latest").as_deref(), Some("localhost/bb:latest"));
        assert_eq!(local("bb").as_deref(), Some("localhost/bb:latest"));
        assert_eq!(
            local("team/tool:1").as_deref(),
            Some("localhost/team/tool:1")
        );
        assert_eq!(local("docker.io/library/bb:latest"), None);
        assert_eq!(local("localhost/bb:1"), None);
        assert_eq!(local("127.0.0.1:5000/bb:1"), None);
        assert!(is_tag("latest") && is_tag("v1.2-rc_1") && !is_tag("bb:latest") && !is_tag(""));
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "UPPER/case",
            "a b",
            "busybox:",
            "x@sha256:abc",
            ":tag",
            "a//b",
            "-a",
        ] {
            let e = bad.parse::<ImageRef>().unwrap_err().to_string();
            assert!(e.contains("is not an image reference"), "{bad:?}: {e}");
        }
    }

    fn component() -> impl Strategy<Value = String> {
        "[a-z0-9]{1,8}([._-][a-z0-9]{1,8}){0,2}"
    }

    proptest! {
        #[test]
        fn round_trips(
            host in proptest::option::of("[a-z]{1,8}\\.[a-z]{2,4}(:[0-9]{2,5})?"),
            path in proptest::collection::vec(component(), 1..4),
            tag in proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
            digest in proptest::option::of("[0-9a-f]{64}"),
        ) {
            let mut s = String::new();
            if let Some(h) = &host { s.push_str(h); s.push('/'); }
            s.push_str(&path.join("/"));
            if let Some(t) = &tag { s.push(':'); s.push_str(t); }
            if let Some(d) = &digest { s.push_str("@sha256:"); s.push_str(d); }
            let r: ImageRef = s.parse().unwrap();
            prop_assert_eq!(r.to_string(), s.clone());
            let again: ImageRef = r.canonical().parse().unwrap();
            prop_assert_eq!(again.canonical(), r.canonical());
            prop_assert_eq!(again.repository(), r.repository());
            let want_digest = digest.map(|d| format!("sha256:{d}"));
            prop_assert_eq!(again.digest(), want_digest.as_deref());
        }

        #[test]
        fn never_panics(s in "\\PC{0,64}") {
            let _ = s.parse::<ImageRef>();
        }

        /// Accepts and splits exactly what oci-spec's regular expression
        /// does (on ASCII input: its tags also take Unicode letters).
        #[test]
        fn agrees_with_oci_spec(s in "([a-zA-Z0-9._:/@-]|__|sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}|:5000/|localhost/){0,12}") {
            let ours = parse_reference(&s);
            let theirs = Reference::from_str(&s);
            prop_assert_eq!(ours.is_ok(), theirs.is_ok(), "{:?}: ours {:?}, oci-spec {:?}", s, ours, theirs);
            if let (Ok(a), Ok(b)) = (ours, theirs) {
                prop_assert_eq!(a, b);
            }
        }

        /// The same on reference-shaped input, mostly valid, with the
        /// grammar's corner cases (separators, ports, upper case, dashes).
        #[test]
        fn agrees_with_oci_spec_on_references(
            host in proptest::option::of("(localhost|[a-zA-Z0-9-]{1,6}(\\.[a-zA-Z0-9-]{1,4})?)(:[0-9]{0,5})?"),
            path in proptest::collection::vec("[a-z0-9A-Z]{1,4}(([._]|__|___|-+|\\._)[a-z0-9]{1,4})?", 1..4),
            tag in proptest::option::of("[A-Za-z0-9_.-]{0,6}"),
            digest in proptest::option::of("(sha256|sha512|md5|sha256\\+b64):[0-9a-f]{30,130}"),
        ) {
            let mut s = String::new();
            if let Some(h) = &host { s.push_str(h); s.push('/'); }
            s.push_str(&path.join("/"));
            if let Some(t) = &tag { s.push(':'); s.push_str(t); }
            if let Some(d) = &digest { s.push('@'); s.push_str(d); }
            let ours = parse_reference(&s);
            let theirs = Reference::from_str(&s);
            prop_assert_eq!(ours.is_ok(), theirs.is_ok(), "{:?}: ours {:?}, oci-spec {:?}", s, ours, theirs);
            if let (Ok(a), Ok(b)) = (ours, theirs) {
                prop_assert_eq!(a, b);
            }
        }
    }
}
