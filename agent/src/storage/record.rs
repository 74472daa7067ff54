//! One record of the shared storage area: a self-checking frame around a JSON payload.
//!
//! Every record fills a whole number of blocks and names what it is (kind and slot), which
//! write of its slot it is (the generation) and its own checksum, so that a torn write, a
//! stray write of another slot, garbage or a blank block is recognised on reading and the
//! slot's other copy is used. The payload is JSON: a later format adds fields with defaults,
//! and this one reads them.
//!
//! Frame, little-endian, format version 1:
//!
//! | offset | size | field                                                    |
//! |--------|------|----------------------------------------------------------|
//! | 0      | 8    | magic `TKOSTOR1`                                          |
//! | 8      | 2    | format version                                           |
//! | 10     | 2    | kind ([`Kind`])                                          |
//! | 12     | 4    | slot (node index, or journal position)                   |
//! | 16     | 8    | generation (1 for the first write of the slot)           |
//! | 24     | 4    | payload length                                           |
//! | 28     | 4    | zero                                                     |
//! | 32     | 32   | SHA-256 of bytes 0..32 and the payload                   |
//! | 64     | n    | payload; the rest of the record is zero                  |
use sha2::{Digest, Sha256};

pub const MAGIC: [u8; 8] = *b"TKOSTOR1";
/// The format this release writes; it reads every version up to it.
pub const VERSION: u16 = 1;
pub const HEADER: usize = 64;

/// What a record holds; a record read where another kind belongs is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Kind {
    Superblock = 1,
    Heartbeat = 2,
    Message = 3,
    Ownership = 4,
    Handoff = 5,
    Journal = 6,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Superblock,
        Kind::Heartbeat,
        Kind::Message,
        Kind::Ownership,
        Kind::Handoff,
        Kind::Journal,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Superblock => "superblock",
            Kind::Heartbeat => "heartbeat",
            Kind::Message => "message",
            Kind::Ownership => "ownership",
            Kind::Handoff => "handoff",
            Kind::Journal => "journal",
        }
    }

    fn from_u16(v: u16) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| *k as u16 == v)
    }
}

/// Why a record could not be read. A reader falls back to the slot's other copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// All zero: never written (or wiped).
    Blank,
    /// Not a record of this format (another program's data, or garbage).
    BadMagic,
    /// Written by a newer release.
    NewerVersion(u16),
    /// A record of another kind or slot: a write that went astray.
    Misplaced { kind: u16, slot: u32 },
    /// The length field does not fit the record.
    BadLength(u32),
    /// Torn or damaged: the checksum does not match.
    BadChecksum,
    /// The checksum matched but the payload did not parse: a bug, not damage.
    BadPayload(String),
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            RecordError::Blank => f.write_str("blank (never written)"),
            RecordError::BadMagic => f.write_str("not a takeover record (garbage)"),
            RecordError::NewerVersion(v) => write!(
                f,
                "format version {v}, newer than this release's {VERSION}: upgrade takeover"
            ),
            RecordError::Misplaced { kind, slot } => {
                let kind = Kind::from_u16(*kind).map_or("unknown", Kind::name);
                write!(f, "a {kind} record of slot {slot} (misplaced write)")
            }
            RecordError::BadLength(n) => write!(f, "payload length {n} out of bounds (damaged)"),
            RecordError::BadChecksum => f.write_str("checksum mismatch (torn or damaged write)"),
            RecordError::BadPayload(e) => write!(f, "unreadable payload: {e}"),
        }
    }
}

impl std::error::Error for RecordError {}

/// A record read back: its generation and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub generation: u64,
    pub payload: Vec<u8>,
}

/// The longest payload a record of `size` bytes carries.
pub const fn capacity(size: usize) -> usize {
    size - HEADER
}

fn digest(head: &[u8], payload: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(head);
    h.update(payload);
    h.finalize().into()
}

/// Frames `payload` as record `generation` of `kind`'s `slot` into `buf` (the record's whole
/// size). `None` if the payload does not fit.
pub fn encode(
    buf: &mut [u8],
    kind: Kind,
    slot: u32,
    generation: u64,
    payload: &[u8],
) -> Option<()> {
    if payload.len() > capacity(buf.len()) {
        return None;
    }
    buf.fill(0);
    buf[0..8].copy_from_slice(&MAGIC);
    buf[8..10].copy_from_slice(&VERSION.to_le_bytes());
    buf[10..12].copy_from_slice(&(kind as u16).to_le_bytes());
    buf[12..16].copy_from_slice(&slot.to_le_bytes());
    buf[16..24].copy_from_slice(&generation.to_le_bytes());
    buf[24..28].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    buf[HEADER..HEADER + payload.len()].copy_from_slice(payload);
    let sum = digest(&buf[0..32], payload);
    buf[32..64].copy_from_slice(&sum);
    Some(())
}

/// Reads the record in `buf`, which must be of `kind` and `slot`.
pub fn decode(buf: &[u8], kind: Kind, slot: u32) -> Result<Record, RecordError> {
    if buf.len() < HEADER {
        return Err(RecordError::BadLength(buf.len() as u32));
    }
    if buf[0..8] != MAGIC {
        return Err(if buf.iter().all(|b| *b == 0) {
            RecordError::Blank
        } else {
            RecordError::BadMagic
        });
    }
    let u16_at = |o: usize| u16::from_le_bytes([buf[o], buf[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().unwrap());
    let len = u32_at(24);
    if len as usize > capacity(buf.len()) {
        return Err(RecordError::BadLength(len));
    }
    let payload = &buf[HEADER..HEADER + len as usize];
    if buf[32..64] != digest(&buf[0..32], payload) {
        return Err(RecordError::BadChecksum);
    }
    // Checked after the checksum: a damaged header is damage, not a newer release.
    let version = u16_at(8);
    if version > VERSION {
        return Err(RecordError::NewerVersion(version));
    }
    let (k, s) = (u16_at(10), u32_at(12));
    if k != kind as u16 || s != slot {
        return Err(RecordError::Misplaced { kind: k, slot: s });
    }
    Ok(Record {
        generation: u64::from_le_bytes(buf[16..24].try_into().unwrap()),
        payload: payload.to_vec(),
    })
}

/// Of a slot's two copies, the newest good one, or why neither is good (the first copy's
/// error if both are blank or bad). The other copy's damage is reported beside it: a torn
/// write of the newest leaves the previous generation readable.
pub fn newest(
    copies: [Result<Record, RecordError>; 2],
) -> (Result<Record, RecordError>, Option<RecordError>) {
    match copies {
        [Ok(a), Ok(b)] => (Ok(if b.generation > a.generation { b } else { a }), None),
        [Ok(a), Err(e)] | [Err(e), Ok(a)] => {
            let damage = (e != RecordError::Blank).then_some(e);
            (Ok(a), damage)
        }
        [Err(a), Err(b)] => {
            let damage = (b != RecordError::Blank && a != b).then_some(b);
            (Err(a), damage)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(gen: u64, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; 512];
        encode(&mut buf, Kind::Heartbeat, 1, gen, payload).unwrap();
        buf
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let buf = framed(7, b"{\"x\":1}");
        assert_eq!(
            decode(&buf, Kind::Heartbeat, 1),
            Ok(Record {
                generation: 7,
                payload: b"{\"x\":1}".to_vec()
            })
        );
    }

    #[test]
    fn blank_garbage_torn_and_misplaced_records_are_told_apart() {
        let blank = vec![0u8; 512];
        assert_eq!(decode(&blank, Kind::Heartbeat, 1), Err(RecordError::Blank));
        let garbage: Vec<u8> = (0..512u32).map(|i| (i * 37 + 11) as u8).collect();
        assert_eq!(
            decode(&garbage, Kind::Heartbeat, 1),
            Err(RecordError::BadMagic)
        );
        // A torn write: the first sector new, the rest of an older record (or zero).
        let new = framed(8, &[b'n'; 300]);
        let old = framed(7, &[b'o'; 300]);
        let mut torn = new.clone();
        torn[256..].copy_from_slice(&old[256..]);
        assert_eq!(
            decode(&torn, Kind::Heartbeat, 1),
            Err(RecordError::BadChecksum)
        );
        // Every single flipped bit is caught, header and payload alike.
        for bit in (0..(HEADER + 300) * 8).step_by(7) {
            let mut b = new.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&b, Kind::Heartbeat, 1).is_err(), "bit {bit}");
        }
        assert_eq!(
            decode(&new, Kind::Heartbeat, 2),
            Err(RecordError::Misplaced { kind: 2, slot: 1 })
        );
        assert!(matches!(
            decode(&new, Kind::Message, 1),
            Err(RecordError::Misplaced { .. })
        ));
        let mut long = new.clone();
        long[24..28].copy_from_slice(&10_000u32.to_le_bytes());
        assert_eq!(
            decode(&long, Kind::Heartbeat, 1),
            Err(RecordError::BadLength(10_000))
        );
    }

    #[test]
    fn a_newer_format_is_refused_by_name_not_taken_for_damage() {
        let mut buf = framed(1, b"{}");
        buf[8..10].copy_from_slice(&2u16.to_le_bytes());
        let sum = digest(&buf[0..32], b"{}");
        buf[32..64].copy_from_slice(&sum);
        assert_eq!(
            decode(&buf, Kind::Heartbeat, 1),
            Err(RecordError::NewerVersion(2))
        );
    }

    #[test]
    fn an_oversized_payload_is_refused() {
        let mut buf = vec![0u8; 128];
        assert!(encode(&mut buf, Kind::Journal, 0, 1, &[1; 65]).is_none());
        assert!(encode(&mut buf, Kind::Journal, 0, 1, &[1; 64]).is_some());
    }

    #[test]
    fn the_newest_good_copy_wins_and_damage_is_reported() {
        let rec = |g| {
            Ok(Record {
                generation: g,
                payload: vec![],
            })
        };
        assert_eq!(newest([rec(3), rec(4)]).0.unwrap().generation, 4);
        assert_eq!(newest([rec(5), rec(4)]).0.unwrap().generation, 5);
        let (r, damage) = newest([Err(RecordError::BadChecksum), rec(4)]);
        assert_eq!(
            (r.unwrap().generation, damage),
            (4, Some(RecordError::BadChecksum))
        );
        assert_eq!(newest([rec(1), Err(RecordError::Blank)]).1, None);
        let (r, _) = newest([Err(RecordError::Blank), Err(RecordError::Blank)]);
        assert_eq!(r, Err(RecordError::Blank));
    }
}
