//! The shared storage area as a whole: format it, find its superblock, read and write each
//! node's slots (two copies, newest good one wins) and append to and replay its journal.
use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::{de::DeserializeOwned, Serialize};

use super::{
    device::Device,
    layout::{Geometry, Slot, BLOCK, SUPERBLOCK_COPIES},
    payloads::{Change, JournalEntry, Superblock},
    record::{self, Kind, Record, RecordError},
};

/// One slot as read: its newest good copy (if any) and what was wrong with the other.
#[derive(Debug)]
pub struct SlotRead<T> {
    /// `Err`: neither copy is good (`Blank` if the slot was never written).
    pub value: Result<(u64, T), RecordError>,
    /// Damage of a copy that was not used (a torn last write, garbage): reported, not fatal.
    pub damage: Option<RecordError>,
}

/// A node's journal as replayed.
#[derive(Debug, Default)]
pub struct Replay {
    /// Good records, oldest first, with their sequence numbers.
    pub entries: Vec<(u64, JournalEntry)>,
    /// The sequence number of the newest good record (0: empty).
    pub end: u64,
    /// Positions in the ring that should hold one of the last records but do not: sequence
    /// number expected there and why it could not be read.
    pub damaged: Vec<(u64, RecordError)>,
}

#[derive(Debug)]
pub struct Area {
    pub dev: Device,
    pub sb: Superblock,
    pub geo: Geometry,
    /// Per (node, slot): the generation last written by this process and the copy it went
    /// to, so that the next write goes to the other copy without reading first.
    written: BTreeMap<(usize, u8), (u64, usize)>,
}

/// Why `open` found no area (the typed part of its error, for `init`'s checks).
#[derive(Debug)]
pub enum NotAnArea {
    /// Every byte of the superblock's blocks is zero.
    Blank,
    /// Something else is there (a file system, another program's data, garbage).
    Foreign(RecordError),
}

impl Area {
    /// Opens a formatted area.
    pub fn open(dev: Device) -> Result<Area> {
        match Self::superblock(&dev)? {
            Ok((_, sb)) => Self::with(dev, sb),
            Err(NotAnArea::Blank) => bail!(
                "{} is not formatted as a takeover storage area (blank): run `takeover storage init`",
                dev.path.display()
            ),
            Err(NotAnArea::Foreign(e)) => bail!(
                "{} does not hold a takeover storage area ({e}); `takeover storage init --force` formats it, destroying what is there",
                dev.path.display()
            ),
        }
    }

    fn with(dev: Device, sb: Superblock) -> Result<Area> {
        let geo = sb.geometry();
        let need = geo.total_blocks() * BLOCK as u64;
        if dev.size < need {
            bail!(
                "{} is {} bytes, smaller than its area's layout ({need} bytes): truncated?",
                dev.path.display(),
                dev.size
            );
        }
        Ok(Area {
            dev,
            sb,
            geo,
            written: BTreeMap::new(),
        })
    }

    /// The newest good superblock, or why there is none.
    pub fn superblock(dev: &Device) -> Result<Result<(u64, Superblock), NotAnArea>> {
        let copies = SUPERBLOCK_COPIES.map(|b| {
            dev.read(b, 1)
                .map(|buf| record::decode(&buf, Kind::Superblock, 0))
        });
        let [a, b] = copies;
        let (best, _) = record::newest([a?, b?]);
        Ok(match best {
            Ok(r) => match serde_json::from_slice(&r.payload) {
                Ok(sb) => Ok((r.generation, sb)),
                Err(e) => Err(NotAnArea::Foreign(RecordError::BadPayload(e.to_string()))),
            },
            Err(RecordError::Blank) => Err(NotAnArea::Blank),
            Err(e) => Err(NotAnArea::Foreign(e)),
        })
    }

    /// Formats `dev` for `sb`: superblock, every slot blank, a journal entry per node.
    pub fn format(dev: Device, sb: Superblock) -> Result<Area> {
        let geo = sb.geometry();
        let need = geo.total_blocks() * BLOCK as u64;
        if dev.size < need {
            bail!(
                "{} is {} bytes; the area needs {need} ({} nodes; ownership {}, handoff {}, journal {} blocks of {BLOCK} each per node)",
                dev.path.display(),
                dev.size,
                geo.nodes,
                geo.ownership_blocks,
                geo.handoff_blocks,
                geo.journal_blocks
            );
        }
        // Zero everything but the superblock first, in large writes; the superblock last, so
        // that an interrupted init leaves no area that looks formatted.
        dev.write(0, &vec![0u8; 2 * BLOCK])?;
        let chunk = 256u64;
        let mut at = 2;
        while at < geo.total_blocks() {
            let n = chunk.min(geo.total_blocks() - at);
            dev.write(at, &vec![0u8; n as usize * BLOCK])?;
            at += n;
        }
        let mut area = Self::with(dev, sb)?;
        for n in 0..area.sb.nodes.len() {
            area.append(
                n,
                JournalEntry {
                    unix_ms: unix_ms(),
                    change: Change::Init {
                        area_id: area.sb.area_id.clone(),
                    },
                },
            )?;
        }
        let payload = serde_json::to_vec(&area.sb)?;
        for (gen, b) in SUPERBLOCK_COPIES.into_iter().enumerate() {
            let mut buf = vec![0u8; BLOCK];
            record::encode(&mut buf, Kind::Superblock, 0, gen as u64 + 1, &payload)
                .context("the superblock does not fit a block (too many nodes?)")?;
            area.dev.write(b, &buf)?;
        }
        Ok(area)
    }

    /// `node`'s index in the area.
    pub fn index_of(&self, node: &str) -> Result<usize> {
        self.sb.index_of(node).with_context(|| {
            format!(
                "node {node} is not in the storage area {} (its nodes: {}); format it again for these nodes with `takeover storage init --force`",
                self.dev.path.display(),
                self.sb.nodes.join(", ")
            )
        })
    }

    fn read_copies(&self, node: usize, slot: Slot) -> Result<[Result<Record, RecordError>; 2]> {
        let read = |copy| -> Result<Result<Record, RecordError>> {
            let (first, len) = self.geo.slot(node, slot, copy);
            let buf = self.dev.read(first, len)?;
            Ok(record::decode(&buf, slot.kind(), Geometry::slot_id(node)))
        };
        Ok([read(0)?, read(1)?])
    }

    /// Reads `node`'s `slot`. I/O errors are errors; bad records are reported in the result.
    pub fn read<T: DeserializeOwned>(&self, node: usize, slot: Slot) -> Result<SlotRead<T>> {
        let (best, damage) = record::newest(self.read_copies(node, slot)?);
        let value = best.and_then(|r| {
            serde_json::from_slice(&r.payload)
                .map(|v| (r.generation, v))
                .map_err(|e| RecordError::BadPayload(e.to_string()))
        });
        Ok(SlotRead { value, damage })
    }

    /// Writes `value` as the next generation of `node`'s `slot`, into the copy that does not
    /// hold the newest good one. Returns the generation written.
    pub fn write<T: Serialize>(&mut self, node: usize, slot: Slot, value: &T) -> Result<u64> {
        let key = (node, slot as u8);
        let (gen, copy) = match self.written.get(&key) {
            Some(&(gen, copy)) => (gen + 1, 1 - copy),
            None => {
                let [a, b] = self.read_copies(node, slot)?;
                let g = |r: &Result<Record, RecordError>| r.as_ref().map_or(0, |r| r.generation);
                let (ga, gb) = (g(&a), g(&b));
                // Overwrite the older (or bad) copy; keep the newest good one.
                let copy = if a.is_ok() && (b.is_err() || ga >= gb) {
                    1
                } else {
                    0
                };
                (ga.max(gb) + 1, copy)
            }
        };
        let payload = serde_json::to_vec(value)?;
        let (first, len) = self.geo.slot(node, slot, copy);
        let mut buf = vec![0u8; len as usize * BLOCK];
        if record::encode(
            &mut buf,
            slot.kind(),
            Geometry::slot_id(node),
            gen,
            &payload,
        )
        .is_none()
        {
            bail!(
                "the {} record ({} bytes) does not fit its slot ({} bytes): format the area with more blocks for it",
                slot.kind().name(),
                payload.len(),
                record::capacity(buf.len())
            );
        }
        self.dev.write(first, &buf)?;
        self.written.insert(key, (gen, copy));
        Ok(gen)
    }

    /// Replays `node`'s journal ring.
    pub fn replay(&self, node: usize) -> Result<Replay> {
        let ring = self.geo.journal_blocks;
        let first = self.geo.journal(node, 0);
        let buf = self.dev.read(first, ring as u64)?;
        let mut good = Vec::new();
        let mut bad = BTreeMap::new();
        for pos in 0..ring {
            let block = &buf[pos as usize * BLOCK..(pos as usize + 1) * BLOCK];
            match record::decode(block, Kind::Journal, Geometry::journal_id(node, pos)) {
                Ok(r) => match serde_json::from_slice::<JournalEntry>(&r.payload) {
                    Ok(e)
                        if r.generation.checked_sub(1).map(|g| g % ring as u64)
                            == Some(pos as u64) =>
                    {
                        good.push((r.generation, e))
                    }
                    Ok(_) => {
                        bad.insert(
                            pos,
                            RecordError::Misplaced {
                                kind: Kind::Journal as u16,
                                slot: Geometry::journal_id(node, pos),
                            },
                        );
                    }
                    Err(e) => {
                        bad.insert(pos, RecordError::BadPayload(e.to_string()));
                    }
                },
                Err(RecordError::Blank) => {}
                Err(e) => {
                    bad.insert(pos, e);
                }
            }
        }
        good.sort_by_key(|(seq, _)| *seq);
        let end = good.last().map_or(0, |(seq, _)| *seq);
        // Of the last `ring` records, every one should be there; a bad block at a position
        // one of them belongs at is damage (at the end: a torn last append).
        let oldest = end.saturating_sub(ring as u64 - 1).max(1);
        let mut damaged = Vec::new();
        for (pos, e) in bad {
            let seq =
                oldest + (pos as u64 + ring as u64 - (oldest - 1) % ring as u64) % ring as u64;
            damaged.push((seq, e));
        }
        // A record newer than the end that did not land (torn) is found as a bad block at
        // the position after the end: reported with the sequence number it would have had.
        damaged.sort_by_key(|(seq, _)| *seq);
        Ok(Replay {
            entries: good,
            end,
            damaged,
        })
    }

    /// Appends `entry` to `node`'s journal; returns its sequence number.
    pub fn append(&mut self, node: usize, entry: JournalEntry) -> Result<u64> {
        let key = (node, u8::MAX);
        let seq = match self.written.get(&key) {
            Some(&(seq, _)) => seq + 1,
            None => self.replay(node)?.end + 1,
        };
        let ring = self.geo.journal_blocks as u64;
        let pos = ((seq - 1) % ring) as u32;
        let payload = serde_json::to_vec(&entry)?;
        let mut buf = vec![0u8; BLOCK];
        if record::encode(
            &mut buf,
            Kind::Journal,
            Geometry::journal_id(node, pos),
            seq,
            &payload,
        )
        .is_none()
        {
            bail!(
                "a journal record of {} bytes does not fit a block",
                payload.len()
            );
        }
        self.dev.write(self.geo.journal(node, pos), &buf)?;
        self.written.insert(key, (seq, 0));
        Ok(seq)
    }
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
