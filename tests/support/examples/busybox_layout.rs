//! Writes the busybox test image, exactly as `OciImage::busybox` builds it
//! for the tests, as an OCI layout tagged `test` under DIR and prints the
//! layout's path. `scripts/vm-test` uses it for the VM, which has no umoci.
//!
//!     cargo run -p skiff-test-support --example busybox_layout -- DIR

fn main() -> anyhow::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: busybox_layout DIR"))?;
    let image = skiff_test_support::images::OciImage::busybox(dir.as_ref(), "test", &[])?;
    println!("{}", image.layout.display());
    Ok(())
}
