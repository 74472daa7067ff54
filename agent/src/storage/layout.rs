//! Where each slot of the shared storage area lies, from the superblock's sizes.
//!
//! Blocks of [`BLOCK`] bytes. Blocks 0 and 1 are the superblock's two copies. Then, for each
//! node in the superblock's order, its own part, which only that node writes (so no two nodes
//! ever write one block, and no lock is needed):
//!
//! | slot      | copies | blocks each        | what                                         |
//! |-----------|--------|--------------------|----------------------------------------------|
//! | heartbeat | 2      | 1                  | the disk heartbeat, rewritten every interval |
//! | message   | 2      | 1                  | orders to other nodes (the poison pill)      |
//! | ownership | 2      | `ownership_blocks` | the resources it claims, with their epochs   |
//! | handoff   | 2      | `handoff_blocks`   | what its services left for their successor   |
//! | journal   | 1      | `journal_blocks`   | a ring of records, one per block             |
//!
//! A slot's two copies are written in turn (the one with the older generation), so a torn
//! write leaves the previous generation readable.
use super::record::Kind;

pub const BLOCK: usize = 4096;
/// The superblock: its own two copies at blocks 0 and 1.
pub const SUPERBLOCK_COPIES: [u64; 2] = [0, 1];

pub const DEFAULT_OWNERSHIP_BLOCKS: u32 = 16;
pub const DEFAULT_HANDOFF_BLOCKS: u32 = 64;
pub const DEFAULT_JOURNAL_BLOCKS: u32 = 256;
/// Bounds on the sizes: a journal position must fit the record's slot field beside the node.
pub const MAX_BLOCKS: u32 = 1 << 16;
pub const MAX_NODES: usize = 64;

/// The sizes the superblock records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub nodes: u32,
    pub ownership_blocks: u32,
    pub handoff_blocks: u32,
    pub journal_blocks: u32,
}

/// A per-node slot kept in two copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Heartbeat,
    Message,
    Ownership,
    Handoff,
}

impl Slot {
    pub const ALL: [Slot; 4] = [
        Slot::Heartbeat,
        Slot::Message,
        Slot::Ownership,
        Slot::Handoff,
    ];

    pub fn kind(self) -> Kind {
        match self {
            Slot::Heartbeat => Kind::Heartbeat,
            Slot::Message => Kind::Message,
            Slot::Ownership => Kind::Ownership,
            Slot::Handoff => Kind::Handoff,
        }
    }
}

impl Geometry {
    fn blocks(&self, slot: Slot) -> u64 {
        match slot {
            Slot::Heartbeat | Slot::Message => 1,
            Slot::Ownership => self.ownership_blocks as u64,
            Slot::Handoff => self.handoff_blocks as u64,
        }
    }

    fn per_node(&self) -> u64 {
        Slot::ALL.iter().map(|s| 2 * self.blocks(*s)).sum::<u64>() + self.journal_blocks as u64
    }

    fn node_base(&self, node: usize) -> u64 {
        2 + node as u64 * self.per_node()
    }

    /// The area's whole size in blocks.
    pub fn total_blocks(&self) -> u64 {
        self.node_base(self.nodes as usize)
    }

    /// First block and length (blocks) of copy `copy` (0 or 1) of `node`'s `slot`.
    pub fn slot(&self, node: usize, slot: Slot, copy: usize) -> (u64, u64) {
        let mut at = self.node_base(node);
        for s in Slot::ALL {
            if s == slot {
                return (at + copy as u64 * self.blocks(s), self.blocks(s));
            }
            at += 2 * self.blocks(s);
        }
        unreachable!()
    }

    /// The block of position `pos` of `node`'s journal ring.
    pub fn journal(&self, node: usize, pos: u32) -> u64 {
        self.node_base(node + 1) - self.journal_blocks as u64 + pos as u64
    }

    /// The record header's slot field for a per-node slot.
    pub fn slot_id(node: usize) -> u32 {
        node as u32
    }

    /// The record header's slot field for a journal position: node and position, so a write
    /// that landed in another node's ring is caught.
    pub fn journal_id(node: usize, pos: u32) -> u32 {
        ((node as u32) << 16) | pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_tile_the_area_without_overlap() {
        let g = Geometry {
            nodes: 3,
            ownership_blocks: 2,
            handoff_blocks: 3,
            journal_blocks: 5,
        };
        let mut used = vec![false; g.total_blocks() as usize];
        let mut take = |first: u64, len: u64| {
            for b in first..first + len {
                assert!(!used[b as usize], "block {b} twice");
                used[b as usize] = true;
            }
        };
        take(0, 2);
        for n in 0..3 {
            for s in Slot::ALL {
                for c in 0..2 {
                    let (first, len) = g.slot(n, s, c);
                    take(first, len);
                }
            }
            for p in 0..5 {
                take(g.journal(n, p), 1);
            }
        }
        assert!(used.iter().all(|u| *u), "holes: {used:?}");
    }
}
