//! The peer protocol's wire format: versioned, binary, authenticated with HMAC-SHA256 over
//! the whole message, with sequence numbers per path and an incarnation per agent start so
//! that a replayed or reordered message is recognised.
//!
//! ```text
//! magic "TKOV" | version u8 | kind u8 | path u8 | flags u8 | name_len u8 | name
//! | incarnation u64 | peer_incarnation u64 | seq u64 | sent_at_us u64 | echo_us u64 | echo_hold_us u32
//! | exit_commit [16]
//! | served u16 | served × (family u8 (4|6) | address 4|16 | epoch u64)
//! | votes u16 | votes × (family u8 | address 4|16 | node index u8)
//! | overrides u16 | overrides × (family u8 | address 4|16 | node index u8 | version u64)
//! | HMAC-SHA256 (32)
//! ```
//! All integers big-endian. Pure: no sockets, no clock.
//!
//! The exit notice, sent by the data plane of a node whose agent died (see
//! `takeover_common::Liveness`), is not signed (the kernel cannot sign); it proves itself by
//! revealing the token whose hash the agent's signed heartbeats carried:
//!
//! ```text
//! magic "TKOV" | version u8 | kind u8 (2) | 0u16 | incarnation u64 | token [16]
//! ```
//!
//! A probe, which the peer's data plane answers by setting the kind to 4 and sending it back:
//!
//! ```text
//! magic "TKOV" | version u8 | kind u8 (3) | peer u8 | 0u8 | incarnation u64 | seq u64 | nonce u64
//! ```
//!
//! The nonce is a keyed hash of the rest: only the prober can make (or check) it, so an
//! answer proves that the probe reached the peer.
use std::net::IpAddr;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub const MAGIC: [u8; 4] = takeover_common::WIRE_MAGIC;
pub const VERSION: u8 = 2;
const KIND_HEARTBEAT: u8 = takeover_common::WIRE_KIND_HEARTBEAT;
const KIND_EXIT: u8 = takeover_common::WIRE_KIND_EXIT;
const KIND_PROBE: u8 = takeover_common::WIRE_KIND_PROBE;
const KIND_PROBE_ANSWER: u8 = takeover_common::WIRE_KIND_PROBE_ANSWER;
pub const NOTICE_LEN: usize = takeover_common::NOTICE_LEN;
pub const TOKEN_LEN: usize = 16;
const TAG_LEN: usize = 32;
/// Fits in one unfragmented datagram on any LAN.
pub const MAX_MESSAGE: usize = 1400;
// The gates' heartbeat ring takes any message (see `takeover_common::Heard`).
const _: () = assert!(MAX_MESSAGE <= takeover_common::HEARD_MAX);
/// Addresses one heartbeat can list, served, voted and overridden (at most 25 + 18 + 26
/// bytes each).
pub const MAX_SERVED: usize = 18;
pub const MAX_NAME: usize = 32;

const FLAG_LAN_UP: u8 = 1;
const FLAG_READY: u8 = 2;
const FLAG_RESTARTING: u8 = 4;

/// A heartbeat: the sender's liveness on one path and a summary of its state table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub sender: String,
    /// Chosen at each agent start, larger than any before it (wall-clock nanoseconds).
    pub incarnation: u64,
    /// The recipient's incarnation as the sender last heard it (0: not yet). A heartbeat is
    /// taken into account only by the incarnation it is addressed to, so an old one replayed
    /// to a freshly started agent is worthless.
    pub peer_incarnation: u64,
    /// Per path, increasing from 1.
    pub seq: u64,
    /// Index of the path (0 = dedicated line, 1 = LAN).
    pub path: u8,
    /// Sender's monotonic clock, for round-trip times.
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
    /// Addresses whose gate is open on the sender, with the epoch it opened them in.
    pub serving: Vec<(IpAddr, u64)>,
    /// Per address, the node the sender thinks should serve it (index into the sorted list
    /// of node names). A node opens an address only when every live peer votes for it.
    pub votes: Vec<(IpAddr, u8)>,
    /// Operator switchovers: per address, the node it was moved to and the version of that
    /// order (the newest wins everywhere).
    pub overrides: Vec<(IpAddr, u8, u64)>,
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

/// Encodes and signs `hb`. Panics only on values the agent never builds (a name over
/// `MAX_NAME`, more than `MAX_SERVED` addresses): those are bugs, not input.
pub fn encode(hb: &Heartbeat, key: &[u8]) -> Vec<u8> {
    assert!(
        hb.sender.len() <= MAX_NAME && !hb.sender.is_empty(),
        "node name length"
    );
    assert!(
        hb.serving.len() <= MAX_SERVED && hb.votes.len() <= MAX_SERVED,
        "too many addresses for one heartbeat"
    );
    let mut b = Vec::with_capacity(128);
    b.extend_from_slice(&MAGIC);
    b.push(VERSION);
    b.push(KIND_HEARTBEAT);
    b.push(hb.path);
    let flag = |set: bool, f: u8| if set { f } else { 0 };
    b.push(
        flag(hb.lan_up, FLAG_LAN_UP)
            | flag(hb.ready, FLAG_READY)
            | flag(hb.restarting, FLAG_RESTARTING),
    );
    b.push(hb.sender.len() as u8);
    b.extend_from_slice(hb.sender.as_bytes());
    for v in [
        hb.incarnation,
        hb.peer_incarnation,
        hb.seq,
        hb.sent_at_us,
        hb.echo_us,
    ] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b.extend_from_slice(&hb.echo_hold_us.to_be_bytes());
    b.extend_from_slice(&hb.exit_commit);
    b.extend_from_slice(&(hb.serving.len() as u16).to_be_bytes());
    for (addr, epoch) in &hb.serving {
        put_addr(&mut b, addr);
        b.extend_from_slice(&epoch.to_be_bytes());
    }
    b.extend_from_slice(&(hb.votes.len() as u16).to_be_bytes());
    for (addr, node) in &hb.votes {
        put_addr(&mut b, addr);
        b.push(*node);
    }
    b.extend_from_slice(&(hb.overrides.len() as u16).to_be_bytes());
    for (addr, node, version) in &hb.overrides {
        put_addr(&mut b, addr);
        b.push(*node);
        b.extend_from_slice(&version.to_be_bytes());
    }
    let mut m = mac(key);
    m.update(&b);
    b.extend_from_slice(&m.finalize().into_bytes());
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

/// A bounds-checked reader: every read past the end is `Truncated`, never a panic.
struct Reader<'a> {
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

    fn addr(&mut self) -> Result<IpAddr, Rejected> {
        match self.u8()? {
            4 => Ok(IpAddr::from(<[u8; 4]>::try_from(self.take(4)?).unwrap())),
            6 => Ok(IpAddr::from(<[u8; 16]>::try_from(self.take(16)?).unwrap())),
            _ => Err(Rejected::Malformed),
        }
    }

    /// A count of list items, refused above `MAX_SERVED`.
    fn count(&mut self) -> Result<usize, Rejected> {
        let n = self.u16()? as usize;
        if n > MAX_SERVED {
            return Err(Rejected::Malformed);
        }
        Ok(n)
    }
}

/// Checks and decodes a datagram. The tag is verified before anything but the magic and
/// version is looked at, so nothing unauthenticated reaches the parser.
pub fn decode(buf: &[u8], key: &[u8]) -> Result<Heartbeat, Rejected> {
    if buf.len() < 5 {
        return Err(Rejected::Truncated);
    }
    if buf[..4] != MAGIC {
        return Err(Rejected::BadMagic);
    }
    if buf[4] != VERSION {
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
    let malformed = |e: Rejected| {
        if e == Rejected::Truncated {
            Rejected::Malformed
        } else {
            e
        }
    };
    let parse = |r: &mut Reader| -> Result<Heartbeat, Rejected> {
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
        let n = r.count()?;
        let mut serving = Vec::with_capacity(n);
        for _ in 0..n {
            serving.push((r.addr()?, r.u64()?));
        }
        let n = r.count()?;
        let mut votes = Vec::with_capacity(n);
        for _ in 0..n {
            votes.push((r.addr()?, r.u8()?));
        }
        let n = r.count()?;
        let mut overrides = Vec::with_capacity(n);
        for _ in 0..n {
            overrides.push((r.addr()?, r.u8()?, r.u64()?));
        }
        if r.pos != r.buf.len() || seq == 0 || incarnation == 0 {
            return Err(Rejected::Malformed);
        }
        Ok(Heartbeat {
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
            serving,
            votes,
            overrides,
        })
    };
    parse(&mut r).map_err(malformed)
}

/// What a heartbeat commits to: the first 16 bytes of SHA-256 of the exit token.
pub fn commit(token: &[u8; TOKEN_LEN]) -> [u8; TOKEN_LEN] {
    use sha2::Digest;
    Sha256::digest(token)[..TOKEN_LEN].try_into().unwrap()
}

/// The exit notice of `incarnation`, revealing `token` (the data plane sends it as is).
pub fn encode_notice(incarnation: u64, token: &[u8; TOKEN_LEN]) -> [u8; NOTICE_LEN] {
    let mut b = [0u8; NOTICE_LEN];
    b[..4].copy_from_slice(&MAGIC);
    b[4] = VERSION;
    b[5] = KIND_EXIT;
    b[8..16].copy_from_slice(&incarnation.to_be_bytes());
    b[16..].copy_from_slice(token);
    b
}

/// Is `buf` an exit notice (by its header)? Such datagrams go to [`decode_notice`].
pub fn is_notice(buf: &[u8]) -> bool {
    buf.len() >= 6 && buf[..4] == MAGIC && buf[5] == KIND_EXIT
}

/// Checks the header of a 32-byte message the data plane sends (notice, probe answer).
fn short_message(buf: &[u8], kind: u8) -> Result<(), Rejected> {
    if buf.len() < NOTICE_LEN {
        return Err(Rejected::Truncated);
    }
    if buf[..4] != MAGIC {
        return Err(Rejected::BadMagic);
    }
    if buf[4] != VERSION {
        return Err(Rejected::ForeignVersion);
    }
    if buf[5] != kind {
        return Err(Rejected::Malformed);
    }
    Ok(())
}

/// The incarnation and token of an exit notice. The data plane answers with the heartbeat's
/// frame, so bytes after the notice are the rest of that heartbeat: ignored.
pub fn decode_notice(buf: &[u8]) -> Result<(u64, [u8; TOKEN_LEN]), Rejected> {
    short_message(buf, KIND_EXIT)?;
    if buf[6..8] != [0, 0] {
        return Err(Rejected::Malformed);
    }
    let incarnation = u64::from_be_bytes(buf[8..16].try_into().unwrap());
    Ok((incarnation, buf[16..NOTICE_LEN].try_into().unwrap()))
}

/// A probe of `peer` by `incarnation`, number `seq`.
pub fn encode_probe(key: &[u8], incarnation: u64, seq: u64, peer: u8) -> [u8; NOTICE_LEN] {
    let mut b = [0u8; NOTICE_LEN];
    b[..4].copy_from_slice(&MAGIC);
    b[4] = VERSION;
    b[5] = KIND_PROBE;
    b[6] = peer;
    b[8..16].copy_from_slice(&incarnation.to_be_bytes());
    b[16..24].copy_from_slice(&seq.to_be_bytes());
    let nonce = probe_nonce(key, &b[..24]);
    b[24..].copy_from_slice(&nonce);
    b
}

fn probe_nonce(key: &[u8], head: &[u8]) -> [u8; 8] {
    let mut m = mac(key);
    m.update(head);
    m.finalize().into_bytes()[..8].try_into().unwrap()
}

/// What the data plane sends back for a probe (`None` if `buf` is no probe).
pub fn probe_answer(buf: &[u8]) -> Option<Vec<u8>> {
    if buf.len() >= NOTICE_LEN && buf[..4] == MAGIC && buf[5] == KIND_PROBE {
        let mut a = buf.to_vec();
        a[5] = KIND_PROBE_ANSWER;
        return Some(a);
    }
    None
}

/// Is `buf` a probe answer (by its header)? Such datagrams go to [`decode_probe_answer`].
pub fn is_probe_answer(buf: &[u8]) -> bool {
    buf.len() >= 6 && buf[..4] == MAGIC && buf[5] == KIND_PROBE_ANSWER
}

/// The (incarnation, seq, peer) of an answer to a probe made with `key`; `BadTag` if the
/// nonce is not the one this key gives.
pub fn decode_probe_answer(buf: &[u8], key: &[u8]) -> Result<(u64, u64, u8), Rejected> {
    short_message(buf, KIND_PROBE_ANSWER)?;
    if buf[7] != 0 {
        return Err(Rejected::Malformed);
    }
    let mut head = [0u8; 24];
    head.copy_from_slice(&buf[..24]);
    head[5] = KIND_PROBE;
    if probe_nonce(key, &head) != buf[24..32] {
        return Err(Rejected::BadTag);
    }
    let incarnation = u64::from_be_bytes(buf[8..16].try_into().unwrap());
    let seq = u64::from_be_bytes(buf[16..24].try_into().unwrap());
    Ok((incarnation, seq, buf[6]))
}

/// How far behind the newest a message may arrive and still be taken (once).
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
    pub fn check(&mut self, hb: &Heartbeat) -> Result<(), Rejected> {
        let path = hb.path as usize;
        if hb.incarnation < self.incarnation {
            return Err(Rejected::Replayed);
        }
        if hb.incarnation > self.incarnation {
            // The peer restarted: its sequence numbers start again.
            self.incarnation = hb.incarnation;
            self.paths.clear();
        }
        if self.paths.len() <= path {
            self.paths.resize(path + 1, (0, 0));
        }
        let (highest, seen) = &mut self.paths[path];
        if hb.seq > *highest {
            let shift = hb.seq - *highest;
            *seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                *seen << shift
            } | 1;
            *highest = hb.seq;
            return Ok(());
        }
        let behind = *highest - hb.seq;
        if hb.seq == 0 || behind >= REPLAY_WINDOW || *seen & (1 << behind) != 0 {
            return Err(Rejected::Replayed);
        }
        *seen |= 1 << behind;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn hb(seq: u64) -> Heartbeat {
        Heartbeat {
            sender: "node-a".into(),
            incarnation: 1_700_000_000_000_000_000,
            peer_incarnation: 1_700_000_000_000_000_001,
            seq,
            path: 1,
            sent_at_us: 123_456,
            echo_us: 123_000,
            echo_hold_us: 42,
            exit_commit: commit(&[7; TOKEN_LEN]),
            lan_up: true,
            ready: true,
            restarting: false,
            serving: vec![
                ("10.0.0.100".parse().unwrap(), 7),
                ("fd00::100".parse().unwrap(), 8),
            ],
            votes: vec![
                ("10.0.0.100".parse().unwrap(), 0),
                ("fd00::100".parse().unwrap(), 1),
            ],
            overrides: vec![],
        }
    }

    #[test]
    fn exit_notice_round_trip_and_refusals() {
        let token = [9u8; TOKEN_LEN];
        let n = encode_notice(42, &token);
        assert!(is_notice(&n) && !is_notice(&encode(&hb(1), KEY)));
        assert_eq!(decode_notice(&n), Ok((42, token)));
        // The data plane answers with the whole heartbeat frame: the tail is ignored.
        let mut long = n.to_vec();
        long.extend_from_slice(&[0xee; 60]);
        assert_eq!(decode_notice(&long), Ok((42, token)));
        for cut in 0..NOTICE_LEN {
            assert_eq!(decode_notice(&n[..cut]), Err(Rejected::Truncated));
        }
        let mut bad = n;
        bad[4] = VERSION + 1;
        assert_eq!(decode_notice(&bad), Err(Rejected::ForeignVersion));
        let mut bad = n;
        bad[6] = 1;
        assert_eq!(decode_notice(&bad), Err(Rejected::Malformed));
        // The commitment binds the token: any other token has another hash.
        let mut other = token;
        other[0] ^= 1;
        assert_ne!(commit(&token), commit(&other));
    }

    #[test]
    fn probe_answers_are_checked_by_their_nonce() {
        let p = encode_probe(KEY, 9, 3, 1);
        let mut answer = p;
        answer[5] = KIND_PROBE_ANSWER;
        assert!(is_probe_answer(&answer) && !is_probe_answer(&p));
        assert_eq!(decode_probe_answer(&answer, KEY), Ok((9, 3, 1)));
        // Another key, or any changed field, and the nonce no longer matches.
        assert_eq!(
            decode_probe_answer(&answer, b"another key"),
            Err(Rejected::BadTag)
        );
        for at in [6, 8, 16, 24] {
            let mut bad = answer;
            bad[at] ^= 1;
            assert_eq!(
                decode_probe_answer(&bad, KEY),
                Err(Rejected::BadTag),
                "{at}"
            );
        }
        assert_eq!(decode_probe_answer(&p, KEY), Err(Rejected::Malformed));
        assert_eq!(
            decode_probe_answer(&answer[..31], KEY),
            Err(Rejected::Truncated)
        );
    }

    #[test]
    fn round_trip() {
        let m = hb(5);
        assert_eq!(decode(&encode(&m, KEY), KEY), Ok(m));
        let empty = Heartbeat {
            serving: vec![],
            votes: vec![],
            overrides: vec![("10.0.0.100".parse().unwrap(), 1, 3)],
            lan_up: false,
            ready: false,
            restarting: true,
            ..hb(1)
        };
        assert_eq!(decode(&encode(&empty, KEY), KEY), Ok(empty));
    }

    #[test]
    fn a_full_heartbeat_fits_one_datagram() {
        let m = Heartbeat {
            sender: "x".repeat(MAX_NAME),
            serving: vec![("fd00::1".parse().unwrap(), u64::MAX); MAX_SERVED],
            votes: vec![("fd00::1".parse().unwrap(), 3); MAX_SERVED],
            overrides: vec![("fd00::1".parse().unwrap(), 3, u64::MAX); MAX_SERVED],
            ..hb(1)
        };
        let bytes = encode(&m, KEY);
        assert!(bytes.len() <= MAX_MESSAGE, "{}", bytes.len());
        assert_eq!(decode(&bytes, KEY), Ok(m));
    }

    #[test]
    fn every_flipped_bit_is_rejected() {
        let bytes = encode(&hb(5), KEY);
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            let r = decode(&b, KEY);
            let expected = match i / 8 {
                0..=3 => Rejected::BadMagic,
                4 => Rejected::ForeignVersion,
                _ => Rejected::BadTag,
            };
            assert_eq!(r, Err(expected), "bit {i}");
        }
    }

    #[test]
    fn another_key_is_a_forgery() {
        assert_eq!(
            decode(&encode(&hb(5), b"another key entirely"), KEY),
            Err(Rejected::BadTag)
        );
    }

    #[test]
    fn every_truncation_is_rejected() {
        let bytes = encode(&hb(5), KEY);
        for len in 0..bytes.len() {
            let r = decode(&bytes[..len], KEY);
            assert!(
                matches!(r, Err(Rejected::Truncated) | Err(Rejected::BadTag)),
                "len {len}: {r:?}"
            );
        }
    }

    #[test]
    fn authentic_but_malformed_is_rejected() {
        // Re-sign a body with a bad field: the sender has the key but a bug.
        let sign = |mut body: Vec<u8>| {
            let mut m = mac(KEY);
            m.update(&body);
            body.extend_from_slice(&m.finalize().into_bytes());
            body
        };
        let good = encode(&hb(5), KEY);
        let body = good[..good.len() - TAG_LEN].to_vec();
        let mut kind = body.clone();
        kind[5] = 9;
        assert_eq!(decode(&sign(kind), KEY), Err(Rejected::Malformed));
        let mut trailing = body.clone();
        trailing.push(0);
        assert_eq!(decode(&sign(trailing), KEY), Err(Rejected::Malformed));
        let short = body[..body.len() - 3].to_vec();
        assert_eq!(decode(&sign(short), KEY), Err(Rejected::Malformed));
        let mut family = body.clone();
        // The family byte of the first served address, counted from the end: the (empty)
        // overrides' count, two votes (v6, v4), their count, then the two served entries.
        let at = body.len() - 2 - (1 + 16 + 1) - (1 + 4 + 1) - 2 - (1 + 16 + 8) - (1 + 4 + 8);
        family[at] = 5;
        assert_eq!(decode(&sign(family), KEY), Err(Rejected::Malformed));
    }

    #[test]
    fn foreign_and_garbage_datagrams_never_panic() {
        let mut rng = super::super::sim::Rng::new(0x2545_f491_4f6c_dd1d);
        for i in 0..20_000 {
            let len = i % 200;
            let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if i % 3 == 0 && len >= 5 {
                b[..4].copy_from_slice(&MAGIC);
                b[4] = VERSION;
            }
            assert!(decode(&b, KEY).is_err());
        }
    }

    #[test]
    fn replayed_and_too_old_messages_are_refused() {
        let mut g = ReplayGuard::default();
        assert_eq!(g.check(&hb(1)), Ok(()));
        assert_eq!(g.check(&hb(2)), Ok(()));
        assert_eq!(g.check(&hb(2)), Err(Rejected::Replayed), "duplicate");
        assert_eq!(g.check(&hb(1)), Err(Rejected::Replayed), "older, seen");
        assert_eq!(g.check(&hb(10)), Ok(()), "a gap is fine (losses)");
        // Late but never seen (crossed another): taken once.
        assert_eq!(g.check(&hb(7)), Ok(()), "late");
        assert_eq!(g.check(&hb(7)), Err(Rejected::Replayed), "late, again");
        assert_eq!(g.check(&hb(100)), Ok(()));
        assert_eq!(
            g.check(&hb(100 - REPLAY_WINDOW + 1)),
            Ok(()),
            "last in the window"
        );
        assert_eq!(
            g.check(&hb(100 - REPLAY_WINDOW)),
            Err(Rejected::Replayed),
            "older than the window"
        );
        // A jump beyond the window forgets the old bits, not the old numbers.
        assert_eq!(g.check(&hb(100 + 3 * REPLAY_WINDOW)), Ok(()));
        assert_eq!(g.check(&hb(100)), Err(Rejected::Replayed));
        // Paths count separately.
        assert_eq!(g.check(&Heartbeat { path: 0, ..hb(3) }), Ok(()));
        // A restart: a newer incarnation starts over; the old one is dead for good.
        let restarted = Heartbeat {
            incarnation: hb(1).incarnation + 1,
            ..hb(1)
        };
        assert_eq!(g.check(&restarted), Ok(()));
        assert_eq!(g.check(&hb(11)), Err(Rejected::Replayed), "old incarnation");
    }
}
