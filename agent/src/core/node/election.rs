//! Who serves each resource: targets, votes, the safety check before opening, handovers
//! (receive, forward for a bounded time, then close), and the durable epoch before an open.
use std::time::Duration;

use super::{Action, Core, Event, FenceState, Gate, NodeId, Res, ResId, REANNOUNCE};

impl Core {
    pub(super) fn eligible(&self, n: NodeId) -> bool {
        if n == self.cfg.me {
            return self.ready && self.lan_up;
        }
        let p = &self.peers[n];
        p.alive && p.known && p.lan_up && p.ready
    }

    /// A live peer whose summaries cannot be read (its configuration differs): nothing may
    /// move while it lasts, since what it serves is unknown (invariant 7).
    pub(super) fn frozen(&self) -> bool {
        self.others()
            .any(|p| self.peers[p].alive && self.peers[p].mismatch.is_some())
    }

    /// Who serves `a` now as far as this node knows, with the epoch: the highest epoch wins
    /// if views briefly overlap (only the newest server keeps it).
    pub(super) fn current(&self, a: ResId) -> Option<(NodeId, u64)> {
        // A claim in no epoch (a starting agent releasing what its predecessor left) serves
        // nothing: nobody else opens meanwhile (`safe_to_open`), but nobody follows it.
        let stateful = self.cfg.resources[a].stateful;
        let mut best =
            (self.res[a].open && !self.res[a].unclaim).then_some((self.cfg.me, self.res[a].epoch));
        for p in self.others() {
            let peer = &self.peers[p];
            if !peer.alive || !peer.known {
                continue;
            }
            if let Some(e) = peer.res[a].serving.filter(|&e| !(stateful && e == 0)) {
                // Newer epoch first; on a tie (never expected) the lower node index.
                if best
                    .is_none_or(|(bn, be)| (e, std::cmp::Reverse(p)) > (be, std::cmp::Reverse(bn)))
                {
                    best = Some((p, e));
                }
            }
        }
        best
    }

    /// Who should serve `a`: the current server while it is fit, unless a more preferred
    /// node has been fit for the preempt delay; else the best ranked node, first in
    /// preference. Fit: eligible, and, if any eligible node's instances on `a` have not
    /// escalated, not escalated either (`rank`). While frozen, whoever serves it now, and
    /// nobody new.
    pub(super) fn target(&self, now: Duration, a: ResId) -> Option<NodeId> {
        if self.frozen() {
            return self.current(a).map(|(n, _)| n);
        }
        let pref = &self.cfg.resources[a].preference;
        let rank = |n: NodeId| self.rank(n, a, now);
        let best = pref.iter().map(|&n| rank(n)).max().unwrap_or(0);
        let floor = best.clamp(1, 2);
        let fit = |n: NodeId| rank(n) >= floor;
        // A switchover puts its node first, at once (no preempt delay) and for good (preempt
        // does not pull it back); while that node is not fit the usual order applies.
        if let Some((n, _)) = self.res[a].moved_to {
            if fit(n) {
                return Some(n);
            }
        }
        let first = pref.iter().copied().find(|&n| best > 0 && rank(n) == best);
        let Some((cur, _)) = self.current(a).filter(|(c, _)| fit(*c)) else {
            return first;
        };
        let Some(delay) = self.cfg.preempt else {
            return Some(cur);
        };
        let position = |n: NodeId| pref.iter().position(|&x| x == n).unwrap_or(usize::MAX);
        let settled = |n: NodeId| {
            n == self.cfg.me
                || self.peers[n]
                    .eligible_since
                    .is_some_and(|s| now >= s + delay)
        };
        match pref.iter().copied().find(|&n| fit(n) && settled(n)) {
            Some(b) if position(b) < position(cur) => Some(b),
            _ => Some(cur),
        }
    }

    /// May this node open `a` now? Every other node must be alive, readable and not serving
    /// it, or dead and fenced. Asks for the fences it still needs.
    pub(super) fn safe_to_open(&mut self, now: Duration, a: ResId) -> bool {
        let mut safe = true;
        let me = self.cfg.me;
        for p in self.others_vec() {
            let peer = &self.peers[p];
            if peer.alive {
                // A live peer must not serve it and must agree that this node should, knowing
                // that this node gave it up if it did (it may have taken it since), and that
                // it is fit again if it was not (a vote for this node cast while it was unfit
                // is stale: the peer may have opened on this node's own vote for it since).
                let r = &peer.res[a];
                let agrees = peer.known
                    && r.acked_us >= self.res[a].released_us
                    && r.acked_us >= self.fit_us
                    && r.serving.is_none()
                    && r.vote == Some(me);
                if !agrees {
                    safe = false;
                }
                continue;
            }
            // Still writing its disk heartbeat: alive behind a partition; it keeps them,
            // unless it cannot serve them (its LAN down): then it is ordered fenced.
            if self.disk_holds(p) {
                self.order_fence(p);
                safe = false;
                continue;
            }
            // Whichever proves it gone first: its lease, or the fence (for a stateful
            // resource, only the fence: one under way or that just failed is waited for).
            let stateful = self.cfg.resources[a].stateful;
            let fencing = stateful
                && match self.peers[p].fence {
                    FenceState::Pending => true,
                    FenceState::Failed(at) => now < at + self.cfg.fence_retry,
                    _ => false,
                };
            if !matches!(self.peers[p].fence, FenceState::Fenced | FenceState::Lapsed)
                && !fencing
                && self.lease_lapsed(now, p)
            {
                self.proven_by_lease(p);
            }
            match self.peers[p].fence {
                FenceState::Fenced => {}
                // A lease proves its gates closed, not that it stopped writing to the shared
                // storage (its services outlive its agent): a stateful resource waits for
                // the fence.
                // A peer that cannot hold it (it never claimed it, as far as this node or the
                // storage area know) needs no more than its lease.
                FenceState::Lapsed if stateful && !self.may_hold(p, a) => {}
                FenceState::Lapsed if stateful && self.cfg.fence => {
                    let retry = self.cfg.fence_retry;
                    let peer = &mut self.peers[p];
                    let start = match peer.state_fence {
                        FenceState::Pending => false,
                        FenceState::Failed(at) => now >= at + retry,
                        _ => true,
                    };
                    if start {
                        peer.state_fence = FenceState::Pending;
                        self.actions.push_back(Action::Fence { peer: p });
                        self.event(Event::FenceStarted { peer: p });
                    }
                    safe = false;
                }
                FenceState::Lapsed if stateful => {
                    if !self.peers[p].fence_wanted {
                        self.peers[p].fence_wanted = true;
                        self.event(Event::FenceRequired { peer: p, res: a });
                    }
                    safe = false;
                }
                FenceState::Lapsed => {}
                FenceState::Pending | FenceState::Waiting => safe = false,
                FenceState::Failed(at) if now < at + self.cfg.fence_retry => safe = false,
                FenceState::None | FenceState::Failed(_) if self.cfg.fence => {
                    self.peers[p].fence = FenceState::Pending;
                    self.actions.push_back(Action::Fence { peer: p });
                    self.event(Event::FenceStarted { peer: p });
                    safe = false;
                }
                FenceState::None | FenceState::Failed(_) => {
                    // No fence command: only its lease can prove it gone (a peer that does not
                    // lease its gates, of an older release, cannot be proven gone at all).
                    self.peers[p].fence = FenceState::Waiting;
                    let leased = self.peers[p].leased;
                    self.event(Event::LeaseWait { peer: p, leased });
                    safe = false;
                }
            }
        }
        safe
    }

    /// Does live peer `t` vote to serve `a` itself (so its gate receives what is forwarded)?
    fn votes_for_itself(&self, t: NodeId, a: ResId) -> bool {
        self.peers[t].known && self.peers[t].res[a].vote == Some(t)
    }

    /// Opens `a` in `epoch` (on record by now) and announces it. A stateful resource is
    /// claimed in it and acquired first: its gate opens once its services run (`stateful`).
    pub(super) fn open(&mut self, now: Duration, a: ResId, epoch: u64) {
        // Taken from a peer that did not hand it over (a stateful resource's services are
        // started told so: a recovery, not a cold start).
        let taken = self.res[a].receiving.is_none();
        self.res[a] = Res {
            open: true,
            epoch,
            max_epoch: epoch,
            forwarding: None,
            receiving: None,
            opening: None,
            reannounce: None,
            // The heartbeat that says so leaves next (the caller sends it), stamped with this.
            opened_us: self.next_stamp(now),
            taken,
            ..self.res[a]
        };
        if self.cfg.resources[a].stateful {
            // Not receiving any more: nothing reaches a service that is not running yet.
            self.set_gate(a, Gate::Closed);
            self.acquire(a);
        } else {
            self.now_serving(now, a);
        }
    }

    /// `a`'s gate opens here: announced now and again over the forwarding window.
    pub(super) fn now_serving(&mut self, now: Duration, a: ResId) {
        let r = &mut self.res[a];
        r.reannounce = Some((now + self.cfg.forward_for / (REANNOUNCE + 1), REANNOUNCE));
        let epoch = r.epoch;
        self.set_gate(a, Gate::Open);
        self.actions.push_back(Action::Announce { res: a });
        self.event(Event::Takeover { res: a, epoch });
    }

    /// Opens and closes this node's gates to match the targets.
    pub(super) fn decide(&mut self, now: Duration) {
        for p in self.others_vec() {
            let e = self.eligible(p);
            let peer = &mut self.peers[p];
            match (e, peer.eligible_since) {
                (true, None) => peer.eligible_since = Some(now),
                (false, Some(_)) => peer.eligible_since = None,
                _ => {}
            }
        }
        let me = self.cfg.me;
        let mut changed = false;
        let mut record = Vec::new();
        let may_record = !self.persisting
            && self
                .persist_failed
                .is_none_or(|at| now >= at + self.cfg.fence_retry);
        for a in 0..self.res.len() {
            if self.is_service(a) {
                // Derived below, not elected.
                continue;
            }
            // Before it is ready a node has no opinion and opens nothing.
            let target = if self.ready {
                self.target(now, a)
            } else {
                None
            };
            if self.votes[a] != target {
                self.votes[a] = target;
                // The heartbeat that says so leaves now (`changed`), stamped with this.
                self.res[a].voted_us = self.next_stamp(now);
                changed = true;
            }
            if self.res[a].open {
                changed |= self.keep_or_release(now, a, target);
                continue;
            }
            // The peer it was handed to is gone or no longer the one, or the window is over:
            // stop forwarding (opening it here, if that is next, waits for the next decision).
            let stopped = self.res[a].forwarding.filter(|&t| {
                target != Some(t)
                    || !self.peers[t].alive
                    || !self.lan_link
                    || now >= self.res[a].forward_until
            });
            if let Some(to) = stopped {
                self.res[a].forwarding = None;
                if now >= self.res[a].forward_until {
                    self.event(Event::ForwardEnded { res: a, to });
                }
            }
            if self.res[a].forwarding.is_some() || self.res[a].opening.is_some() {
                // Still handed over to the right peer, or about to open.
                continue;
            }
            if stopped.is_none()
                && target == Some(me)
                && !self.acquire_paced(now, a)
                && self.safe_to_open(now, a)
            {
                if may_record {
                    let epoch = self.res[a].max_epoch.max(self.res[a].epoch) + 1;
                    self.res[a].opening = Some(epoch);
                    record.push((a, epoch));
                }
                continue;
            }
            // The live peer that serves it is about to hand it over (it votes for this node,
            // as this node does): receive what it forwards, and say so at once (the
            // heartbeat that hears its vote lets it go). Anything else: closed.
            let from = self.current(a).map(|(c, _)| c).filter(|&c| {
                target == Some(me)
                    && c != me
                    && self.peers[c].alive
                    && self.lan_up
                    && self.peers[c].res[a].vote == Some(me)
            });
            if self.res[a].receiving != from || stopped.is_some() {
                self.res[a].receiving = from;
                self.set_gate(a, from.map_or(Gate::Closed, Gate::Receive));
                changed = true;
            }
        }
        if !record.is_empty() {
            self.persisting = true;
            self.actions.push_back(Action::Persist { epochs: record });
        }
        // A stateful resource still claimed and still its to serve: open once it runs.
        self.stateful_progress(now);
        self.derive_services(now);
        if changed {
            self.send_heartbeats(now, true);
        }
    }

    /// For an open resource: keep it, or let it go (to a live peer: forward; else close).
    /// True if it changed.
    fn keep_or_release(&mut self, now: Duration, a: ResId, target: Option<NodeId>) -> bool {
        let me = self.cfg.me;
        // A peer serving it in a newer epoch wins (e.g. after a partition); otherwise keep it
        // until ready (an agent restart keeps the gates it finds), then follow the target
        // (link down, preempt).
        let newer_elsewhere = self.current(a).is_some_and(|(c, _)| c != me);
        // To a live peer over a working LAN link (failback, switchover, this node's storage
        // lost): forward what still comes here, for a while. Otherwise nobody can take it:
        // closed.
        let to = target.filter(|&t| t != me && self.peers[t].alive && self.lan_link);
        // A handover waits until the new server, having heard this node's vote for it, votes
        // for itself: its gate then receives what this one forwards. Until then this node
        // goes on serving.
        let hold = !newer_elsewhere
            && to.is_some_and(|t| {
                !(self.votes_for_itself(t, a)
                    && self.peers[t].res[a].acked_us >= self.res[a].voted_us)
            });
        if !((newer_elsewhere || (self.ready && target != Some(me))) && !hold) {
            self.keep_stateful(now, a, target);
            return false;
        }
        // A stateful resource's services stop and its file systems are unmounted first; it
        // stays claimed meanwhile, so that no peer starts them.
        if !self.released_here(a) {
            return false;
        }
        let stamp = self.next_stamp(now);
        let r = &mut self.res[a];
        r.open = false;
        r.reannounce = None;
        // The heartbeat that says so leaves now (the caller's `changed`), stamped with this.
        r.released_us = stamp;
        r.forwarding = to;
        r.forward_until = now + self.cfg.forward_for;
        match to {
            Some(to) => {
                self.set_gate(a, Gate::Forward(to));
                self.event(Event::Handover { res: a, to });
            }
            None => self.set_gate(a, Gate::Closed),
        }
        true
    }
}
