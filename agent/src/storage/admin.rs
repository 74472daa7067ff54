//! `takeover storage init` and `show`: format an area safely, and report everything in it.
use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{bail, Result};
use serde::Serialize;

use super::{
    area::{unix_ms, Area, NotAnArea},
    layout::{Slot, BLOCK, MAX_BLOCKS, MAX_NODES},
    payloads::{Handoff, Heartbeat, JournalEntry, Message, Ownership, Superblock},
    record::{RecordError, VERSION},
    Device,
};

/// Sizes of each node's slots (blocks), as `init` takes them.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub ownership_blocks: u32,
    pub handoff_blocks: u32,
    pub journal_blocks: u32,
}

/// How long `init --force` watches the disk heartbeats for a running agent, at least.
const WATCH_MIN: Duration = Duration::from_millis(300);
/// ... and at most (heartbeats written less often are not watched for longer).
const WATCH_MAX: Duration = Duration::from_secs(3);

/// Formats `path` for `nodes`. Refuses, changing nothing: a device that holds anything
/// (a formatted area, a file system, other data) unless `force`; and, even with `force`, an
/// area whose disk heartbeats are moving (an agent uses it).
pub fn init(path: &Path, nodes: &[String], sizes: Sizes, force: bool) -> Result<Area> {
    check_nodes(nodes)?;
    for (what, n) in [
        ("ownership", sizes.ownership_blocks),
        ("handoff", sizes.handoff_blocks),
        ("journal", sizes.journal_blocks),
    ] {
        if n == 0 || n > MAX_BLOCKS {
            bail!("--{what}-blocks {n}: between 1 and {MAX_BLOCKS}");
        }
    }
    let dev = Device::open(path)?;
    match Area::superblock(&dev)? {
        // Blank where the superblock goes: blank where the area goes, too? (A file system
        // may start with zeros: ZFS's label pads 8 KiB, btrfs's superblock is at 64 KiB.)
        Err(NotAnArea::Blank) if !force => {
            if let Some(at) = first_data(&dev, nodes, sizes)? {
                bail!(
                    "{} holds data (a non-zero byte at offset {at}): not a blank device; --force overwrites it",
                    path.display()
                );
            }
        }
        Err(NotAnArea::Blank) => {}
        Err(NotAnArea::Foreign(e)) if !force => bail!(
            "{} holds data that is not a takeover storage area ({e}); --force overwrites it",
            path.display()
        ),
        Err(NotAnArea::Foreign(_)) => {}
        Ok((_, sb)) => {
            if !force {
                bail!(
                    "{} is already a takeover storage area (id {}, nodes {}, formatted at {} unix); --force formats it anew, losing its ownership records, handoffs and journals",
                    path.display(),
                    sb.area_id,
                    sb.nodes.join(", "),
                    sb.created_unix
                );
            }
            let area = Area::open(dev)?;
            if let Some((node, ago)) = written_lately(&area)? {
                bail!(
                    "node {node} wrote its disk heartbeat to {} {ago:.1} s ago: stop every agent that uses the area, and run this again after {RECENT:?} (nothing was changed)",
                    path.display()
                );
            }
            if let Some(node) = writing(&area)? {
                bail!(
                    "node {node}'s agent is writing its disk heartbeat to {} now: stop every agent that uses the area first (nothing was changed)",
                    path.display()
                );
            }
            return format(area.dev, nodes, sizes);
        }
    }
    format(dev, nodes, sizes)
}

fn check_nodes(nodes: &[String]) -> Result<()> {
    if nodes.is_empty() {
        bail!("no nodes: name every node that will use the area (--nodes a,b, or --config)");
    }
    if nodes.len() > MAX_NODES {
        bail!("{} nodes: at most {MAX_NODES}", nodes.len());
    }
    for (i, n) in nodes.iter().enumerate() {
        if n.is_empty() {
            bail!("an empty node name");
        }
        if nodes[..i].contains(n) {
            bail!("node {n} named twice");
        }
    }
    Ok(())
}

fn format(dev: Device, nodes: &[String], sizes: Sizes) -> Result<Area> {
    let sb = Superblock {
        area_id: random_id(),
        created_unix: unix_ms() / 1000,
        nodes: nodes.to_vec(),
        ownership_blocks: sizes.ownership_blocks,
        handoff_blocks: sizes.handoff_blocks,
        journal_blocks: sizes.journal_blocks,
    };
    Area::format(dev, sb)
}

fn random_id() -> String {
    let mut b = [0u8; 8];
    // SAFETY: fills `b`; getrandom(2) never fails for 8 bytes once the pool is ready.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A heartbeat written this recently (by the writer's wall clock) means an agent may still
/// use the area, even if it writes less often than `writing` watches.
const RECENT: Duration = Duration::from_secs(10);

/// A node whose disk heartbeat was written within `RECENT` (wall clocks), and how long ago.
fn written_lately(area: &Area) -> Result<Option<(String, f64)>> {
    let now = unix_ms();
    for (n, name) in area.sb.nodes.iter().enumerate() {
        if let Ok((_, hb)) = area.read::<Heartbeat>(n, Slot::Heartbeat)?.value {
            let ago = now.saturating_sub(hb.written_unix_ms);
            if Duration::from_millis(ago) < RECENT {
                return Ok(Some((name.clone(), ago as f64 / 1e3)));
            }
        }
    }
    Ok(None)
}

/// Where the first non-zero byte is, in what `init` would write (and at least the first MiB):
/// `None` if it is all zero.
fn first_data(dev: &Device, nodes: &[String], sizes: Sizes) -> Result<Option<u64>> {
    let geo = super::layout::Geometry {
        nodes: nodes.len() as u32,
        ownership_blocks: sizes.ownership_blocks,
        handoff_blocks: sizes.handoff_blocks,
        journal_blocks: sizes.journal_blocks,
    };
    let blocks = geo
        .total_blocks()
        .max((1 << 20) / BLOCK as u64)
        .min(dev.size / BLOCK as u64);
    let chunk = 256u64;
    let mut at = 0;
    while at < blocks {
        let n = chunk.min(blocks - at);
        let buf = dev.read(at, n)?;
        if let Some(i) = buf.iter().position(|b| *b != 0) {
            return Ok(Some(at * BLOCK as u64 + i as u64));
        }
        at += n;
    }
    Ok(None)
}

/// The first node whose disk heartbeat moves within a few of its intervals, if any.
fn writing(area: &Area) -> Result<Option<String>> {
    let look = |area: &Area| -> Result<Vec<(u64, u64)>> {
        (0..area.sb.nodes.len())
            .map(|n| {
                Ok(match area.read::<Heartbeat>(n, Slot::Heartbeat)?.value {
                    Ok((gen, hb)) => (gen, hb.interval_ms),
                    Err(_) => (0, 0),
                })
            })
            .collect()
    };
    let before = look(area)?;
    let interval = before.iter().map(|(_, ms)| *ms).max().unwrap_or(0);
    if before.iter().all(|(gen, _)| *gen == 0) {
        return Ok(None);
    }
    std::thread::sleep((Duration::from_millis(interval) * 3).clamp(WATCH_MIN, WATCH_MAX));
    let after = look(area)?;
    Ok(before
        .iter()
        .zip(&after)
        .position(|(b, a)| a.0 != b.0)
        .map(|n| area.sb.nodes[n].clone()))
}

/// `storage show --json`. Field names are a stable interface.
#[derive(Serialize)]
pub struct Report {
    pub device: String,
    /// Read past the page cache (`O_DIRECT`); false for a file on a file system without it.
    pub direct_io: bool,
    pub device_bytes: u64,
    pub area_bytes: u64,
    pub format_version: u16,
    pub area_id: String,
    pub created_unix: u64,
    pub block_bytes: usize,
    pub ownership_blocks: u32,
    pub handoff_blocks: u32,
    pub journal_blocks: u32,
    pub nodes: Vec<NodeReport>,
    /// Each resource's owner: the claim with the highest epoch.
    pub owners: BTreeMap<String, OwnerReport>,
    /// Every bad record found, in every slot (a torn last write, garbage): the slot's other
    /// copy was used. Not an error: the count is for alerts.
    pub damaged: usize,
}

#[derive(Serialize)]
pub struct NodeReport {
    pub name: String,
    pub index: usize,
    pub heartbeat: SlotReport<Heartbeat>,
    pub message: SlotReport<Message>,
    pub ownership: SlotReport<Ownership>,
    pub handoff: SlotReport<Handoff>,
    pub journal: JournalReport,
}

#[derive(Serialize)]
pub struct SlotReport<T> {
    /// 0: never written (or unreadable: see `error`).
    pub generation: u64,
    pub value: Option<T>,
    /// Why neither copy could be read (`null` if one could, or the slot is blank).
    pub error: Option<String>,
    /// What was wrong with the copy not used.
    pub damage: Option<String>,
}

#[derive(Serialize)]
pub struct JournalReport {
    /// Sequence number of the newest record.
    pub end: u64,
    pub records: usize,
    /// The newest records, oldest first (at most `JOURNAL_TAIL`).
    pub tail: Vec<JournalRecord>,
    pub damaged: Vec<JournalDamage>,
}

#[derive(Serialize)]
pub struct JournalRecord {
    pub seq: u64,
    #[serde(flatten)]
    pub entry: JournalEntry,
}

#[derive(Serialize)]
pub struct JournalDamage {
    pub seq: u64,
    pub error: String,
}

#[derive(Serialize)]
pub struct OwnerReport {
    pub node: String,
    pub epoch: u64,
    pub held: bool,
}

const JOURNAL_TAIL: usize = 20;

fn slot_report<T: serde::de::DeserializeOwned>(
    area: &Area,
    node: usize,
    slot: Slot,
    damaged: &mut usize,
) -> Result<SlotReport<T>> {
    let read = area.read::<T>(node, slot)?;
    *damaged += read.damage.is_some() as usize;
    Ok(match read.value {
        Ok((generation, value)) => SlotReport {
            generation,
            value: Some(value),
            error: None,
            damage: read.damage.map(|e| e.to_string()),
        },
        Err(e) => {
            let blank = e == RecordError::Blank;
            *damaged += !blank as usize;
            SlotReport {
                generation: 0,
                value: None,
                error: (!blank).then(|| e.to_string()),
                damage: read.damage.map(|e| e.to_string()),
            }
        }
    })
}

pub fn inspect(area: &Area) -> Result<Report> {
    let mut damaged = 0;
    let mut nodes = Vec::new();
    let mut owners: BTreeMap<String, OwnerReport> = BTreeMap::new();
    for (index, name) in area.sb.nodes.iter().enumerate() {
        let ownership: SlotReport<Ownership> =
            slot_report(area, index, Slot::Ownership, &mut damaged)?;
        for (res, claim) in ownership.value.iter().flat_map(|o| &o.claims) {
            if owners.get(res).is_none_or(|o| claim.epoch > o.epoch) {
                owners.insert(
                    res.clone(),
                    OwnerReport {
                        node: name.clone(),
                        epoch: claim.epoch,
                        held: claim.held,
                    },
                );
            }
        }
        let replay = area.replay(index)?;
        damaged += replay.damaged.len();
        let records = replay.entries.len();
        let skip = records.saturating_sub(JOURNAL_TAIL);
        nodes.push(NodeReport {
            name: name.clone(),
            index,
            heartbeat: slot_report(area, index, Slot::Heartbeat, &mut damaged)?,
            message: slot_report(area, index, Slot::Message, &mut damaged)?,
            ownership,
            handoff: slot_report(area, index, Slot::Handoff, &mut damaged)?,
            journal: JournalReport {
                end: replay.end,
                records,
                tail: replay
                    .entries
                    .into_iter()
                    .skip(skip)
                    .map(|(seq, entry)| JournalRecord { seq, entry })
                    .collect(),
                damaged: replay
                    .damaged
                    .into_iter()
                    .map(|(seq, e)| JournalDamage {
                        seq,
                        error: e.to_string(),
                    })
                    .collect(),
            },
        });
    }
    Ok(Report {
        device: area.dev.path.display().to_string(),
        direct_io: area.dev.direct,
        device_bytes: area.dev.size,
        area_bytes: area.geo.total_blocks() * BLOCK as u64,
        format_version: VERSION,
        area_id: area.sb.area_id.clone(),
        created_unix: area.sb.created_unix,
        block_bytes: BLOCK,
        ownership_blocks: area.sb.ownership_blocks,
        handoff_blocks: area.sb.handoff_blocks,
        journal_blocks: area.sb.journal_blocks,
        nodes,
        owners,
        damaged,
    })
}
