//! The disk heartbeat (docs/design.md, "shared storage"): what the shared storage area tells
//! of the peers, and of this node's own access to it.
//!
//! The shell reads every peer's disk heartbeat each storage interval and feeds the
//! generations (`handle_disk`). A peer's heartbeat is fresh until a read at least the timeout
//! after it was first seen at its newest generation finds it unchanged; only this node's own
//! clock is used, so the nodes' clocks are never compared. While a peer that every network
//! path calls dead has a fresh disk heartbeat, it is alive behind a partition: it keeps what
//! it serves, and this node neither fences it nor takes anything from it (`disk_holds`).
//! If this node cannot read the area, nothing it read before goes stale: it cannot tell.
//!
//! A crashed host stops writing too: its resources move once its heartbeat is stale (at most
//! the timeout and an interval) and its lease has lapsed or it was fenced.
use std::time::Duration;

use super::{Core, Event, FenceState, NodeId, ResId};

/// A peer's disk heartbeat as the shell read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskRead {
    pub peer: NodeId,
    /// 0: never written, or unreadable.
    pub generation: u64,
    /// Its agent's last write before a planned restart.
    pub restarting: bool,
    /// What it serves, with the epochs (a new opening's epoch is above every one seen).
    pub serving: Vec<(ResId, u64)>,
    /// Its LAN link is up, as it wrote.
    pub lan_up: bool,
    /// The newest of this node's fence orders it obeyed (0: none).
    pub obeyed: u64,
    /// Its standing fence order for this node, from its message slot (`pill`).
    pub order: Option<u64>,
}

/// When the shell's reads of one round began and ended (this node's clock). A generation
/// first seen is dated by the end (it was written by then at the latest); one found
/// unchanged, by the beginning (it had not changed by then at the earliest): a stall of
/// the heartbeat loop between the reads and their handling changes neither.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadTimes {
    pub began: Duration,
    pub ended: Duration,
}

impl Core {
    /// The shell read the area at `times`, handled at `now`: each peer's disk heartbeat
    /// generation (0: never written) and whether it says its agent stopped for a restart.
    /// Peers not listed (their slot could not be read) keep what was read before, and go
    /// stale for nobody: this node cannot tell.
    pub fn handle_disk(&mut self, now: Duration, times: ReadTimes, read: &[DiskRead]) {
        let now = self.clock(now);
        let Some(timeout) = self.cfg.disk_timeout else {
            return;
        };
        let mut stale = false;
        let grace = self.cfg.restart_grace;
        let fit_before = self.ordered_off();
        for r in read {
            let (p, gen, restarting) = (r.peer, r.generation, r.restarting);
            if p == self.cfg.me || p >= self.peers.len() {
                continue;
            }
            for &(res, epoch) in &r.serving {
                if let Some(x) = self.res.get_mut(res) {
                    x.max_epoch = x.max_epoch.max(epoch);
                }
            }
            let peer = &mut self.peers[p];
            peer.disk_serving = r.serving.iter().map(|&(res, _)| res).collect();
            peer.disk_restarting = restarting;
            peer.disk_read_at = Some(times.began);
            if peer.disk_moved_at.is_none() || gen != peer.disk_gen {
                // Moving (not merely found at start): it writes a disk heartbeat, and so
                // bounds its lease by it (`lease`).
                peer.disk_moving |= peer.disk_moved_at.is_some() && gen > peer.disk_gen;
                peer.disk_gen = gen;
                peer.disk_moved_at = Some(times.ended);
            } else if peer.disk_held
                && times.began
                    >= peer.disk_moved_at.unwrap_or(times.began)
                        + timeout
                        + grace * restarting as u32
            {
                peer.disk_held = false;
                self.event(Event::DiskStale { peer: p });
                stale = true;
            }
            // An order stands while its sender writes: a dead sender's lapses with it.
            let order = r.order.filter(|_| self.disk_fresh(p));
            stale |= self.disk_orders(p, r.lan_up, r.obeyed, order);
        }
        if self.ordered_off() != fit_before {
            self.refit(now);
        }
        if stale {
            self.decide(now);
        }
    }

    /// This node's own disk heartbeat write, started at `started`, succeeded (reported at
    /// `now`, after it ended), or failed with `error`. While a peer is dead, this node's
    /// lease extends only the storage timeout past its last write (`lease`).
    pub fn handle_storage(&mut self, now: Duration, started: Duration, ok: bool, error: &str) {
        let now = self.clock(now);
        if self.cfg.disk_timeout.is_none() {
            return;
        }
        if ok && self.disk_lease_runs(now) {
            self.disk_written_at = Some(self.disk_written_at.map_or(started, |w| w.max(started)));
        }
        if !ok {
            self.revoke_pill_proofs();
        }
        if ok == self.storage_ok {
            return;
        }
        self.storage_ok = ok;
        self.event(Event::Storage {
            lost: !ok,
            error: error.to_string(),
        });
        self.refit(now);
    }

    /// May a write that ended by `now` extend this node's lease (a stopping agent's last one
    /// included)? Only if it was on the
    /// device before the lease its last write gave ran out: a peer reads a generation as
    /// stale no sooner than that (it saw the previous one no earlier than it was written).
    /// A node that stalled for longer (a frozen agent, a hung storage) may have been judged
    /// gone by a peer that took its resources, so writing again proves nothing until every
    /// peer is heard again and echoes this node (what they serve now came with that). A
    /// starting agent's first write may: it opens nothing it does not prove free first.
    pub fn disk_lease_runs(&self, now: Duration) -> bool {
        let (Some(timeout), Some(w)) = (self.cfg.disk_timeout, self.disk_written_at) else {
            return true;
        };
        if now <= w + super::lease::disk_span(timeout) {
            return true;
        }
        let span = self.lease_span();
        self.others().all(|p| {
            let peer = &self.peers[p];
            peer.alive && Duration::from_micros(peer.acked_us) + span >= now
        })
    }

    /// Can this node read peer `p`'s slot (a read within the timeout)?
    fn disk_readable(&self, p: NodeId) -> bool {
        match (self.cfg.disk_timeout, self.peers[p].disk_read_at) {
            (Some(timeout), Some(read)) => self.fed < read + timeout,
            _ => false,
        }
    }

    /// Is peer `p` still writing its disk heartbeat, as far as this node can tell?
    fn disk_fresh(&self, p: NodeId) -> bool {
        let (Some(timeout), Some(read)) = (self.cfg.disk_timeout, self.peers[p].disk_read_at)
        else {
            return false;
        };
        let peer = &self.peers[p];
        // A planned restart's last write: its lease runs over the restart grace.
        let grace = self.cfg.restart_grace * peer.disk_restarting as u32;
        peer.disk_moved_at
            .is_none_or(|moved| read < moved + timeout + grace)
    }

    /// Dead peer `p`, seen writing a disk heartbeat, stopped for the timeout (read after
    /// read): it stopped serving too (`lease`).
    pub(super) fn disk_proves_gone(&self, p: NodeId) -> bool {
        self.disk_readable(p) && self.peers[p].disk_moving && !self.disk_fresh(p)
    }

    /// Does dead peer `p`'s disk heartbeat hold its resources back: it still writes, so it is
    /// alive behind a partition? Not once its kernel said its agent exited (its gates closed
    /// then) or it was fenced; nor while this node cannot read the peer's slot (it cannot
    /// tell: only its kernel's exit notice or a fence proves it gone then). Said once.
    pub(super) fn disk_holds(&mut self, p: NodeId) -> bool {
        let peer = &self.peers[p];
        if peer.kernel_closed
            || peer.fence == FenceState::Fenced
            || !self.disk_readable(p)
            || !self.disk_fresh(p)
        {
            return false;
        }
        if !peer.disk_held {
            self.peers[p].disk_held = true;
            self.event(Event::DiskAlive { peer: p });
        }
        true
    }

    /// Peer `p`'s disk heartbeat generation and whether it is fresh (for `status`).
    pub fn peer_disk(&self, p: NodeId) -> Option<(u64, bool)> {
        self.cfg.disk_timeout?;
        Some((self.peers[p].disk_gen, self.disk_fresh(p)))
    }

    /// Whether this node writes its disk heartbeat (None: no storage).
    pub fn storage_ok(&self) -> Option<bool> {
        self.cfg.disk_timeout.map(|_| self.storage_ok)
    }
}
