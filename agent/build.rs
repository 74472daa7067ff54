//! Builds the eBPF data plane (`ebpf/gate`) with the nightly toolchain and bpf-linker, so that
//! `cargo build` of the agent embeds a fresh object. `cargo xtask setup` installs what it needs.
use std::{env, path::PathBuf, process::Command};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let gate = root.join("ebpf/gate");
    for p in [
        "ebpf/gate/src",
        "ebpf/gate/Cargo.toml",
        "ebpf/gate/Cargo.lock",
        "ebpf/common/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    // A target dir of its own, shared by all builds of the agent (check, clippy, test, release).
    let target_dir = root.join("target/ebpf");

    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release", "--locked"])
        .args(["-Z", "build-std=core", "--target", "bpfel-unknown-none"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&gate);
    // Do not leak the outer (stable, host) build's settings into the eBPF build.
    for (k, _) in env::vars() {
        if k.starts_with("CARGO")
            || k.starts_with("RUSTC")
            || k == "RUSTUP_TOOLCHAIN"
            || k == "RUSTFLAGS"
        {
            cmd.env_remove(k);
        }
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run `rustup run nightly cargo` ({e}); run `cargo xtask setup` first")
    });
    if !status.success() {
        panic!(
            "building the eBPF programs in {} failed; if nightly, rust-src or bpf-linker is \
             missing, run `cargo xtask setup`",
            gate.display()
        );
    }
    let obj = target_dir.join("bpfel-unknown-none/release/takeover-gate");
    std::fs::copy(&obj, out.join("takeover-gate.o"))
        .unwrap_or_else(|e| panic!("copying {}: {e}", obj.display()));
}
