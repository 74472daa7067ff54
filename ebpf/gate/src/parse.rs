//! Bounds-checked parsing of the headers the gate needs, shared by both directions.
//!
//! Every read goes through [`Frame::read`], which returns `None` past the end of the frame,
//! so a truncated or malformed frame yields either a shorter [`Packet`] (for instance an IP
//! packet without ports) or nothing at all; the callers pass what they cannot classify.

use core::mem::size_of;

use aya_ebpf::programs::{TcContext, XdpContext};
use takeover_common::{GateKey, PROTO_TCP, PROTO_UDP};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_ICMPV6: u8 = 58;

const ND_NEIGHBOR_SOLICIT: u8 = 135;
const ND_NEIGHBOR_ADVERT: u8 = 136;

/// IPv6 extension headers walked before giving up on finding the transport header.
const MAX_EXT_HEADERS: usize = 4;

/// A frame whose bytes can be read with bounds checks.
pub trait Frame {
    /// `size_of::<T>()` bytes at `off`, or `None` if they are not all inside the frame.
    /// Read at least two bytes at a time (see `ipv4`).
    fn read<T: Copy>(&self, off: usize) -> Option<T>;
}

/// XDP: direct packet access between `data` and `data_end`.
pub struct XdpFrame {
    start: usize,
    end: usize,
}

impl XdpFrame {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }
}

impl Frame for XdpFrame {
    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> Option<T> {
        // Written as pointer + offset compared with `end`, the shape the verifier can follow.
        if self.start + off + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: the whole `T` lies inside the frame (checked above).
        Some(unsafe { ((self.start + off) as *const T).read_unaligned() })
    }
}

impl XdpFrame {
    /// Writes `v` at `off`; `None` (nothing written) if it does not fit in the frame.
    #[inline(always)]
    pub fn write<T: Copy>(&self, off: usize, v: T) -> Option<()> {
        if self.start + off + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: the whole `T` lies inside the frame (checked above).
        unsafe { ((self.start + off) as *mut T).write_unaligned(v) };
        Some(())
    }
}

/// TC: direct access to the linear part of the skb (where a locally sent packet's headers
/// are), `bpf_skb_load_bytes` for what lies beyond it. A helper call per read costs several
/// percent of the egress rate; direct access almost nothing.
pub struct SkbFrame<'a> {
    ctx: &'a TcContext,
    start: usize,
    end: usize,
}

impl<'a> SkbFrame<'a> {
    #[inline(always)]
    pub fn new(ctx: &'a TcContext) -> Self {
        Self {
            ctx,
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }
}

impl Frame for SkbFrame<'_> {
    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> Option<T> {
        if self.start + off + size_of::<T>() > self.end {
            return self.ctx.load::<T>(off).ok();
        }
        // SAFETY: the whole `T` lies inside the linear part (checked above).
        Some(unsafe { ((self.start + off) as *const T).read_unaligned() })
    }
}

/// What the gate needs to know about a frame.
pub enum Packet {
    /// Ethernet/IPv4 ARP: sender and target protocol addresses; `asks`: a request about
    /// another host (not a reply, not a gratuitous ARP), which claims nothing for its sender.
    Arp {
        sender: GateKey,
        target: GateKey,
        asks: bool,
    },
    /// ICMPv6 neighbour solicitation (`advert == false`) or advertisement.
    Neighbour {
        src: GateKey,
        target: GateKey,
        advert: bool,
    },
    /// Any other IPv4/IPv6 packet; ports only for the first fragment of TCP/UDP whose
    /// transport header is present.
    Ip {
        src: GateKey,
        dst: GateKey,
        proto: u8,
        sport: Option<u16>,
        dport: Option<u16>,
    },
}

impl Packet {
    #[inline(always)]
    pub fn is_neighbour(&self) -> bool {
        matches!(self, Packet::Arp { .. } | Packet::Neighbour { .. })
    }
}

#[inline(always)]
fn be16<F: Frame>(f: &F, off: usize) -> Option<u16> {
    f.read::<[u8; 2]>(off).map(u16::from_be_bytes)
}

/// Parses Ethernet, one optional 802.1Q/802.1ad tag, then ARP, IPv4 or IPv6.
#[inline(always)]
pub fn parse<F: Frame>(f: &F) -> Option<Packet> {
    let mut ethertype = be16(f, 12)?;
    let mut off = ETH_HLEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = be16(f, off + 2)?;
        off += 4;
    }
    match ethertype {
        ETH_P_ARP => arp(f, off),
        ETH_P_IP => ipv4(f, off),
        ETH_P_IPV6 => ipv6(f, off),
        _ => None,
    }
}

#[inline(always)]
fn arp<F: Frame>(f: &F, off: usize) -> Option<Packet> {
    // htype Ethernet, ptype IPv4, hlen 6, plen 4: the only ARP that can name a logical address.
    let head = f.read::<[u8; 8]>(off)?;
    if head[..6] != [0, 1, 0x08, 0x00, 6, 4] {
        return None;
    }
    let sender = f.read::<[u8; 4]>(off + 14)?;
    let target = f.read::<[u8; 4]>(off + 24)?;
    Some(Packet::Arp {
        sender: GateKey::v4(sender),
        target: GateKey::v4(target),
        asks: head[6..] == [0, 1] && u32::from_ne_bytes(sender) != u32::from_ne_bytes(target),
    })
}

#[inline(always)]
fn ipv4<F: Frame>(f: &F, off: usize) -> Option<Packet> {
    // Whole fixed header at once: no one-byte reads, whose bounds check LLVM folds into a
    // form the verifier cannot follow.
    let h = f.read::<[u8; 20]>(off)?;
    if h[0] >> 4 != 4 {
        return None;
    }
    let src = GateKey::v4([h[12], h[13], h[14], h[15]]);
    let dst = GateKey::v4([h[16], h[17], h[18], h[19]]);
    let proto = h[9];
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    let frag_offset = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
    let mut pkt = Packet::Ip {
        src,
        dst,
        proto,
        sport: None,
        dport: None,
    };
    if ihl >= 20 && frag_offset == 0 {
        ports(f, off + ihl, &mut pkt);
    }
    Some(pkt)
}

#[inline(always)]
fn ipv6<F: Frame>(f: &F, off: usize) -> Option<Packet> {
    let version = f.read::<[u8; 8]>(off)?;
    if version[0] >> 4 != 6 {
        return None;
    }
    let mut next = version[6];
    let src = GateKey::v6(f.read::<[u8; 16]>(off + 8)?);
    let dst = GateKey::v6(f.read::<[u8; 16]>(off + 24)?);
    let mut off = off + 40;
    let mut first_fragment = true;
    let mut known = false;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let Some([nh, len]) = f.read::<[u8; 2]>(off) else {
                    break;
                };
                next = nh;
                off += (len as usize + 1) * 8;
            }
            IPPROTO_FRAGMENT => {
                let Some([nh, _, hi, lo]) = f.read::<[u8; 4]>(off) else {
                    break;
                };
                next = nh;
                first_fragment = u16::from_be_bytes([hi, lo]) & 0xfff8 == 0;
                off += 8;
            }
            _ => {
                known = true;
                break;
            }
        }
    }
    let mut pkt = Packet::Ip {
        src,
        dst,
        proto: next,
        sport: None,
        dport: None,
    };
    if !known || !first_fragment {
        return Some(pkt);
    }
    if next == IPPROTO_ICMPV6 {
        // type, code, checksum, reserved, then the target address.
        let Some([icmp_type, ..]) = f.read::<[u8; 4]>(off) else {
            return Some(pkt);
        };
        if icmp_type == ND_NEIGHBOR_SOLICIT || icmp_type == ND_NEIGHBOR_ADVERT {
            if let Some(target) = f.read::<[u8; 16]>(off + 8) {
                return Some(Packet::Neighbour {
                    src,
                    target: GateKey::v6(target),
                    advert: icmp_type == ND_NEIGHBOR_ADVERT,
                });
            }
        }
        return Some(pkt);
    }
    ports(f, off, &mut pkt);
    Some(pkt)
}

/// Fills in the ports of a TCP/UDP packet whose transport header starts at `off`.
#[inline(always)]
fn ports<F: Frame>(f: &F, off: usize, pkt: &mut Packet) {
    if let Packet::Ip {
        proto,
        sport,
        dport,
        ..
    } = pkt
    {
        if *proto != PROTO_TCP && *proto != PROTO_UDP {
            return;
        }
        if let Some([a, b, c, d]) = f.read::<[u8; 4]>(off) {
            *sport = Some(u16::from_be_bytes([a, b]));
            *dport = Some(u16::from_be_bytes([c, d]));
        }
    }
}
