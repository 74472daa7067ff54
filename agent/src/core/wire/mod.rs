//! The peer protocol's wire format: versioned, binary, authenticated with HMAC-SHA256 over
//! the whole message, with sequence numbers per path and an incarnation per agent start so
//! that a replayed or reordered message is recognised. Pure: no sockets, no clock.
//!
//! A heartbeat is a header and a body; every version shares the header:
//!
//! ```text
//! magic "TKOV" | version u8 | kind u8 (1) | path u8 | flags u8 | name_len u8 | name
//! | incarnation u64 | peer_incarnation u64 | seq u64 | sent_at_us u64 | echo_us u64
//! | echo_hold_us u32 | exit_commit [16] | body | HMAC-SHA256 (32)
//! ```
//!
//! - Version 4 (this agent's, [`v3`]): version 3 with each service's instance state on the
//!   sender (the component table its peers need for a partial takeover).
//! - Version 3 ([`v3`], the previous agent's): resources by their index in the
//!   configuration, whose digest the body carries, as runs of equal state; a summary longer
//!   than a datagram is sent in parts, each covering a range of resources.
//! - Version 2 ([`v2`]): logical addresses by IP, at most 18.
//!
//! The older versions are read, and written to a peer that speaks nothing newer (rolling
//! upgrades, docs/design.md invariant 7): each agent says in its header flags what it reads.
//!
//! All integers big-endian. The data plane's short messages (exit notice, probe) are in
//! [`short`]; their format did not change.
pub mod short;
pub mod v2;
pub mod v3;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub use short::{
    commit, decode_notice, decode_probe_answer, encode_notice, encode_probe, is_notice,
    is_probe_answer, probe_answer, NOTICE_LEN, TOKEN_LEN,
};

pub const MAGIC: [u8; 4] = takeover_common::WIRE_MAGIC;
/// The version this agent writes by preference.
pub const VERSION: u8 = 4;
/// The earlier versions, still read and written (to peers that speak nothing newer).
pub const V3: u8 = 3;
pub const V2: u8 = 2;
const KIND_HEARTBEAT: u8 = takeover_common::WIRE_KIND_HEARTBEAT;
const TAG_LEN: usize = 32;
/// Fits in one unfragmented datagram on any LAN.
pub const MAX_MESSAGE: usize = 1400;
// The gates' heartbeat ring takes any message (see `takeover_common::Heard`).
const _: () = assert!(MAX_MESSAGE <= takeover_common::HEARD_MAX);
pub const MAX_NAME: usize = 32;
/// The longest header: every field, the longest name.
pub const MAX_HEADER: usize = 9 + MAX_NAME + 5 * 8 + 4 + TOKEN_LEN;

const FLAG_LAN_UP: u8 = 1;
const FLAG_READY: u8 = 2;
const FLAG_RESTARTING: u8 = 4;
/// Set in a version-2 heartbeat by an agent that reads version 3: the peer may write it.
/// (Version-2 agents ignore flags they do not know.)
const FLAG_READS_V3: u8 = 8;
/// Set by an agent that reads version 4 (version-3 agents ignore flags they do not know).
const FLAG_READS_V4: u8 = 16;
/// The sender's gates are leases of the dead time (its configuration's interval times misses,
/// which the digest makes every reader's too): they close by themselves within the dead time
/// of the last heartbeat of it a peer heard, and at once when its agent dies unannounced.
/// (Any version may carry it; older agents ignore it.)
const FLAG_LEASED: u8 = 32;

/// What every heartbeat says of its sender, whatever its version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub sender: String,
    /// Chosen at each agent start, larger than any before it (wall-clock nanoseconds).
    pub incarnation: u64,
    /// The recipient's incarnation as the sender last heard it (0: not yet). A heartbeat is
    /// taken into account only by the incarnation it is addressed to, so an old one replayed
    /// to a freshly started agent is worthless.
    pub peer_incarnation: u64,
    /// Per path, increasing from 1 (every part of a summary has its own).
    pub seq: u64,
    /// Index of the path (0 = dedicated line, 1 = LAN).
    pub path: u8,
    /// Sender's monotonic clock, for round-trip times; the parts of one summary share it.
    pub sent_at_us: u64,
    /// The last `sent_at_us` the sender received from the recipient on this path (0: none)...
    pub echo_us: u64,
    /// ...and how long the sender held it before this message.
    pub echo_hold_us: u32,
    /// [`commit`] of the token this incarnation's exit notice will reveal (zero: none).
    pub exit_commit: [u8; TOKEN_LEN],
    /// The sender's LAN interface is up (its communication part works).
    pub lan_up: bool,
    /// The sender has finished starting up (heard its peers or waited out the dead time).
    pub ready: bool,
    /// The sender's agent is stopping to be restarted; its gates stay as they are. Peers wait
    /// the restart grace before they count its silence.
    pub restarting: bool,
    /// The sender reads version 3 (always true of a version-3 or 4 message).
    pub reads_v3: bool,
    /// The sender reads version 4 (always true of a version-4 message).
    pub reads_v4: bool,
    /// The sender's gates are leases ([`FLAG_LEASED`]).
    pub leased: bool,
}

/// A decoded heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub version: u8,
    pub header: Header,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    V2(v2::Summary),
    V3(v3::Part),
}

/// Why a datagram was not accepted. Every case changes nothing but a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rejected {
    /// Shorter than a header plus a tag, or cut inside a field.
    Truncated,
    /// Not ours at all.
    BadMagic,
    /// Ours, but a version this agent does not speak.
    ForeignVersion,
    /// The HMAC does not match: forged, corrupted, or another key.
    BadTag,
    /// Authentic but not well formed (kind, name, family, counts, trailing bytes).
    Malformed,
    /// Authentic, but already seen or older than what was seen (replayed or reordered).
    Replayed,
    /// Authentic, but addressed to another incarnation of this agent (normal for a moment
    /// after a start; otherwise a replay).
    Unaddressed,
    /// An exit notice whose token matches no peer's commitment: forged, or of an incarnation
    /// already replaced.
    UnknownNotice,
}

impl Rejected {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::Truncated => "truncated",
            Rejected::BadMagic => "bad_magic",
            Rejected::ForeignVersion => "foreign_version",
            Rejected::BadTag => "bad_tag",
            Rejected::Malformed => "malformed",
            Rejected::Replayed => "replayed",
            Rejected::Unaddressed => "unaddressed",
            Rejected::UnknownNotice => "unknown_notice",
        }
    }
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// Appends the tag of everything in `b`.
fn sign(b: &mut Vec<u8>, key: &[u8]) {
    let mut m = mac(key);
    m.update(b);
    let tag = m.finalize().into_bytes();
    b.extend_from_slice(&tag);
}

/// Writes the header of a heartbeat of `version`. Panics only on a name the agent never
/// builds (empty or over `MAX_NAME`): a bug, not input.
fn put_header(b: &mut Vec<u8>, version: u8, h: &Header) {
    assert!(
        h.sender.len() <= MAX_NAME && !h.sender.is_empty(),
        "node name length"
    );
    b.extend_from_slice(&MAGIC);
    b.push(version);
    b.push(KIND_HEARTBEAT);
    b.push(h.path);
    let flag = |set: bool, f: u8| if set { f } else { 0 };
    b.push(
        flag(h.lan_up, FLAG_LAN_UP)
            | flag(h.ready, FLAG_READY)
            | flag(h.restarting, FLAG_RESTARTING)
            | flag(h.reads_v3, FLAG_READS_V3)
            | flag(h.reads_v4, FLAG_READS_V4)
            | flag(h.leased, FLAG_LEASED),
    );
    b.push(h.sender.len() as u8);
    b.extend_from_slice(h.sender.as_bytes());
    for v in [
        h.incarnation,
        h.peer_incarnation,
        h.seq,
        h.sent_at_us,
        h.echo_us,
    ] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b.extend_from_slice(&h.echo_hold_us.to_be_bytes());
    b.extend_from_slice(&h.exit_commit);
}

/// A bounds-checked reader: every read past the end is `Truncated`, never a panic.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Rejected> {
        let end = self.pos.checked_add(n).ok_or(Rejected::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(Rejected::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, Rejected> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Rejected> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().unwrap()))
    }

    fn u32(&mut self) -> Result<u32, Rejected> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn u64(&mut self) -> Result<u64, Rejected> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn done(&self) -> bool {
        self.pos == self.buf.len()
    }
}

fn header(r: &mut Reader) -> Result<Header, Rejected> {
    if r.u8()? != KIND_HEARTBEAT {
        return Err(Rejected::Malformed);
    }
    let path = r.u8()?;
    let flags = r.u8()?;
    let name_len = r.u8()? as usize;
    if name_len == 0 || name_len > MAX_NAME {
        return Err(Rejected::Malformed);
    }
    let sender = std::str::from_utf8(r.take(name_len)?)
        .map_err(|_| Rejected::Malformed)?
        .to_string();
    let (incarnation, peer_incarnation) = (r.u64()?, r.u64()?);
    let (seq, sent_at_us, echo_us) = (r.u64()?, r.u64()?, r.u64()?);
    let echo_hold_us = r.u32()?;
    let exit_commit = r.take(TOKEN_LEN)?.try_into().unwrap();
    if seq == 0 || incarnation == 0 {
        return Err(Rejected::Malformed);
    }
    Ok(Header {
        sender,
        incarnation,
        peer_incarnation,
        seq,
        path,
        sent_at_us,
        echo_us,
        echo_hold_us,
        exit_commit,
        lan_up: flags & FLAG_LAN_UP != 0,
        ready: flags & FLAG_READY != 0,
        restarting: flags & FLAG_RESTARTING != 0,
        reads_v3: flags & FLAG_READS_V3 != 0,
        reads_v4: flags & FLAG_READS_V4 != 0,
        leased: flags & FLAG_LEASED != 0,
    })
}

/// Checks and decodes a heartbeat of any version read. The tag is verified before anything
/// but the magic and version is looked at, so nothing unauthenticated reaches the parser.
pub fn decode(buf: &[u8], key: &[u8]) -> Result<Heartbeat, Rejected> {
    if buf.len() < 5 {
        return Err(Rejected::Truncated);
    }
    if buf[..4] != MAGIC {
        return Err(Rejected::BadMagic);
    }
    let version = buf[4];
    if !(V2..=VERSION).contains(&version) {
        return Err(Rejected::ForeignVersion);
    }
    if buf.len() < 5 + TAG_LEN || buf.len() > MAX_MESSAGE {
        return Err(Rejected::Truncated);
    }
    let (body, tag) = buf.split_at(buf.len() - TAG_LEN);
    let mut m = mac(key);
    m.update(body);
    m.verify_slice(tag).map_err(|_| Rejected::BadTag)?;

    // Authentic from here on: what is wrong now is a bug in the sender, still refused.
    let mut r = Reader { buf: body, pos: 5 };
    let parse = |r: &mut Reader| -> Result<Heartbeat, Rejected> {
        let mut header = header(r)?;
        let body = if version >= V3 {
            header.reads_v3 = true;
            header.reads_v4 |= version >= VERSION;
            Body::V3(v3::read(r, version)?)
        } else {
            Body::V2(v2::read(r)?)
        };
        if !r.done() {
            return Err(Rejected::Malformed);
        }
        Ok(Heartbeat {
            version,
            header,
            body,
        })
    };
    parse(&mut r).map_err(|e| {
        if e == Rejected::Truncated {
            Rejected::Malformed
        } else {
            e
        }
    })
}

/// How far behind the newest a message may arrive and still be taken (once): a round of a
/// long summary is several parts, each with its own number.
pub const REPLAY_WINDOW: u64 = 64;

/// Anti-replay state for one peer: the newest incarnation seen and, per path, the highest
/// sequence number with a window of the ones just below it (as IPsec's, RFC 4303 3.4.3).
/// Each number is taken once; one that arrives a little late is taken too (a peer's urgent
/// and periodic heartbeats travel by different sockets and may cross), one older than the
/// window is not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayGuard {
    incarnation: u64,
    /// Per path: the highest number, and a bit per number below it (bit i: highest - i seen).
    paths: Vec<(u64, u64)>,
}

impl ReplayGuard {
    pub fn check(&mut self, h: &Header) -> Result<(), Rejected> {
        let path = h.path as usize;
        if h.incarnation < self.incarnation {
            return Err(Rejected::Replayed);
        }
        if h.incarnation > self.incarnation {
            // The peer restarted: its sequence numbers start again.
            self.incarnation = h.incarnation;
            self.paths.clear();
        }
        if self.paths.len() <= path {
            self.paths.resize(path + 1, (0, 0));
        }
        let (highest, seen) = &mut self.paths[path];
        if h.seq > *highest {
            let shift = h.seq - *highest;
            *seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                *seen << shift
            } | 1;
            *highest = h.seq;
            return Ok(());
        }
        let behind = *highest - h.seq;
        if h.seq == 0 || behind >= REPLAY_WINDOW || *seen & (1 << behind) != 0 {
            return Err(Rejected::Replayed);
        }
        *seen |= 1 << behind;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
