//! A cold service's file system on shared storage: mounted before it starts (the file
//! system's own journal replay is the consistency check of a takeover), unmounted after it
//! stops. Mounting takes `mount(8)` (it parses the options as the operator wrote them for
//! fstab); both are idempotent, so that a retried step or a restarted agent finds what is
//! done already.
use std::{
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use crate::config::service::Filesystem;

/// `BLKFLSBUF`: drop the device's buffered blocks. Another host wrote to the device since
/// this one last had it mounted: what this kernel cached of it is stale.
const BLKFLSBUF: libc::c_ulong = 0x1261;

/// Where `device` is mounted at `mount` in this mount namespace, if it is.
fn mounted(fs: &Filesystem) -> Result<bool, String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    let want = std::fs::canonicalize(&fs.device).unwrap_or_else(|_| fs.device.clone());
    Ok(info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            return false;
        };
        let at = unescape(f.get(4).copied().unwrap_or(""));
        let source = f.get(sep + 2).map(|s| unescape(s));
        at == fs.mount && source.is_some_and(|s| s == want || s == fs.device)
    }))
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> PathBuf {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(c as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    PathBuf::from(out)
}

/// Mounts it (creating the mount point), unless it is mounted there already (false).
pub async fn mount(fs: &Filesystem) -> Result<bool, String> {
    if mounted(fs)? {
        return Ok(false);
    }
    flush_buffers(&fs.device)?;
    std::fs::create_dir_all(&fs.mount).map_err(|e| format!("{}: {e}", fs.mount.display()))?;
    let mut c = tokio::process::Command::new("mount");
    c.arg("-t").arg(&fs.kind);
    if !fs.options.is_empty() {
        c.arg("-o").arg(&fs.options);
    }
    c.arg(&fs.device).arg(&fs.mount);
    run(c, "mount").await?;
    Ok(true)
}

/// Unmounts it, if it is mounted (true: it was). A busy file system is an error (nothing is
/// forced: a process still writing there must not lose its writes, nor keep them from the
/// next host).
pub async fn unmount(fs: &Filesystem) -> Result<bool, String> {
    if !mounted(fs)? {
        return Ok(false);
    }
    let mut c = tokio::process::Command::new("umount");
    c.arg(&fs.mount);
    run(c, "umount").await?;
    // What this host cached of the device is stale once another mounts it.
    flush_buffers(&fs.device)?;
    Ok(true)
}

fn flush_buffers(device: &Path) -> Result<(), String> {
    let f = std::fs::File::open(device).map_err(|e| format!("{}: {e}", device.display()))?;
    // SAFETY: an ioctl without argument on a descriptor we own.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), BLKFLSBUF as _, 0) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        // Not a block device (a file system image in a file): nothing is buffered by device.
        if e.raw_os_error() != Some(libc::ENOTTY) {
            return Err(format!("{}: flushing its buffers: {e}", device.display()));
        }
    }
    Ok(())
}

async fn run(mut c: tokio::process::Command, what: &str) -> Result<(), String> {
    c.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let out = c.output().await.map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(format!("{what} failed ({}): {}", out.status, err.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/srv/my\\040db"), PathBuf::from("/srv/my db"));
        assert_eq!(unescape("/plain"), PathBuf::from("/plain"));
        assert_eq!(unescape("/odd\\x"), PathBuf::from("/odd\\x"));
    }
}
