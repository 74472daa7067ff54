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

/// The longest a mount or an unmount may take (a journal replay of a large file system
/// included).
const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// `BLKFLSBUF`: drop the device's buffered blocks. Another host wrote to the device since
/// this one last had it mounted: what this kernel cached of it is stale.
const BLKFLSBUF: libc::c_ulong = 0x1261;

/// Where `fs`'s device is mounted in this mount namespace: every mount point of it. A mount
/// is its if mountinfo names its device number (`major:minor`: any name of an LVM or multipath
/// device), or names it as the source, by its path or by another path to the same block
/// device (btrfs shows an anonymous device number). A device path that does not exist (an
/// LVM volume active elsewhere) is matched by path alone.
fn mounts_of(fs: &Filesystem) -> Result<Vec<PathBuf>, String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let block = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .filter(|m| m.file_type().is_block_device())
            .map(|m| m.rdev())
    };
    let rdev = match std::fs::metadata(&fs.device) {
        Ok(_) => block(&fs.device),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("{}: {e}", fs.device.display())),
    };
    let number = rdev.map(|r| format!("{}:{}", libc::major(r), libc::minor(r)));
    let want = std::fs::canonicalize(&fs.device).unwrap_or_else(|_| fs.device.clone());
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    let mut at = Vec::new();
    for l in info.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        let by_number = number.as_deref().is_some_and(|n| f.get(2) == Some(&n));
        let by_source = f.get(sep + 2).is_some_and(|s| {
            let s = unescape(s);
            s == want || s == fs.device || (rdev.is_some() && s.is_absolute() && block(&s) == rdev)
        });
        if by_number || by_source {
            at.push(unescape(f.get(4).copied().unwrap_or("")));
        }
    }
    Ok(at)
}

/// The mount point as the kernel records it (symlinks and `..` resolved).
fn mount_point(fs: &Filesystem) -> PathBuf {
    std::fs::canonicalize(&fs.mount).unwrap_or_else(|_| fs.mount.clone())
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

/// Mounts it (creating the mount point), unless it is mounted there already (false). Mounted
/// anywhere else in this namespace is an error: it is not mounted twice.
pub async fn mount(fs: &Filesystem) -> Result<bool, String> {
    std::fs::create_dir_all(&fs.mount).map_err(|e| format!("{}: {e}", fs.mount.display()))?;
    let at = mounts_of(fs)?;
    let target = mount_point(fs);
    if at.contains(&target) {
        return Ok(false);
    }
    if let Some(other) = at.first() {
        return Err(format!(
            "{} is mounted on {} already",
            fs.device.display(),
            other.display()
        ));
    }
    flush_buffers(&fs.device)?;
    let mut c = tokio::process::Command::new("mount");
    c.arg("-t").arg(&fs.kind);
    if !fs.options.is_empty() {
        c.arg("-o").arg(&fs.options);
    }
    c.arg(&fs.device).arg(&fs.mount);
    run(c, "mount").await?;
    Ok(true)
}

/// Unmounts every mount of its device in this namespace (true: there was one), and checks that
/// none is left before it says so: the next host mounts it next. A busy file system is an
/// error (nothing is forced: a process still writing there must not lose its writes, nor
/// keep them from the next host).
pub async fn unmount(fs: &Filesystem) -> Result<bool, String> {
    let at = mounts_of(fs)?;
    if at.is_empty() {
        return Ok(false);
    }
    for point in at.iter().rev() {
        let mut c = tokio::process::Command::new("umount");
        c.arg(point);
        run(c, "umount").await?;
    }
    let left = mounts_of(fs)?;
    if let Some(point) = left.first() {
        return Err(format!(
            "{} is still mounted on {} after umount",
            fs.device.display(),
            point.display()
        ));
    }
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
    // A hung device must not hold a takeover's steps for ever: a step that does not end is
    // a failed one (the command is killed with the future).
    let out = tokio::time::timeout(COMMAND_TIMEOUT, c.output())
        .await
        .map_err(|_| format!("{what}: no answer within {COMMAND_TIMEOUT:?}"))?
        .map_err(|e| format!("{what}: {e}"))?;
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
