//! Network namespaces: entering one by name, and a stable id for the current one.
use std::{fs::File, os::fd::AsRawFd, path::Path};

use anyhow::{bail, Context, Result};

/// Moves this thread (call it before any other thread exists) into the network namespace
/// `/run/netns/NAME`, as `ip netns` names them. Only the network namespace changes, so the
/// host's bpffs stays visible and pins outlive this process (unlike `ip netns exec`).
pub fn enter(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        bail!("invalid network namespace name {name:?}");
    }
    let path = Path::new("/run/netns").join(name);
    let file = File::open(&path).with_context(|| {
        format!(
            "no network namespace {name:?} ({} not found)",
            path.display()
        )
    })?;
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot enter network namespace {name:?}"));
    }
    Ok(())
}

/// Identifies the current network namespace across processes: `net-<inode>`. Namespaces
/// share bpffs, so pin paths carry this to keep two namespaces' `eth0` apart.
pub fn current_id() -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata("/proc/thread-self/ns/net")
        .context("cannot read /proc/thread-self/ns/net (is /proc mounted?)")?;
    Ok(format!("net-{}", meta.ino()))
}
