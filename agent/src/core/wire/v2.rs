//! Version 2, the previous agent's heartbeat body: logical addresses by IP.
//!
//! ```text
//! served u16 | served × (family u8 (4|6) | address 4|16 | epoch u64)
//! | votes u16 | votes × (family u8 | address 4|16 | node index u8)
//! | overrides u16 | overrides × (family u8 | address 4|16 | node index u8 | version u64)
//! ```
//!
//! Read from, and written to, agents that speak nothing newer. It names no service and at
//! most `MAX_SERVED` addresses, so only a configuration without services and with at most
//! that many addresses can speak it; and it carries no configuration digest, so a peer's
//! different configuration shows only where it names an address or node this one lacks.
use std::net::IpAddr;

use super::{put_header, sign, Header, Reader, Rejected, V2};

/// Addresses one heartbeat can list, served, voted and overridden (at most 25 + 18 + 26
/// bytes each).
pub const MAX_SERVED: usize = 18;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Addresses whose gate is open on the sender, with the epoch it opened them in.
    pub serving: Vec<(IpAddr, u64)>,
    /// Per address, the node the sender thinks should serve it (index into the sorted list
    /// of node names).
    pub votes: Vec<(IpAddr, u8)>,
    /// Operator switchovers: per address, the node it was moved to and the order's version.
    pub overrides: Vec<(IpAddr, u8, u64)>,
}

/// Encodes and signs a version-2 heartbeat. Panics only on what the agent never builds
/// (more than `MAX_SERVED` entries in a list): a bug, not input.
pub fn encode(h: &Header, s: &Summary, key: &[u8]) -> Vec<u8> {
    assert!(
        s.serving.len() <= MAX_SERVED
            && s.votes.len() <= MAX_SERVED
            && s.overrides.len() <= MAX_SERVED,
        "too many addresses for a version-2 heartbeat"
    );
    let mut b = Vec::with_capacity(128);
    put_header(&mut b, V2, h);
    b.extend_from_slice(&(s.serving.len() as u16).to_be_bytes());
    for (addr, epoch) in &s.serving {
        put_addr(&mut b, addr);
        b.extend_from_slice(&epoch.to_be_bytes());
    }
    b.extend_from_slice(&(s.votes.len() as u16).to_be_bytes());
    for (addr, node) in &s.votes {
        put_addr(&mut b, addr);
        b.push(*node);
    }
    b.extend_from_slice(&(s.overrides.len() as u16).to_be_bytes());
    for (addr, node, version) in &s.overrides {
        put_addr(&mut b, addr);
        b.push(*node);
        b.extend_from_slice(&version.to_be_bytes());
    }
    sign(&mut b, key);
    b
}

fn put_addr(b: &mut Vec<u8>, addr: &IpAddr) {
    match addr {
        IpAddr::V4(a) => {
            b.push(4);
            b.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            b.push(6);
            b.extend_from_slice(&a.octets());
        }
    }
}

fn addr(r: &mut Reader) -> Result<IpAddr, Rejected> {
    match r.u8()? {
        4 => Ok(IpAddr::from(<[u8; 4]>::try_from(r.take(4)?).unwrap())),
        6 => Ok(IpAddr::from(<[u8; 16]>::try_from(r.take(16)?).unwrap())),
        _ => Err(Rejected::Malformed),
    }
}

/// A count of list items, refused above `MAX_SERVED`.
fn count(r: &mut Reader) -> Result<usize, Rejected> {
    let n = r.u16()? as usize;
    if n > MAX_SERVED {
        return Err(Rejected::Malformed);
    }
    Ok(n)
}

pub(super) fn read(r: &mut Reader) -> Result<Summary, Rejected> {
    let n = count(r)?;
    let mut serving = Vec::with_capacity(n);
    for _ in 0..n {
        serving.push((addr(r)?, r.u64()?));
    }
    let n = count(r)?;
    let mut votes = Vec::with_capacity(n);
    for _ in 0..n {
        votes.push((addr(r)?, r.u8()?));
    }
    let n = count(r)?;
    let mut overrides = Vec::with_capacity(n);
    for _ in 0..n {
        overrides.push((addr(r)?, r.u8()?, r.u64()?));
    }
    Ok(Summary {
        serving,
        votes,
        overrides,
    })
}
