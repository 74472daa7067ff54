//! The BPF filesystem, where links and maps are pinned so they outlive the agent.
use std::{ffi::CString, path::Path};

use anyhow::{Context, Result};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
pub const BPFFS: &str = "/sys/fs/bpf";

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Mounts bpffs at /sys/fs/bpf unless it is there already (a fresh machine has none).
pub fn ensure_mounted() -> Result<()> {
    let path = Path::new(BPFFS);
    if is_bpffs(path) {
        return Ok(());
    }
    std::fs::create_dir_all(path).with_context(|| format!("cannot create {BPFFS}"))?;
    let src = CString::new("bpf").unwrap();
    let dst = CString::new(BPFFS).unwrap();
    let opts = CString::new("mode=0700").unwrap();
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            src.as_ptr(),
            0,
            opts.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot mount the BPF filesystem at {BPFFS}"));
    }
    Ok(())
}

/// True if bpffs is mounted (read-only commands do not mount it).
pub fn is_mounted() -> bool {
    is_bpffs(Path::new(BPFFS))
}
