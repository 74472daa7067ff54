//! The data plane's short messages, 32 bytes each. Their format is that of version 2 and
//! has not changed: they are written with version byte 2, so that agents of every version
//! read them, and any version byte from 2 on is read.
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
use sha2::Sha256;

use super::{mac, Rejected, MAGIC, V2, VERSION};
use hmac::Mac;

const KIND_EXIT: u8 = takeover_common::WIRE_KIND_EXIT;
const KIND_PROBE: u8 = takeover_common::WIRE_KIND_PROBE;
const KIND_PROBE_ANSWER: u8 = takeover_common::WIRE_KIND_PROBE_ANSWER;
pub const NOTICE_LEN: usize = takeover_common::NOTICE_LEN;
pub const TOKEN_LEN: usize = 16;
/// The version byte short messages are written with.
const SHORT_VERSION: u8 = V2;

/// What a heartbeat commits to: the first 16 bytes of SHA-256 of the exit token.
pub fn commit(token: &[u8; TOKEN_LEN]) -> [u8; TOKEN_LEN] {
    use sha2::Digest;
    Sha256::digest(token)[..TOKEN_LEN].try_into().unwrap()
}

/// The exit notice of `incarnation`, revealing `token` (the data plane sends it as is).
pub fn encode_notice(incarnation: u64, token: &[u8; TOKEN_LEN]) -> [u8; NOTICE_LEN] {
    let mut b = [0u8; NOTICE_LEN];
    b[..4].copy_from_slice(&MAGIC);
    b[4] = SHORT_VERSION;
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
    if !(V2..=VERSION).contains(&buf[4]) {
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
    b[4] = SHORT_VERSION;
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
