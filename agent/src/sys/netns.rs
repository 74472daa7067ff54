//! Network namespaces: entering one by name, and an id for the current one that is never
//! reused.
use std::{
    fs::File,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    sync::Once,
};

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

/// Prefix of an id made from the namespace cookie.
pub const COOKIE_PREFIX: &str = "netns-";
/// Prefix of an id made from the namespace inode (earlier versions, and kernels < 5.14).
pub const INODE_PREFIX: &str = "net-";

/// Identifies the current network namespace across processes: `netns-<cookie>`. Namespaces
/// share bpffs and /run, so pin paths and the agent's files carry this to keep two
/// namespaces' `eth0` apart. The cookie is never reused while the machine runs; the inode,
/// used before, is reused as soon as a namespace is deleted, which handed a new namespace a
/// dead one's gates.
///
/// On kernels without SO_NETNS_COOKIE (< 5.14) this falls back to `net-<inode>` and warns
/// once: a new namespace may then find a dead one's directory, and what keeps it from using
/// it is that pins not attached to an interface here are stale (`dataplane::stale`).
pub fn current_id() -> Result<String> {
    match cookie().context("cannot read the network namespace cookie (SO_NETNS_COOKIE)")? {
        Some(c) => Ok(format!("{COOKIE_PREFIX}{c}")),
        None => {
            static WARN: Once = Once::new();
            WARN.call_once(|| {
                eprintln!(
                    "takeover: warning: this kernel has no network namespace cookies \
                     (SO_NETNS_COOKIE, Linux >= 5.14): pins are keyed by the namespace's inode, \
                     which the kernel reuses; pins not attached here are treated as stale"
                )
            });
            inode_id()
        }
    }
}

/// `net-<inode>` of the current network namespace: the id of earlier versions.
pub fn inode_id() -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata("/proc/thread-self/ns/net")
        .context("cannot read /proc/thread-self/ns/net (is /proc mounted?)")?;
    Ok(format!("{INODE_PREFIX}{}", meta.ino()))
}

/// The current network namespace's cookie; `None` if the kernel has none (ENOPROTOOPT).
pub fn cookie() -> io::Result<Option<u64>> {
    // Any socket is made in the calling thread's namespace and reports that one's cookie.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut value = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut value as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOPROTOOPT) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(value))
}

/// The id of the namespace `ns` (a file such as /run/netns/NAME or /proc/PID/ns/net), read
/// from a short-lived thread that enters it, so the caller's namespace is untouched.
pub fn id_of(ns: &File) -> Result<String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error()).context("setns");
            }
            match cookie()? {
                Some(c) => Ok(format!("{COOKIE_PREFIX}{c}")),
                None => inode_id(),
            }
        })
        .join()
        .unwrap_or_else(|_| bail!("the namespace thread panicked"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_the_cookie_and_stable() {
        let id = current_id().unwrap();
        let prefix = match cookie().unwrap() {
            Some(_) => COOKIE_PREFIX,
            None => INODE_PREFIX,
        };
        assert!(id.starts_with(prefix), "{id}");
        assert_eq!(id, current_id().unwrap());
        let me = File::open("/proc/thread-self/ns/net").unwrap();
        // Entering one's own namespace needs CAP_SYS_ADMIN; without it there is nothing to see.
        if let Ok(other) = id_of(&me) {
            assert_eq!(other, id);
        }
    }
}
