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
