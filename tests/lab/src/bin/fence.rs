//! `fence NETNS IFACE`: the lab's fence, as a switch port shutdown is in a real network. It
//! takes `IFACE` down in the network namespace at `/run/netns/NETNS` with one netlink
//! request; exit status 0 once the kernel has acknowledged it.
//!
//! `ip -n NETNS link set IFACE down` does the same in about 2 ms, most of it spent starting
//! `ip` and giving it a mount namespace; this small static program takes a fraction of that,
//! and the fence is on the takeover's critical path.
use std::{ffi::CString, fs::File, os::fd::AsRawFd};

fn fail(what: &str) -> ! {
    eprintln!("fence: {what}: {}", std::io::Error::last_os_error());
    std::process::exit(1);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: fence NETNS IFACE [PEER]");
        std::process::exit(2);
    }
    let ns = File::open(format!("/run/netns/{}", args[1])).unwrap_or_else(|e| {
        eprintln!("fence: network namespace {}: {e}", args[1]);
        std::process::exit(1)
    });
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        fail("setns");
    }
    let name = CString::new(args[2].as_str()).expect("no NUL in an interface name");
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        fail(&format!("interface {}", args[2]));
    }
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE) };
    if fd < 0 {
        fail("netlink socket");
    }
    // nlmsghdr (16) + ifinfomsg (16): RTM_NEWLINK with IFF_UP cleared, acknowledged.
    let mut msg = [0u8; 32];
    msg[0..4].copy_from_slice(&32u32.to_ne_bytes());
    msg[4..6].copy_from_slice(&libc::RTM_NEWLINK.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    msg[6..8].copy_from_slice(&flags.to_ne_bytes());
    msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
    msg[16] = libc::AF_UNSPEC as u8;
    msg[20..24].copy_from_slice(&(index as i32).to_ne_bytes());
    msg[24..28].copy_from_slice(&0u32.to_ne_bytes()); // ifi_flags: down
    msg[28..32].copy_from_slice(&(libc::IFF_UP as u32).to_ne_bytes()); // ifi_change
    if unsafe { libc::send(fd, msg.as_ptr().cast(), msg.len(), 0) } != msg.len() as isize {
        fail("netlink send");
    }
    // The answer: an NLMSG_ERROR whose error field is 0 on success.
    let mut ack = [0u8; 1024];
    let n = unsafe { libc::recv(fd, ack.as_mut_ptr().cast(), ack.len(), 0) };
    if n < 20 {
        fail("netlink ack");
    }
    let kind = u16::from_ne_bytes([ack[4], ack[5]]);
    let error = i32::from_ne_bytes([ack[16], ack[17], ack[18], ack[19]]);
    if kind != libc::NLMSG_ERROR as u16 || error != 0 {
        eprintln!(
            "fence: the kernel refused: {}",
            std::io::Error::from_raw_os_error(-error)
        );
        std::process::exit(1);
    }
}
