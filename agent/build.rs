//! Builds `skiff-shim` (agent/shim/main.rs), the per-container supervisor,
//! as a small static program the agent embeds and installs at start.
//! It is compiled with `rustc` directly because it must be static
//! (`crt-static`), size-optimised and `panic=abort` whatever the profile
//! of the agent build is, which Cargo cannot set for one binary.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "shim/main.rs";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-changed=shim/civil.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("skiff-shim");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = std::env::var("TARGET").expect("TARGET");
    let status = Command::new(rustc)
        .args([
            "--edition=2024",
            "--crate-name=skiff_shim",
            "--crate-type=bin",
            "-Copt-level=s",
            "-Cpanic=abort",
            "-Ccodegen-units=1",
            "-Cstrip=symbols",
            "-Ctarget-feature=+crt-static",
            "-lstatic=gcc_eh",
            "-lstatic=gcc",
            "--target",
            &target,
            "-o",
        ])
        .arg(&out)
        .arg(src)
        .status()
        .expect("run rustc for skiff-shim");
    assert!(
        status.success(),
        "building skiff-shim failed (it needs the static C library: libc6-dev)"
    );
}
