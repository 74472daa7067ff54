//! The disk heartbeat's thread (`disk`): every storage interval it writes this node's
//! heartbeat into its slot of the shared area, reads the peers', and records what this node
//! released in its ownership record and journal; at once, when asked, it records what this
//! node is about to open (the `Persist` of a takeover), and says when that is on the device.
//! Block I/O can stall for as long as the storage likes; it never stalls the heartbeat loop.
use std::{
    collections::{BTreeMap, HashMap},
    sync::{atomic::Ordering, mpsc, Arc},
    time::{Duration, Instant},
};

use anyhow::Result;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::{
    disk::{Round, Shared},
    Input,
};
use crate::{
    core::node::{DiskRead, NodeId, ResId},
    io::inbox::Mailbox,
    storage::{
        area::unix_ms,
        layout::Slot,
        payloads::{
            Change, Claim, Handoff, HandoffEntry, Heartbeat, JournalEntry, Message, Order,
            OrderKind, Ownership,
        },
        record::RecordError,
        Area,
    },
};

/// What the heartbeat loop asks of the thread besides its rounds.
pub(super) enum Request {
    /// Record that this node opens these resources (by name) in these epochs; answer with
    /// `Input::DiskClaimed`.
    Claim(Vec<(String, u64)>),
    /// Set these keys of a resource's handoff record (this node serves it, in `epoch`),
    /// and answer the client once it is on the device.
    HandoffPut {
        resource: String,
        epoch: u64,
        values: BTreeMap<String, String>,
        reply: oneshot::Sender<Value>,
    },
    /// Write (`Some(id)`) or withdraw a fence order for this node (by name) in this node's
    /// message slot; rewritten until it is on the device.
    Order { to: String, id: Option<u64> },
    /// Replay every node's journal before a stateful resource is mounted here:
    /// each journal's end, damage and last word on the resource, and the highest epoch
    /// another node's journal took it in (`taken_elsewhere`: at or above `epoch`, the
    /// takeover is refused).
    JournalCheck {
        resource: String,
        reply: oneshot::Sender<Result<Value, String>>,
    },
    /// Read the newest handoff record of a resource (of every one: `None`), across nodes.
    HandoffRead {
        resource: Option<String>,
        key: Option<String>,
        reply: oneshot::Sender<Value>,
    },
}

pub(super) struct Worker {
    pub shared: Arc<Shared>,
    pub peers: Vec<(NodeId, usize)>,
    pub interval: Duration,
    /// Resource names to the core's indices (the peers' heartbeats name what they serve).
    pub names: HashMap<String, ResId>,
    pub mailbox: Mailbox<Input>,
    pub requests: mpsc::Receiver<Request>,
    /// This node's ownership record as last written (read at start).
    pub ownership: Ownership,
    /// Every node's name (the core's order): orders and what was obeyed name them.
    pub nodes: Vec<String>,
    pub me: NodeId,
    /// This node's standing fence orders, by target, and whether the slot says so yet
    /// (false at start: what a previous agent left there is withdrawn).
    pub orders: BTreeMap<String, u64>,
    pub orders_written: bool,
    /// The orders already journaled (by target, their ids).
    pub journaled_orders: BTreeMap<String, u64>,
}

impl Worker {
    pub fn run(mut self) {
        let mut last_beat = 0;
        let mut next = Instant::now();
        loop {
            // A round that is due goes first: requests (a client's handoff reads, say) never
            // hold the heartbeat back; they wait at most for one round.
            let wait = next.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                match self.requests.recv_timeout(wait) {
                    Ok(request) => {
                        if !self.handle(request) {
                            return;
                        }
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                }
            }
            if self.shared.stop.load(Ordering::Relaxed) {
                return;
            }
            let beat = self.shared.beat.load(Ordering::Relaxed);
            // The loop did not run since the last round: write nothing.
            if beat != last_beat {
                last_beat = beat;
                let Some(round) = self.round() else {
                    return;
                };
                if !self.mailbox.send(Input::Disk(round)) {
                    return;
                }
            }
            next += self.interval;
            let now = Instant::now();
            if next < now {
                // Storage stalled for longer than an interval: start the beat again.
                next = now + self.interval;
            }
        }
    }

    /// One request; false once the heartbeat loop is gone.
    fn handle(&mut self, request: Request) -> bool {
        match request {
            Request::Claim(claims) => {
                let result = self.claim(&claims);
                return self.mailbox.send(Input::DiskClaimed(result));
            }
            Request::JournalCheck { resource, reply } => {
                let _ = reply.send(self.journal_check(&resource));
            }
            Request::Order { to, id } => {
                match id {
                    Some(id) => self.orders.insert(to, id),
                    None => self.orders.remove(&to),
                };
                self.orders_written = false;
            }
            Request::HandoffPut {
                resource,
                epoch,
                values,
                reply,
            } => {
                let answer = self
                    .handoff_put(&resource, epoch, values)
                    .unwrap_or_else(|e| json!({ "error": e }));
                let _ = reply.send(answer);
            }
            Request::HandoffRead {
                resource,
                key,
                reply,
            } => {
                let answer = self
                    .handoff_read(resource.as_deref(), key.as_deref())
                    .unwrap_or_else(|e| json!({ "error": e }));
                let _ = reply.send(answer);
            }
        }
        true
    }

    /// Writes this node's heartbeat, reads the peers', and records releases. `None` once the
    /// agent stops (its last write is the stop's).
    fn round(&mut self) -> Option<Round> {
        let shared = self.shared.clone();
        let mut area = shared.area.lock().ok()?;
        if shared.stop.load(Ordering::Relaxed) {
            return None;
        }
        let started = Instant::now();
        let hb = shared.heartbeat(self.interval, false);
        let write = area
            .write(shared.mine, Slot::Heartbeat, &hb)
            .map(|_| ())
            .map_err(|e| format!("{e:#}"));
        if write.is_ok() {
            if let Err(e) = self.record_releases(&mut area, &hb.serving) {
                log::warn!("recording releases in the storage area: {e:#}");
            }
            if !self.orders_written {
                let message = Message {
                    orders: self
                        .orders
                        .iter()
                        .map(|(to, &id)| Order {
                            to: to.clone(),
                            id,
                            order: OrderKind::Fence,
                            reason: "silent on every network path, its LAN down".into(),
                            issued_unix_ms: unix_ms(),
                        })
                        .collect(),
                };
                match area.write(shared.mine, Slot::Message, &message) {
                    Ok(_) => {
                        self.orders_written = true;
                        for o in &message.orders {
                            // Journaled once: a standing order rewritten is no news.
                            if self.journaled_orders.get(&o.to) == Some(&o.id) {
                                continue;
                            }
                            self.journaled_orders.insert(o.to.clone(), o.id);
                            let change = Change::Ordered {
                                to: o.to.clone(),
                                id: o.id,
                            };
                            let entry = JournalEntry {
                                unix_ms: unix_ms(),
                                change,
                            };
                            if let Err(e) = area.append(shared.mine, entry) {
                                log::warn!("journaling a fence order: {e:#}");
                            }
                        }
                    }
                    Err(e) => log::warn!("writing this node's fence orders: {e:#}"),
                }
            }
        }
        let began = Instant::now();
        let mut gens = Some(Vec::new());
        for &(p, i) in &self.peers {
            let read = match area.read::<Heartbeat>(i, Slot::Heartbeat) {
                Ok(read) => read,
                Err(_) => {
                    // The device failed: nothing is known of any peer this round.
                    gens = None;
                    break;
                }
            };
            // Its standing order for this node, if its message slot can be read (else none:
            // an order this node cannot read fences nothing; its sender waits).
            let me = &self.nodes[self.me];
            let order = area
                .read::<Message>(i, Slot::Message)
                .ok()
                .and_then(|r| r.value.ok())
                .and_then(|(_, m)| m.orders.into_iter().find(|o| &o.to == me))
                .map(|o| o.id);
            let list = gens.as_mut().expect("set above");
            match read.value {
                Ok((generation, hb)) => list.push(DiskRead {
                    peer: p,
                    generation,
                    restarting: hb.restarting,
                    serving: hb
                        .serving
                        .iter()
                        .filter_map(|(name, e)| Some((*self.names.get(name)?, *e)))
                        .collect(),
                    lan_up: hb.lan_up,
                    obeyed: hb.obeyed.get(me).copied().unwrap_or(0),
                    order,
                }),
                Err(RecordError::Blank) => list.push(DiskRead {
                    peer: p,
                    generation: 0,
                    restarting: false,
                    serving: Vec::new(),
                    lan_up: true,
                    obeyed: 0,
                    order: None,
                }),
                // Unreadable (damaged both copies, a newer release's format): this node
                // cannot tell whether it moves, so it is left out and goes stale for nobody.
                Err(_) => {}
            }
        }
        Some(Round {
            gens,
            write,
            started,
            read: (began, Instant::now()),
        })
    }

    /// This node opens `claims`: its ownership record says so, then its journal, both on the
    /// device before the answer.
    fn claim(&mut self, claims: &[(String, u64)]) -> Result<(), String> {
        let shared = self.shared.clone();
        let mut area = shared.area.lock().map_err(|_| "poisoned".to_string())?;
        let since = unix_ms();
        let before = self.ownership.clone();
        for (name, epoch) in claims {
            self.ownership.claims.insert(
                name.clone(),
                Claim {
                    epoch: *epoch,
                    held: true,
                    since_unix_ms: since,
                },
            );
        }
        let entries = claims
            .iter()
            .map(|(resource, epoch)| Change::Owned {
                resource: resource.clone(),
                epoch: *epoch,
            })
            .collect();
        let result = self.write_changes(&mut area, entries);
        if result.is_err() {
            // Not on record: not claimed (a later release must not journal it).
            self.ownership = before;
        }
        result
    }

    /// Sets keys of `resource`'s handoff record under `epoch` (an older epoch's record is
    /// replaced: a successor writes its own), then journals which keys changed.
    fn handoff_put(
        &mut self,
        resource: &str,
        epoch: u64,
        values: BTreeMap<String, String>,
    ) -> Result<Value, String> {
        let shared = self.shared.clone();
        let mut area = shared.area.lock().map_err(|_| "poisoned".to_string())?;
        let mine = shared.mine;
        let mut record = area
            .read::<Handoff>(mine, Slot::Handoff)
            .map_err(|e| format!("{e:#}"))?
            .value
            .map_or_else(|_| Handoff::default(), |(_, h)| h);
        let entry = record.resources.entry(resource.to_string()).or_default();
        if entry.epoch != epoch {
            *entry = HandoffEntry {
                epoch,
                values: BTreeMap::new(),
            };
        }
        let keys: Vec<String> = values.keys().cloned().collect();
        entry.values.extend(values);
        area.write(mine, Slot::Handoff, &record)
            .map_err(|e| format!("{e:#}"))?;
        area.append(
            mine,
            JournalEntry {
                unix_ms: unix_ms(),
                change: Change::Handoff {
                    resource: resource.to_string(),
                    epoch,
                    keys: keys.clone(),
                },
            },
        )
        .map_err(|e| format!("{e:#}"))?;
        Ok(json!({"ok": true, "resource": resource, "epoch": epoch, "keys": keys}))
    }

    /// The newest handoff record of `resource` (or of each), across every node's slot: the
    /// one of the highest epoch, with the node that wrote it.
    fn handoff_read(&mut self, resource: Option<&str>, key: Option<&str>) -> Result<Value, String> {
        let area = self
            .shared
            .area
            .lock()
            .map_err(|_| "poisoned".to_string())?;
        let mut newest: BTreeMap<String, (u64, String, BTreeMap<String, String>)> = BTreeMap::new();
        for (n, node) in area.sb.nodes.iter().enumerate() {
            let read = area
                .read::<Handoff>(n, Slot::Handoff)
                .map_err(|e| format!("{e:#}"))?;
            let Ok((_, record)) = read.value else {
                continue;
            };
            for (res, entry) in record.resources {
                if resource.is_some_and(|r| r != res) {
                    continue;
                }
                if newest.get(&res).is_none_or(|(e, _, _)| entry.epoch > *e) {
                    newest.insert(res, (entry.epoch, node.clone(), entry.values));
                }
            }
        }
        let records: BTreeMap<String, Value> = newest
            .into_iter()
            .map(|(res, (epoch, node, values))| {
                (res, json!({"epoch": epoch, "node": node, "values": values}))
            })
            .collect();
        match (resource, key) {
            (Some(r), Some(k)) => match records.get(r).and_then(|v| v["values"].get(k)) {
                Some(value) => Ok(
                    json!({"resource": r, "key": k, "value": value, "epoch": records[r]["epoch"]}),
                ),
                None => Err(format!("{r} has no handoff value {k}")),
            },
            _ => Ok(json!({ "resources": records })),
        }
    }

    /// Claims held that the heartbeat no longer lists as served were let go: recorded.
    fn record_releases(&mut self, area: &mut Area, serving: &BTreeMap<String, u64>) -> Result<()> {
        let mut changes = Vec::new();
        for (name, claim) in self.ownership.claims.iter_mut() {
            if claim.held && !serving.contains_key(name) {
                claim.held = false;
                changes.push(Change::Released {
                    resource: name.clone(),
                    epoch: claim.epoch,
                });
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        self.write_changes(area, changes)
            .map_err(anyhow::Error::msg)
    }

    /// The journals replayed for a takeover of `resource` (the patent's log data 710 as its
    /// consistency check): per node, the journal's end, how many of its last records are
    /// damaged, and its last word on the resource; and the highest epoch another node's
    /// journal took it in.
    fn journal_check(&mut self, resource: &str) -> Result<Value, String> {
        let shared = self.shared.clone();
        let area = shared.area.lock().map_err(|_| "poisoned".to_string())?;
        let mut nodes = vec![(self.me, shared.mine)];
        nodes.extend(self.peers.iter().copied());
        let mut report = serde_json::Map::new();
        let mut elsewhere = (0u64, String::new());
        for (node, index) in nodes {
            let name = &self.nodes[node];
            let replay = area
                .replay(index)
                .map_err(|e| format!("{name}'s journal: {e:#}"))?;
            let mut last = None;
            for (_, entry) in &replay.entries {
                match &entry.change {
                    Change::Owned {
                        resource: r,
                        epoch: e,
                    } if r == resource => {
                        if node != self.me && *e >= elsewhere.0 {
                            elsewhere = (*e, name.clone());
                        }
                        last = Some(json!({ "change": "owned", "epoch": e }));
                    }
                    Change::Released {
                        resource: r,
                        epoch: e,
                    } if r == resource => {
                        last = Some(json!({ "change": "released", "epoch": e }));
                    }
                    _ => {}
                }
            }
            report.insert(
                name.clone(),
                json!({ "end": replay.end, "damaged": replay.damaged.len(), "last": last }),
            );
        }
        Ok(json!({
            "journals": report,
            "taken_elsewhere": { "epoch": elsewhere.0, "by": elsewhere.1 },
        }))
    }

    /// The ownership record, then one journal record per change.
    fn write_changes(&mut self, area: &mut Area, changes: Vec<Change>) -> Result<(), String> {
        let mine = self.shared.mine;
        area.write(mine, Slot::Ownership, &self.ownership)
            .map_err(|e| format!("{e:#}"))?;
        let unix_ms = unix_ms();
        for change in changes {
            area.append(mine, JournalEntry { unix_ms, change })
                .map_err(|e| format!("{e:#}"))?;
        }
        Ok(())
    }
}
