//! Thin wrappers over the few system calls the agent needs beyond aya: network namespaces
//! (this one's id, the machine's live ones), interface lookups, bpffs. Each returns an error
//! that names what the operator has to fix.
pub mod bpffs;
pub mod iface;
pub mod namespaces;
pub mod napi;
pub mod netns;

/// Fails unless running as root: loading programs and writing maps needs CAP_BPF and
/// CAP_NET_ADMIN, and a half-privileged run would fail later with a less helpful message.
pub fn require_root() -> anyhow::Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("takeover must run as root (it needs CAP_BPF and CAP_NET_ADMIN)");
    }
    Ok(())
}

/// Marks every descriptor past stderr close-on-exec (closes none now), so that what the
/// process runs inherits nothing it did not mean to pass. One system call, no allocation:
/// safe between fork and exec.
pub fn inherit_nothing() -> std::io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 4;
    // SAFETY: no pointers.
    if unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
