//! Versions 3 and 4 of the heartbeat body: resources by index, as runs of equal state.
//!
//! ```text
//! config_digest [8] | resources u32 (in the sender's configuration) | first u32
//! | runs u16 | runs × (len u16 | state u8 | epoch u64 if SERVING | node u8 if VOTED
//!                     | node u8, version u64 if MOVED | instance u8 if INSTANCE)
//! ```
//!
//! Version 4 only adds INSTANCE: for a service's resource, the state of the sender's
//! instance of it (see `core::component::Health`). A version-3 reader refuses the flag, so
//! it is written only to peers that say they read version 4.
//!
//! A part covers the resources `first .. first + Σ len`. Resources next to each other
//! usually share their state (one owner's, opened together, in one epoch), so a summary of
//! thousands is a few runs; one that does not fit a datagram is sent as several parts, each
//! a heartbeat of its own. The digest says which configuration the indices refer to: a
//! receiver whose own differs reads none of it (docs/design.md invariant 7).
use super::{put_header, sign, Header, Reader, Rejected, MAX_HEADER, MAX_MESSAGE, TAG_LEN, V3};

pub const DIGEST_LEN: usize = 8;
/// The configuration's digest (see `CoreConfig::digest`).
pub type Digest = [u8; DIGEST_LEN];

const SERVING: u8 = 1;
const VOTED: u8 = 2;
const MOVED: u8 = 4;
/// Version 4.
const INSTANCE: u8 = 8;
/// The bits an instance state may have (`core::component::Health`): others are refused.
pub const INSTANCE_BITS: u8 = 0x1f;
/// The longest run's encoding.
const MAX_RUN: usize = 2 + 1 + 8 + 1 + 9 + 1;
/// Room for runs in one datagram.
const BUDGET: usize = MAX_MESSAGE - MAX_HEADER - TAG_LEN - (DIGEST_LEN + 4 + 4 + 2);

/// What the sender says of one resource.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// Its gate is open on the sender, opened in this epoch.
    pub serving: Option<u64>,
    /// The node the sender thinks should serve it (none before it is ready).
    pub vote: Option<u8>,
    /// An operator's switchover: the node, and the order's version (the newest wins).
    pub moved: Option<(u8, u64)>,
    /// Version 4: the sender's instance of this service, if it has one.
    pub instance: Option<u8>,
}

/// One part of a summary, as decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    pub digest: Digest,
    /// How many resources the sender's configuration has.
    pub total: u32,
    pub first: u32,
    /// (how many resources, their state), in order from `first`.
    pub runs: Vec<(u32, State)>,
}

impl Part {
    /// Each resource this part covers, by index, with its state.
    pub fn states(&self) -> impl Iterator<Item = (usize, State)> + '_ {
        let mut at = self.first as usize;
        self.runs.iter().flat_map(move |&(len, s)| {
            let start = at;
            at += len as usize;
            (start..at).map(move |i| (i, s))
        })
    }
}

/// A part's body ready to be put behind any header: built once per summary, sent to every
/// peer on every path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packed {
    first: u32,
    runs: u16,
    bytes: Vec<u8>,
}

/// Packs `states` (every resource, by index) into as few parts as fit a datagram each.
/// Instance states go only into version 4 (`version`); version 3 leaves them out.
pub fn pack(states: &[State], version: u8) -> Vec<Packed> {
    if version == V3 && states.iter().any(|s| s.instance.is_some()) {
        let older: Vec<State> = states
            .iter()
            .map(|s| State {
                instance: None,
                ..*s
            })
            .collect();
        return pack(&older, version);
    }
    let mut parts = Vec::new();
    let mut cur = Packed {
        first: 0,
        runs: 0,
        bytes: Vec::new(),
    };
    let mut i = 0;
    while i < states.len() {
        let s = states[i];
        let len = states[i..]
            .iter()
            .take(u16::MAX as usize)
            .take_while(|x| **x == s)
            .count();
        if cur.bytes.len() + MAX_RUN > BUDGET {
            let next = Packed {
                first: i as u32,
                runs: 0,
                bytes: Vec::new(),
            };
            parts.push(std::mem::replace(&mut cur, next));
        }
        put_run(&mut cur.bytes, len as u16, &s);
        cur.runs += 1;
        i += len;
    }
    parts.push(cur);
    parts
}

fn put_run(b: &mut Vec<u8>, len: u16, s: &State) {
    b.extend_from_slice(&len.to_be_bytes());
    let flag = |set: bool, f: u8| if set { f } else { 0 };
    b.push(
        flag(s.serving.is_some(), SERVING)
            | flag(s.vote.is_some(), VOTED)
            | flag(s.moved.is_some(), MOVED)
            | flag(s.instance.is_some(), INSTANCE),
    );
    if let Some(e) = s.serving {
        b.extend_from_slice(&e.to_be_bytes());
    }
    if let Some(v) = s.vote {
        b.push(v);
    }
    if let Some((n, v)) = s.moved {
        b.push(n);
        b.extend_from_slice(&v.to_be_bytes());
    }
    if let Some(i) = s.instance {
        b.push(i);
    }
}

/// Encodes and signs a heartbeat of `version` (3 or 4) carrying one part packed for it.
pub fn encode(
    h: &Header,
    version: u8,
    digest: &Digest,
    total: u32,
    part: &Packed,
    key: &[u8],
) -> Vec<u8> {
    let mut b = Vec::with_capacity(MAX_HEADER + part.bytes.len() + 64);
    put_header(
        &mut b,
        version,
        &Header {
            reads_v3: true,
            reads_v4: h.reads_v4 || version > V3,
            ..h.clone()
        },
    );
    b.extend_from_slice(digest);
    b.extend_from_slice(&total.to_be_bytes());
    b.extend_from_slice(&part.first.to_be_bytes());
    b.extend_from_slice(&part.runs.to_be_bytes());
    b.extend_from_slice(&part.bytes);
    sign(&mut b, key);
    debug_assert!(b.len() <= MAX_MESSAGE);
    b
}

pub(super) fn read(r: &mut Reader, version: u8) -> Result<Part, Rejected> {
    let known = if version > V3 {
        SERVING | VOTED | MOVED | INSTANCE
    } else {
        SERVING | VOTED | MOVED
    };
    let digest: Digest = r.take(DIGEST_LEN)?.try_into().unwrap();
    let total = r.u32()?;
    let first = r.u32()?;
    let n = r.u16()? as usize;
    let mut runs = Vec::with_capacity(n.min(BUDGET / 3));
    let mut end = u64::from(first);
    for _ in 0..n {
        let len = u32::from(r.u16()?);
        let flags = r.u8()?;
        if len == 0 || flags & !known != 0 {
            return Err(Rejected::Malformed);
        }
        let serving = if flags & SERVING != 0 {
            Some(r.u64()?)
        } else {
            None
        };
        let vote = if flags & VOTED != 0 {
            Some(r.u8()?)
        } else {
            None
        };
        let moved = if flags & MOVED != 0 {
            Some((r.u8()?, r.u64()?))
        } else {
            None
        };
        let instance = if flags & INSTANCE != 0 {
            Some(r.u8()?).filter(|i| i & !INSTANCE_BITS == 0)
        } else {
            None
        };
        if flags & INSTANCE != 0 && instance.is_none() {
            return Err(Rejected::Malformed);
        }
        end += u64::from(len);
        runs.push((
            len,
            State {
                serving,
                vote,
                moved,
                instance,
            },
        ));
    }
    if end > u64::from(total) {
        return Err(Rejected::Malformed);
    }
    Ok(Part {
        digest,
        total,
        first,
        runs,
    })
}
