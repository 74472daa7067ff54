//! Announcing that this host now serves an address: gratuitous ARP (request and reply forms,
//! as different clients honour different ones) and unsolicited IPv6 neighbour advertisements,
//! so the clients' caches (the patent's address table 113) point here at once.
use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// Frames announcing `ip` at `mac`.
pub fn frames(ip: IpAddr, mac: [u8; 6]) -> Vec<Vec<u8>> {
    match ip {
        IpAddr::V4(v4) => {
            let ip = v4.octets();
            [(1u16, [0u8; 6]), (2u16, [0xff; 6])]
                .iter()
                .map(|(op, target_mac)| {
                    let mut f = Vec::with_capacity(42);
                    f.extend_from_slice(&[0xff; 6]);
                    f.extend_from_slice(&mac);
                    f.extend_from_slice(&0x0806u16.to_be_bytes());
                    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
                    f.extend_from_slice(&op.to_be_bytes());
                    f.extend_from_slice(&mac);
                    f.extend_from_slice(&ip);
                    f.extend_from_slice(target_mac);
                    f.extend_from_slice(&ip);
                    f
                })
                .collect()
        }
        IpAddr::V6(v6) => {
            let src = v6.octets();
            let dst: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
            // ICMPv6 NA: override flag, target, target link-layer address option.
            let mut icmp = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
            icmp.extend_from_slice(&src);
            icmp.extend_from_slice(&[2, 1]);
            icmp.extend_from_slice(&mac);
            let sum = icmpv6_checksum(&src, &dst, &icmp);
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            let mut f = Vec::with_capacity(14 + 40 + icmp.len());
            f.extend_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
            f.extend_from_slice(&mac);
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
            f.extend_from_slice(&[58, 255]);
            f.extend_from_slice(&src);
            f.extend_from_slice(&dst);
            f.extend_from_slice(&icmp);
            vec![f]
        }
    }
}

fn icmpv6_checksum(src: &[u8; 16], dst: &[u8; 16], msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(src);
    add(dst);
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(msg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A raw socket that sends whole Ethernet frames out of one interface.
pub struct Sender {
    fd: OwnedFd,
    ifindex: u32,
}

impl Sender {
    pub fn new(ifindex: u32) -> io::Result<Self> {
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            ifindex,
        })
    }

    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 9];

    #[test]
    fn gratuitous_arp_in_both_forms() {
        let f = frames("192.0.2.10".parse().unwrap(), MAC);
        assert_eq!(f.len(), 2);
        for (frame, op) in f.iter().zip([1u8, 2]) {
            assert_eq!(frame.len(), 42);
            assert_eq!(&frame[0..6], &[0xff; 6]);
            assert_eq!(frame[21], op);
            assert_eq!(&frame[22..28], &MAC, "sender MAC");
            assert_eq!(&frame[28..32], &[192, 0, 2, 10], "sender IP");
            assert_eq!(&frame[38..42], &[192, 0, 2, 10], "target IP");
        }
    }

    #[test]
    fn unsolicited_na_checksums_to_zero() {
        let f = &frames("2001:db8::10".parse().unwrap(), MAC)[0];
        let (src, dst) = (
            <[u8; 16]>::try_from(&f[22..38]).unwrap(),
            <[u8; 16]>::try_from(&f[38..54]).unwrap(),
        );
        assert_eq!(f[54], 136);
        assert_eq!(f[58] & 0x20, 0x20, "override");
        assert_eq!(&f[62..78], &src, "target is the address");
        assert_eq!(&f[80..86], &MAC, "target link-layer address");
        // A correct checksum makes the sum over the message (checksum included) zero.
        assert_eq!(icmpv6_checksum(&src, &dst, &f[54..]), 0);
    }
}
