//! The peers' heartbeats that the gates took off the wire for this agent (see
//! `takeover_common::Heard`): read from the ring's shared memory, no system call.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Context, Result};
use aya::maps::{Map, MapData, RingBuf};
use takeover_common::{Heard, HEARD_MAX};

/// The namespace's ring of heartbeats; one reader, this agent.
pub struct HeardRing {
    ring: RingBuf<MapData>,
}

/// One heartbeat as the gate took it.
pub struct Datagram<'a> {
    /// Arrival on CLOCK_MONOTONIC, in nanoseconds.
    pub stamp_ns: u64,
    pub from: SocketAddr,
    /// The address it was sent to: which path it came by.
    pub to: IpAddr,
    pub bytes: &'a [u8],
}

impl HeardRing {
    /// The ring in `map` (the object's `HEARD` map).
    pub fn new(map: Map) -> Result<Self> {
        Ok(Self {
            ring: RingBuf::try_from(map).context("the HEARD map is not a ring buffer")?,
        })
    }

    /// Hands each heartbeat waiting in the ring to `each`, oldest first, and frees it.
    pub fn drain(&mut self, mut each: impl FnMut(Datagram<'_>)) {
        while let Some(item) = self.ring.next() {
            if let Some(d) = parse(&item) {
                each(d);
            }
        }
    }
}

/// Now on the ring's clock (CLOCK_MONOTONIC, the eBPF programs' `bpf_ktime_get_ns`), in
/// nanoseconds: what a record's `stamp_ns` is measured against.
pub fn clock_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill; CLOCK_MONOTONIC always exists (vDSO, no system call).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The fields of a [`Heard`] record, read in place (a record is 1.4 KB, its header 48 bytes).
fn parse(r: &[u8]) -> Option<Datagram<'_>> {
    use std::mem::offset_of;
    let field = |at: usize, n: usize| r.get(at..at + n);
    let stamp_ns = u64::from_ne_bytes(field(offset_of!(Heard, stamp_ns), 8)?.try_into().ok()?);
    let src: [u8; 16] = field(offset_of!(Heard, src), 16)?.try_into().ok()?;
    let dst: [u8; 16] = field(offset_of!(Heard, dst), 16)?.try_into().ok()?;
    let sport = u16::from_ne_bytes(field(offset_of!(Heard, sport), 2)?.try_into().ok()?);
    let len = u16::from_ne_bytes(field(offset_of!(Heard, len), 2)?.try_into().ok()?) as usize;
    let v6 = *r.get(offset_of!(Heard, v6))? != 0;
    let bytes = field(offset_of!(Heard, data), len.min(HEARD_MAX))?;
    Some(Datagram {
        stamp_ns,
        from: SocketAddr::new(ip(v6, src), sport),
        to: ip(v6, dst),
        bytes,
    })
}

fn ip(v6: bool, b: [u8; 16]) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(b))
    } else {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    }
}
