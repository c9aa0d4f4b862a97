//! Image references, parsed the way registries and Docker parse them
//! (`busybox` is `docker.io/library/busybox:latest`). The grammar is
//! `oci_spec::distribution::Reference`, the same one the agent's registry
//! client uses, so what validates here pulls there.

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
    /// The reference as written.
    pub fn as_str(&self) -> &str {
        &self.written
    }
    pub fn reference(&self) -> &Reference {
        &self.parsed
    }
}

impl FromStr for ImageRef {
    type Err = ImageRefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parsed = Reference::from_str(s).map_err(|e| ImageRefError {
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

impl JsonSchema for ImageRef {
    fn schema_name() -> Cow<'static, str> {
        "ImageRef".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An OCI image reference: [registry[:port]/]repository[:tag][@digest]",
            "type": "string",
            "minLength": 1
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
    }
}
