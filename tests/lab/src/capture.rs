//! A packet capture on one interface of a namespace (AF_PACKET), to check what a host sent.
//!
//! Absence is checked against a marker: the test has the sender emit a known frame after the
//! ones it must not have sent, and reads until the marker, so nothing is left in flight.
use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::Netns;

pub struct Capture {
    fd: OwnedFd,
}

/// What a captured frame says about addresses, for the checks the tests make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// ARP: (opcode, sender IPv4, target IPv4).
    Arp {
        op: u16,
        sender: [u8; 4],
        target: [u8; 4],
    },
    /// IPv4: source, destination, protocol, the transport payload.
    Ipv4 {
        src: [u8; 4],
        dst: [u8; 4],
        proto: u8,
        payload: Vec<u8>,
    },
    Other,
}

impl Capture {
    /// Starts capturing everything on `iface` in `ns` (both directions).
    pub fn start(ns: &Netns, iface: &str) -> Result<Self> {
        let iface = iface.to_string();
        ns.within(move || {
            let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
            let fd = unsafe {
                libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto)
            };
            if fd < 0 {
                return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
            }
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let c = std::ffi::CString::new(iface.clone())?;
            let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
            if ifindex == 0 {
                bail!("no interface {iface}");
            }
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto as u16;
            sll.sll_ifindex = ifindex as i32;
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    &sll as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error()).context("binding the capture");
            }
            Ok(Self { fd })
        })
    }

    fn recv(&self, timeout: Duration) -> Result<Option<Vec<u8>>> {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as _,
            tv_usec: timeout.subsec_micros().max(1) as _,
        };
        unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        let mut buf = vec![0u8; 65536];
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                return Ok(None);
            }
            return Err(e.into());
        }
        buf.truncate(n as usize);
        Ok(Some(buf))
    }

    /// Every frame seen up to and including the first for which `is_marker` holds.
    pub fn until(
        &self,
        timeout: Duration,
        is_marker: impl Fn(&Frame) -> bool,
    ) -> Result<Vec<Frame>> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "the marker frame did not arrive within {timeout:?} ({} frames seen)",
                    seen.len()
                );
            }
            if let Some(raw) = self.recv(left)? {
                let f = decode(&raw);
                let done = is_marker(&f);
                seen.push(f);
                if done {
                    return Ok(seen);
                }
            }
        }
    }
}

pub fn decode(raw: &[u8]) -> Frame {
    if raw.len() < 14 {
        return Frame::Other;
    }
    let ethertype = u16::from_be_bytes([raw[12], raw[13]]);
    let p = &raw[14..];
    match ethertype {
        0x0806 if p.len() >= 28 => Frame::Arp {
            op: u16::from_be_bytes([p[6], p[7]]),
            sender: p[14..18].try_into().unwrap(),
            target: p[24..28].try_into().unwrap(),
        },
        0x0800 if p.len() >= 20 => {
            let ihl = ((p[0] & 0xf) as usize) * 4;
            Frame::Ipv4 {
                src: p[12..16].try_into().unwrap(),
                dst: p[16..20].try_into().unwrap(),
                proto: p[9],
                payload: p.get(ihl..).unwrap_or_default().to_vec(),
            }
        }
        _ => Frame::Other,
    }
}

/// Parses a dotted IPv4 address for comparisons with captured frames.
pub fn v4(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>()
        .expect("IPv4 address")
        .octets()
}
