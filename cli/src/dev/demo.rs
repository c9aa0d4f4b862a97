//! The demo: an image built into this binary (`cli/build.rs`: a small
//! static web server that answers with its node and site) and a workload
//! larger than the dev fleet's local node, so that it bursts.

/// The demo image, an oci-archive named `skiff/demo:1`.
pub const ARCHIVE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/demo.oci.tar"));

/// The demo image's repository and tag in the dev registry.
pub const IMAGE: &str = "skiff/demo:1";

/// The demo workload: `replicas` replicas of `cpu` each from `image`,
/// preferring the local site, so the ones that do not fit there burst.
pub fn spec(image: &str, replicas: u32, cpu: &str) -> String {
    format!(
        "name: demo\n\
         image: {image}\n\
         replicas: {replicas}\n\
         resources: {{ cpu: {cpu}, memory: 64Mi }}\n\
         ports: [{{ container: 8080 }}]\n\
         restart: always\n\
         stop_timeout: 2s\n\
         placement:\n  prefer: [local]\n"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_demo_spec_is_valid() {
        let text = super::spec("10.249.0.1:5000/skiff/demo:1", 6, "400m");
        let specs = skiff_proto::parse_workloads(&text, skiff_proto::Format::Yaml).unwrap();
        assert_eq!(specs[0].replicas, 6);
        assert!(super::ARCHIVE.len() > 10_000);
    }
}
