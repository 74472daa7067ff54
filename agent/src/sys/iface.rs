//! Interface lookups in the current network namespace (ioctl on a socket, not /sys, whose view
//! belongs to the namespace that mounted it).
use std::{ffi::CString, io};

use anyhow::{bail, Context, Result};

/// An interface of the current network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub index: u32,
}

impl Iface {
    /// Looks `name` up, with an error that says which namespace lacks it.
    pub fn by_name(name: &str) -> Result<Self> {
        let index = index_of(name)?;
        match index {
            Some(index) => Ok(Self {
                name: name.to_string(),
                index,
            }),
            None => bail!("no interface {name:?} in this network namespace"),
        }
    }

    /// The interface's Ethernet address.
    pub fn mac(&self) -> Result<[u8; 6]> {
        let mut req = ifreq(&self.name)?;
        ioctl(libc::SIOCGIFHWADDR, &mut req)
            .with_context(|| format!("cannot read the MAC address of {}", self.name))?;
        // SAFETY: SIOCGIFHWADDR filled the sockaddr member of the union.
        let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
        let mut mac = [0u8; 6];
        for (m, d) in mac.iter_mut().zip(data.iter()) {
            *m = *d as u8;
        }
        Ok(mac)
    }
}

/// `Ok(None)` when there is no such interface.
pub fn index_of(name: &str) -> Result<Option<u32>> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('/') {
        bail!("invalid interface name {name:?}");
    }
    let c = CString::new(name).with_context(|| format!("invalid interface name {name:?}"))?;
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    Ok((index != 0).then_some(index))
}

/// The name of interface `index`, if it exists.
pub fn name_of(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    let cstr = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(cstr.to_string_lossy().into_owned())
}

fn ifreq(name: &str) -> Result<libc::ifreq> {
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

fn ioctl(request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let rc = unsafe { libc::ioctl(fd, request as _, req as *mut libc::ifreq) };
    let err = io::Error::last_os_error();
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(err);
    }
    Ok(())
}
