//! Raw operations on pinned links that aya 0.14 does not offer:
//! - which interface a link is attached to (a link outlives its interface: after the interface
//!   is deleted, and maybe recreated under the same name, the pinned link is defunct, ifindex 0);
//! - detaching synchronously (removing the last pin releases a link from a workqueue, a moment
//!   later, so a packet sent right after `detach` could still meet the old gate).
use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_DETACH: libc::c_long = 34;

#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
}

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

#[repr(C)]
struct DetachAttr {
    link_fd: u32,
}

fn open(pin: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(pin.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // Zeroed, padding included: the kernel rejects non-zero bytes it does not know.
    let mut get: ObjGetAttr = unsafe { std::mem::zeroed() };
    get.pathname = path.as_ptr() as u64;
    let fd = bpf(BPF_OBJ_GET, &mut get)?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Detaches the link pinned at `pin` now (BPF_LINK_DETACH), then removes the pin. A missing
/// pin is not an error.
pub fn detach(pin: &Path) -> io::Result<()> {
    let fd = match open(pin) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut attr = DetachAttr {
        link_fd: fd.as_raw_fd() as u32,
    };
    match bpf(BPF_LINK_DETACH, &mut attr) {
        // ENOLINK: already defunct (its interface is gone). EOPNOTSUPP: not detachable by
        // this kernel; removing the pin still releases it, a moment later.
        Ok(_) => {}
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOLINK) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
            ) => {}
        Err(e) => return Err(e),
    }
    std::fs::remove_file(pin)
}

/// The ifindex the pinned XDP or tcx link at `pin` is attached to (0 when its interface is
/// gone). `Err` if nothing is pinned there.
pub fn ifindex(pin: &Path) -> io::Result<u32> {
    let fd = open(pin)?;
    // struct bpf_link_info: type, id, prog_id, then a union aligned to 8 whose `xdp` and
    // `tcx` members both start with the ifindex.
    let mut info = [0u8; 64];
    let mut attr: InfoAttr = unsafe { std::mem::zeroed() };
    attr.bpf_fd = fd.as_raw_fd() as u32;
    attr.info_len = info.len() as u32;
    attr.info = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(u32::from_ne_bytes(info[16..20].try_into().unwrap()))
}
