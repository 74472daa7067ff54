//! `cargo xtask setup | build | test | demo | bench`: everything a new machine needs.
//!
//! Depends on nothing that needs the eBPF toolchain, so `setup` can build and run on a fresh
//! machine before bpf-linker exists.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

/// Debian packages the tests, demo and benchmarks use, with a command that proves each.
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("iputils-ping", "ping"),
    ("tcpdump", "tcpdump"),
    ("arping", "arping"),
    ("ethtool", "ethtool"),
    ("netsniff-ng", "trafgen"),
    ("keepalived", "keepalived"),
    // Real services for the service tests and benchmarks, and Pacemaker's OCF agents.
    ("nginx", "nginx"),
    ("dnsmasq-base", "dnsmasq"),
    ("resource-agents", "/usr/lib/ocf/resource.d/heartbeat/nginx"),
    // The stateful takeover's database and its file system on the shared disk.
    ("postgresql-15", "/usr/lib/postgresql/15/bin/postgres"),
    ("postgresql-client-15", "psql"),
    ("e2fsprogs", "mkfs.ext4"),
];

const USAGE: &str = "usage: cargo xtask <command>

commands:
  setup          install what is missing: nightly rust-src, bpf-linker, Debian packages
  build          setup, then build everything (release)
  test           setup, then fmt, clippy, unit and integration tests (needs root)
  demo [failover|service|gate]
                 setup, build, then show a failover and a service failing alone (partial
                 takeover), or one of them, or the gate alone, on a namespace topology, with
                 timelines and target/takeover-demo.svg, target/takeover-service-demo.svg
                 (needs root)
  bench gate|failover|database  setup, build, then measure the gate's cost, failovers, or a database's takeover; writes BENCHMARKS.md";

fn main() -> Result<()> {
    let args: Vec<String> = env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["setup"] => setup(),
        ["build"] => {
            setup()?;
            build()
        }
        ["test", rest @ ..] => {
            setup()?;
            test(rest)
        }
        ["demo", what @ ..] => {
            setup()?;
            build()?;
            run(Command::new(root().join("target/release/demo"))
                .arg(takeover_bin())
                .args(what)
                .current_dir(root()))
        }
        ["bench", what @ ..] => {
            setup()?;
            build()?;
            let what = if what.is_empty() { &["gate"][..] } else { what };
            run(Command::new(root().join("target/release/bench"))
                .arg(takeover_bin())
                .args(what)
                .current_dir(root()))
        }
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn takeover_bin() -> PathBuf {
    root().join("target/release/takeover")
}

fn cargo() -> Command {
    let mut c = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

/// Idempotent: each step checks before it installs.
fn setup() -> Result<()> {
    nightly_rust_src()?;
    bpf_linker()?;
    debian_packages()?;
    Ok(())
}

fn nightly_rust_src() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("xtask: installing the nightly toolchain");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: adding rust-src to nightly");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// bpf-linker must use the nightly toolchain's own libLLVM (the one rustc emits bitcode for).
/// `rustup run nightly` puts that library on the loader path, which is how the build runs it.
fn bpf_linker() -> Result<()> {
    let works = Command::new("rustup")
        .args(["run", "nightly", "bpf-linker", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        return Ok(());
    }
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let version = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly -vV does not say its LLVM version")?
        .to_string();
    // The toolchain ships libLLVM.so.<ver>-rust-<rustver>-nightly (and a libLLVM-<major>-... alias).
    let lib = std::fs::read_dir(&lib_dir)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with(&format!("libLLVM.so.{major}")) && n.contains("-rust-"))
        .with_context(|| format!("no libLLVM.so.{major}* in {}", lib_dir.display()))?;
    let prefix = root().join("target/llvm-prefix");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(lib_dir.join(&lib), &link)?;
    eprintln!("xtask: installing bpf-linker against {lib} (about 2 minutes)");
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix))
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, cmd)| !have(cmd))
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get")
        .args(["update", "-q"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    // Installed services must not start (nginx would take port 80 of the machine): the tests
    // run their own instances in their namespaces. policy-rc.d's 101 forbids starting them.
    let policy = std::path::Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists();
    if ours {
        std::fs::write(
            policy,
            "#!/bin/sh\n# cargo xtask setup: no service starts while it installs\nexit 101\n",
        )?;
        std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let installed = run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    if ours {
        std::fs::remove_file(policy)?;
    }
    installed
}

fn build() -> Result<()> {
    run(cargo().args(["build", "--release", "--workspace", "--exclude", "xtask"]))?;
    // The lab's fence is on the takeover's critical path: linked statically it starts about
    // 0.3 ms sooner (no dynamic loader; 0.54 against 0.88 ms here). Last, so that the
    // workspace build above does not replace it.
    run(cargo().args([
        "rustc",
        "--release",
        "-p",
        "takeover-lab",
        "--bin",
        "fence",
        "--",
        "-C",
        "target-feature=+crt-static",
    ]))
}

fn test(extra: &[&str]) -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    // The data plane is a crate of its own (nightly, its own target): checked with the
    // stable rustfmt, which every machine has.
    run(Command::new("rustup")
        .args(["run", "stable", "cargo", "fmt", "--check"])
        .current_dir(root().join("ebpf/gate")))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The integration tests drive the real binary, attach XDP and create namespaces: root.
    if unsafe_geteuid() != 0 {
        bail!("the tests need root (network namespaces, XDP, bpffs)");
    }
    // The previous release, for the test that mixes it with this one: built first, so that
    // its build does not load the machine under timing-sensitive tests.
    run(cargo().args(["run", "-q", "-p", "takeover-lab", "--bin", "previous"]))?;
    run(cargo().args(["test", "--workspace"]).args(extra))
}

fn unsafe_geteuid() -> u32 {
    // Read from /proc to keep xtask free of libc.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Uid:")
                    .map(|r| r.split_whitespace().nth(1).unwrap_or("1").to_string())
            })
        })
        .and_then(|u| u.parse().ok())
        .unwrap_or(1)
}
