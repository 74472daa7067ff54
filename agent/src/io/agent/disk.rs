//! The shared storage area, as the heartbeat loop sees it (`core::node::disk`): it opens the
//! area at start, hands it to the disk thread (`disk_worker`), tells the thread at every
//! wake-up that the loop runs (`beat`) and what this node serves, and feeds the core what the
//! thread reports. The thread writes only while the loop runs: a node whose agent hangs looks
//! hung on the disk too, so its peers can take over once its lease has lapsed.
use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use tokio::sync::oneshot;

use super::{
    disk_worker::{Request, Worker},
    Input, Shell,
};
use crate::{
    config::Storage,
    core::{
        event::resource_name,
        node::{CoreConfig, DiskRead, Gate, NodeId, ReadTimes},
    },
    io::{
        control::{Handoff, HandoffOp},
        inbox::Mailbox,
    },
    storage::{
        area::unix_ms,
        layout::Slot,
        payloads::{Heartbeat, Ownership},
        Area, Device,
    },
};

/// What the thread found in one round.
pub(super) struct Round {
    /// Each peer's disk heartbeat; `None` if the area could not be read at all.
    pub gens: Option<Vec<DiskRead>>,
    /// This node's write: `Err` with why it failed.
    pub write: Result<(), String>,
    /// When the write began.
    pub started: Instant,
    /// When the peers' slots were read: from, to.
    pub read: (Instant, Instant),
}

/// The loop's handle on the thread.
pub(super) struct Disk {
    shared: Arc<Shared>,
    requests: mpsc::Sender<Request>,
    /// What the disk heartbeat says changed: rebuilt at the next wake-up.
    pub dirty: bool,
    /// The orders obeyed, as the heartbeat last said.
    obeyed: Vec<(NodeId, u64)>,
}

/// What the loop and the thread share.
pub(super) struct Shared {
    /// Bumped by the loop at every wake-up.
    pub beat: AtomicU64,
    /// What this node's heartbeat says (what it serves, its LAN), as the loop last saw it.
    pub state: Mutex<Heartbeat>,
    pub stop: AtomicBool,
    /// The area and this node's index in it: the thread's, and the stop's last write.
    pub area: Mutex<Area>,
    pub mine: usize,
}

/// The area, opened and checked, with this node's index in it and each core peer's.
pub(super) struct Opened {
    area: Area,
    mine: usize,
    peers: Vec<(NodeId, usize)>,
}

/// Opens the area named by the configuration and finds this node and its peers in it (a check
/// before start-up changes anything).
pub(super) fn open(st: &Storage, me: &str, nodes: &[String]) -> Result<Opened> {
    let area = Area::open(Device::open(&st.device).context("storage.device")?)
        .context("storage.device")?;
    if !area.dev.direct {
        log::warn!(
            "storage.device {}: its file system does not take O_DIRECT: reads go through this host's page cache, right only if every node runs on this host",
            st.device.display()
        );
    }
    let mine = area.index_of(me)?;
    let mut peers = Vec::new();
    for (p, name) in nodes.iter().enumerate() {
        if name != me {
            peers.push((p, area.index_of(name)?));
        }
    }
    Ok(Opened { area, mine, peers })
}

impl Disk {
    /// Starts the thread.
    pub(super) fn start(
        opened: Opened,
        core: &CoreConfig,
        interval: Duration,
        realtime_priority: bool,
        mailbox: Mailbox<Input>,
    ) -> Result<Disk> {
        let Opened { area, mine, peers } = opened;
        // What the previous agent claimed: releases are recorded against it.
        let ownership = area
            .read::<Ownership>(mine, Slot::Ownership)?
            .value
            .map_or_else(|_| Ownership::default(), |(_, o)| o);
        let shared = Arc::new(Shared {
            beat: AtomicU64::new(0),
            state: Mutex::new(Heartbeat::default()),
            stop: AtomicBool::new(false),
            area: Mutex::new(area),
            mine,
        });
        let (requests, rx) = mpsc::channel();
        let worker = Worker {
            shared: shared.clone(),
            peers,
            interval,
            names: (0..core.resources.len())
                .map(|r| (resource_name(core, r), r))
                .collect(),
            mailbox,
            requests: rx,
            ownership,
            nodes: core.nodes.clone(),
            me: core.me,
            orders: BTreeMap::new(),
            orders_written: false,
            journaled_orders: BTreeMap::new(),
        };
        std::thread::Builder::new()
            .name("disk heartbeat".into())
            .spawn(move || {
                // As the heartbeat loop: a busy host must not make this node look gone.
                if realtime_priority {
                    super::fifo();
                }
                worker.run()
            })
            .context("starting the disk heartbeat thread")?;
        Ok(Disk {
            shared,
            requests,
            dirty: true,
            obeyed: Vec::new(),
        })
    }

    /// The thread's request channel (a stateful resource's acquire reads its handoff).
    pub(super) fn requests(&self) -> mpsc::Sender<Request> {
        self.requests.clone()
    }

    /// Writes (or withdraws) a fence order for `to` in this node's message slot.
    pub(super) fn order(&self, to: String, id: Option<u64>) {
        let _ = self.requests.send(Request::Order { to, id });
    }

    /// Records that this node opens these resources in these epochs; the answer comes as
    /// `Input::DiskClaimed`. False if the thread is gone.
    pub(super) fn claim(&self, claims: Vec<(String, u64)>) -> bool {
        self.requests.send(Request::Claim(claims)).is_ok()
    }
}

impl Shell {
    /// `takeover handoff`: checked here (the core knows who serves what), done by the disk
    /// thread, which answers the client itself once the record is on the device.
    pub(super) fn handoff(&mut self, h: Handoff, reply: oneshot::Sender<serde_json::Value>) {
        let refuse = |reply: oneshot::Sender<serde_json::Value>, why: String| {
            let _ = reply.send(serde_json::json!({ "error": why }));
        };
        let Some(disk) = self.disk.as_ref() else {
            return refuse(
                reply,
                "no [storage] in this node's configuration: handoff records live in the storage area".into(),
            );
        };
        let names: Vec<String> = (0..self.core_cfg.resources.len())
            .map(|r| resource_name(&self.core_cfg, r))
            .collect();
        let res = match &h.resource {
            Some(name) => match names.iter().position(|n| n == name) {
                Some(r) => Some(r),
                None => {
                    return refuse(
                        reply,
                        format!(
                            "{name} is not a resource of this cluster (an address, or \"ADDRESS tcp/PORT\" for a service)"
                        ),
                    )
                }
            },
            None => None,
        };
        let request = match (h.handoff, res) {
            (HandoffOp::Put, None) | (HandoffOp::Get, None) => {
                return refuse(
                    reply,
                    "which resource? (give it as the first argument)".into(),
                )
            }
            (HandoffOp::Put, Some(r)) => {
                // A service is served where its gate is open (its address's server, or the
                // peer its traffic is handed to).
                let address = self.core_cfg.resources[r].service.map_or(r, |s| s.address);
                // A stateful resource's services write theirs while they stop (claimed, its
                // gate closed) or start (claimed, before it opens).
                let claimed =
                    self.core_cfg.resources[address].stateful && self.core.is_open(address);
                if self.core.gate(r) != Gate::Open && !claimed {
                    let by = self
                        .core
                        .server(address)
                        .map_or("nobody".to_string(), |n| self.core_cfg.nodes[n].clone());
                    return refuse(
                        reply,
                        format!(
                            "{} is not served by this node ({by} serves it): its handoff is written where it is served",
                            names[r]
                        ),
                    );
                }
                if let Some(why) = bad_values(&h.values) {
                    return refuse(reply, why);
                }
                Request::HandoffPut {
                    resource: names[r].clone(),
                    epoch: self.core.epoch(address),
                    values: h.values,
                    reply,
                }
            }
            (_, r) => Request::HandoffRead {
                resource: r.map(|r| names[r].clone()),
                key: h.key,
                reply,
            },
        };
        if let Err(mpsc::SendError(
            Request::HandoffPut { reply, .. } | Request::HandoffRead { reply, .. },
        )) = disk.requests.send(request)
        {
            refuse(reply, "the storage thread has stopped".into());
        }
    }
}

/// Why these handoff values are refused, if they are: at least one, keys of 1-128 printable
/// characters without `=`, values up to 64 KiB.
fn bad_values(values: &BTreeMap<String, String>) -> Option<String> {
    if values.is_empty() {
        return Some("nothing to put: give KEY=VALUE pairs".into());
    }
    for (k, v) in values {
        if k.is_empty() || k.len() > 128 || k.contains('=') || k.chars().any(char::is_control) {
            return Some(format!(
                "{k:?} is not a handoff key (1-128 printable characters, no '=')"
            ));
        }
        if v.len() > 64 * 1024 {
            return Some(format!("the value of {k} is over 64 KiB"));
        }
    }
    None
}

impl Shared {
    /// This node's heartbeat as the loop last described it.
    pub fn heartbeat(&self, interval: Duration, restarting: bool) -> Heartbeat {
        let mut hb = self.state.lock().map(|h| h.clone()).unwrap_or_default();
        hb.written_unix_ms = unix_ms();
        hb.interval_ms = interval.as_millis() as u64;
        hb.restarting = restarting;
        hb
    }

    /// Writes this node's heartbeat.
    fn write(&self, area: &mut Area, interval: Duration, restarting: bool) -> Result<(), String> {
        let hb = self.heartbeat(interval, restarting);
        area.write(self.mine, Slot::Heartbeat, &hb)
            .map(|_| ())
            .map_err(|e| format!("{e:#}"))
    }
}

impl Disk {
    /// A planned stop's last disk heartbeat, saying that the agent restarts (peers judging
    /// this node by the disk then wait the restart grace). The thread writes no more. True if
    /// it was on the device within `within` (a storage that hangs is not waited for).
    pub(super) fn last_write(&self, interval: Duration, within: Duration) -> bool {
        self.shared.stop.store(true, Ordering::Relaxed);
        let (done, result) = mpsc::channel();
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("last disk write".into())
            .spawn(move || {
                let Ok(mut area) = shared.area.lock() else {
                    return;
                };
                let _ = done.send(shared.write(&mut area, interval, true));
            });
        if spawned.is_err() {
            return false;
        }
        match result.recv_timeout(within) {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                log::warn!("the last disk heartbeat could not be written: {e}");
                false
            }
            Err(_) => {
                log::warn!("the storage did not take the last disk heartbeat in {within:?}");
                false
            }
        }
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

impl Shell {
    /// At every wake-up: the loop runs (the thread may write), and what the heartbeat says is
    /// refreshed if it changed.
    pub(super) fn disk_beat(&mut self) {
        let Some(disk) = self.disk.as_mut() else {
            return;
        };
        let obeyed = self.core.obeyed();
        if obeyed != disk.obeyed {
            disk.obeyed = obeyed;
            disk.dirty = true;
        }
        if !disk.dirty {
            disk.shared.beat.fetch_add(1, Ordering::Relaxed);
            return;
        }
        disk.dirty = false;
        let serving: BTreeMap<String, u64> = (0..self.core_cfg.resources.len())
            .filter(|&r| self.core.is_open(r))
            .map(|r| (resource_name(&self.core_cfg, r), self.core.epoch(r)))
            .collect();
        let lan_up = self.core.lan_link();
        let obeyed = disk
            .obeyed
            .iter()
            .map(|&(p, id)| (self.core_cfg.nodes[p].clone(), id))
            .collect();
        if let Ok(mut hb) = disk.shared.state.lock() {
            hb.serving = serving;
            hb.lan_up = lan_up;
            hb.obeyed = obeyed;
        }
        // After the state: a round never writes an older one for a newer beat.
        disk.shared.beat.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn disk_round(&mut self, round: Round) {
        let now = self.now();
        if let Some(gens) = &round.gens {
            let at = |i: Instant| i.saturating_duration_since(self.start);
            let times = ReadTimes {
                began: at(round.read.0),
                ended: at(round.read.1),
            };
            self.core.handle_disk(now, times, gens);
        }
        let started = round.started.saturating_duration_since(self.start);
        match &round.write {
            Ok(()) => self.core.handle_storage(now, started, true, ""),
            Err(e) => self.core.handle_storage(now, started, false, e),
        }
        if round.gens.is_none() && !self.disk_unreadable {
            log::warn!("the storage area cannot be read: the peers' disk heartbeats are not judged meanwhile (a peer silent on every network path keeps what it serves)");
        }
        self.disk_unreadable = round.gens.is_none();
    }
}
