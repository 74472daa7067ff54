//! Which interface a pinned link is attached to. aya's `LinkInfo` does not expose it, and a
//! link outlives its interface: after the interface is deleted (and maybe recreated under the
//! same name) the pinned link still exists but is defunct, with ifindex 0.
use std::{ffi::CString, io, os::fd::{FromRawFd, OwnedFd, AsRawFd}, path::Path};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

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
        libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>() as u32)
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// The ifindex the pinned XDP or tcx link at `pin` is attached to (0 when its interface is
/// gone). `Err` if nothing is pinned there.
pub fn pinned_link_ifindex(pin: &Path) -> io::Result<u32> {
    let path = CString::new(pin.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // Zeroed, padding included: the kernel rejects non-zero bytes it does not know.
    let mut get: ObjGetAttr = unsafe { std::mem::zeroed() };
    get.pathname = path.as_ptr() as u64;
    let fd = bpf(BPF_OBJ_GET, &mut get)?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
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
