//! What the records of the shared storage area hold (JSON payloads, format version 1).
//! Fields added later take `#[serde(default)]`, so that every earlier record stays readable;
//! unknown fields (from a later release) are ignored.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::layout::Geometry;

/// Blocks 0 and 1: what the area is and how it is laid out.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Random, set by `storage init`: tells two areas (or two inits of one) apart.
    pub area_id: String,
    pub created_unix: u64,
    /// The nodes, each owning the part of the area at its index.
    pub nodes: Vec<String>,
    pub ownership_blocks: u32,
    pub handoff_blocks: u32,
    pub journal_blocks: u32,
}

impl Superblock {
    pub fn geometry(&self) -> Geometry {
        Geometry {
            nodes: self.nodes.len() as u32,
            ownership_blocks: self.ownership_blocks,
            handoff_blocks: self.handoff_blocks,
            journal_blocks: self.journal_blocks,
        }
    }

    pub fn index_of(&self, node: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n == node)
    }
}

/// A node's disk heartbeat, rewritten every interval. Its freshness is judged by the reader's
/// clock alone (the generation moved on since the reader last looked), never by the writer's
/// stamp: the nodes' clocks are not compared.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Heartbeat {
    /// The writer's wall clock (milliseconds since the epoch), for people reading `show`.
    pub written_unix_ms: u64,
    /// How often it writes: a reader that sees no new generation for its own timeout (by its
    /// own clock) counts the writer's disk heartbeat stale.
    #[serde(default)]
    pub interval_ms: u64,
    /// The resources it serves, by name, with the epoch it serves them under.
    #[serde(default)]
    pub serving: BTreeMap<String, u64>,
    /// Its LAN link is up.
    #[serde(default)]
    pub lan_up: bool,
    /// Orders it obeyed: sender's name to the order's id (see [`Message`]).
    #[serde(default)]
    pub obeyed: BTreeMap<String, u64>,
    /// Its agent's last write before a planned restart: its gates serve on over the restart
    /// grace, so readers count it stale only that much later.
    #[serde(default)]
    pub restarting: bool,
}

/// A node's orders to other nodes. The poison pill: the named node closes its gates and stops
/// its services at once, reopens nothing without a new grant, and says so in its heartbeat
/// (`obeyed`), which proves it gone to the sender.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    #[serde(default)]
    pub orders: Vec<Order>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub to: String,
    /// Grows with every order of the sender: an order is obeyed once.
    pub id: u64,
    pub order: OrderKind,
    pub reason: String,
    pub issued_unix_ms: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OrderKind {
    /// Close every gate, stop every service, stay so.
    Fence,
}

/// The resources a node claims. A resource's owner is the node whose claim has the highest
/// epoch; the epoch is the fencing token services and hooks receive.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Ownership {
    #[serde(default)]
    pub claims: BTreeMap<String, Claim>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub epoch: u64,
    /// False once it handed the resource over (a failback, a switchover).
    pub held: bool,
    pub since_unix_ms: u64,
}

/// What each resource's service left for its successor (the patent's takeover information
/// 709), written by the node that serves it; the successor reads the one of the highest epoch.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Handoff {
    #[serde(default)]
    pub resources: BTreeMap<String, HandoffEntry>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct HandoffEntry {
    pub epoch: u64,
    #[serde(default)]
    pub values: BTreeMap<String, String>,
}

/// One record of a node's journal (the patent's log data 710): ownership and handoff changes,
/// in order, replayed at takeover.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    pub unix_ms: u64,
    pub change: Change,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// The area was formatted.
    Init { area_id: String },
    /// This node took the resource, under this epoch.
    Owned { resource: String, epoch: u64 },
    /// This node handed the resource over.
    Released { resource: String, epoch: u64 },
    /// The resource's handoff was written (keys only: values can be large).
    Handoff {
        resource: String,
        epoch: u64,
        keys: Vec<String>,
    },
    /// This node ordered another to fence itself.
    Ordered { to: String, id: u64 },
    /// This node obeyed another's order.
    Obeyed { from: String, id: u64 },
}
