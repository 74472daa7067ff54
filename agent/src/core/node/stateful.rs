//! Stateful resources (patent fig. 4, paragraphs 0029, 0030, 0039, 0042): an address whose
//! cold services run only where it is served, on a shared file system. It is claimed (said
//! served in the heartbeats, so no peer starts it) for longer than its gate is open:
//!
//! - takeover or failback: claimed in a new epoch (on record) -> `Acquire` (mount, start,
//!   told the epoch and whether it is a takeover) -> its cold services' checks pass -> gate
//!   open, announced;
//! - giving it up: gate closed -> `Release` (stop, unmount) -> no longer claimed: a peer may
//!   now acquire it. A failed release keeps it claimed and closed (retried): two mounts of
//!   one file system are worse than none.
//!
//! A failed acquire undoes itself (`Release`) and marks its cold services failed and
//! escalated here, so that every node ranks this one last for the address for a while.
use std::time::Duration;

use super::{Action, Core, Event, Gate, NodeId, ResId};
use crate::core::component::{Component, State};

/// How long a node whose acquire failed ranks last for the address (unless a peer claims it
/// first).
pub const ACQUIRE_RETRY: Duration = Duration::from_secs(10);

/// Where a stateful resource is here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Step {
    /// Nothing of it runs here (or it is not stateful).
    #[default]
    Idle,
    /// `Acquire` asked: mounting and starting.
    Acquiring,
    /// Started: its gate opens once its cold services' checks pass.
    Starting,
    /// Its gate is open.
    Serving,
    /// `Release` asked: stopping and unmounting, still claimed.
    Releasing,
    /// The release failed at this time: still claimed and closed; retried.
    ReleaseFailed(Duration),
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Idle => "idle",
            Step::Acquiring => "acquiring",
            Step::Starting => "starting",
            Step::Serving => "serving",
            Step::Releasing => "releasing",
            Step::ReleaseFailed(_) => "release failed",
        }
    }
}

impl Core {
    /// Does this node serve `a` (its gate open), as opposed to only claiming it?
    pub(super) fn serving(&self, a: ResId) -> bool {
        self.res[a].open && (!self.cfg.resources[a].stateful || self.res[a].step == Step::Serving)
    }

    /// Might dead peer `p` hold stateful address `a`: it claimed it, or voted to (a claim may
    /// have been on its way), as its last heartbeat or its disk heartbeat said; or it was
    /// never heard at all.
    pub(super) fn may_hold(&self, p: NodeId, a: ResId) -> bool {
        let peer = &self.peers[p];
        peer.header_sent_us == 0
            || peer.res[a].serving.is_some()
            || peer.res[a].vote == Some(p)
            || peer.disk_serving.contains(&a)
    }

    /// The cold components on stateful address `a`.
    fn cold_of(&self, a: ResId) -> Vec<usize> {
        let mut cs: Vec<usize> = self.services_of[a]
            .iter()
            .filter_map(|&s| self.cfg.resources[s].service.map(|sv| sv.component))
            .filter(|&c| self.cfg.components[c].cold)
            .collect();
        cs.dedup();
        cs
    }

    /// At start: what a previous agent left of a stateful resource this one does not serve
    /// (its gate lapsed or closed: its services may run on, its file system be mounted) is
    /// stopped and unmounted before this node is ready (it votes for nobody till then, so
    /// no peer takes it meanwhile).
    pub(super) fn startup_releases(&mut self) {
        for a in 0..self.res.len() {
            let here = self.cold_of(a).iter().any(|&c| self.cfg.components[c].here);
            if self.cfg.resources[a].stateful && !self.res[a].open && here {
                // Claimed meanwhile (in no epoch: any server's is newer), so that nobody
                // mounts it before this is done; not claimed once it is.
                let r = &mut self.res[a];
                r.open = true;
                r.unclaim = true;
                r.step = Step::Releasing;
                self.actions.push_back(Action::Release { res: a });
                self.event(Event::Releasing { res: a });
            }
        }
    }

    /// Asks the shell to mount and start what `a` needs here (claimed in its epoch).
    pub(super) fn acquire(&mut self, a: ResId) {
        let (epoch, takeover) = (self.res[a].epoch, self.res[a].taken);
        self.res[a].step = Step::Acquiring;
        // Counted from now: a service started early in the acquire has its checks reported
        // before the acquire ends, and each is reported only while it is news.
        let now = self.fed;
        for c in self.cold_of(a) {
            let policy = self.cfg.components[c].policy.clone();
            self.components[c] = Component::new(policy, now);
        }
        self.actions.push_back(Action::Acquire {
            res: a,
            epoch,
            takeover,
        });
        self.event(Event::Acquiring {
            res: a,
            epoch,
            takeover,
        });
    }

    /// The `Acquire` of `a` finished. Its cold services run now (`ok`), and are checked; or
    /// not: undone, and this node ranks last for it a while.
    pub fn handle_acquired(&mut self, now: Duration, a: ResId, ok: bool) {
        let now = self.clock(now);
        if self.res[a].step != Step::Acquiring {
            // Released meanwhile: the release undoes it.
            return;
        }
        if !ok {
            for c in self.cold_of(a) {
                let policy = self.cfg.components[c].policy.clone();
                self.components[c] = Component::gave_up(policy, now);
            }
        }
        if ok {
            self.res[a].step = Step::Starting;
            self.res[a].acquire_failed = None;
        } else {
            self.res[a].acquire_failed = Some(now);
            self.event(Event::AcquireFailed { res: a });
            self.start_release(a);
        }
        self.health_may_have_changed(now);
        self.decide(now);
    }

    /// Resource `a` was taken in epoch `e` somewhere (a journal says so): the next claim of it
    /// goes above.
    pub fn saw_epoch(&mut self, a: ResId, e: u64) {
        self.res[a].max_epoch = self.res[a].max_epoch.max(e);
    }

    /// The `Release` of `a` finished: no longer claimed (`ok`: the election lets it go now),
    /// or still claimed and closed, retried.
    pub fn handle_released(&mut self, now: Duration, a: ResId, ok: bool) {
        let now = self.clock(now);
        if self.res[a].step != Step::Releasing {
            return;
        }
        if ok {
            self.res[a].step = Step::Idle;
            let unclaim = std::mem::take(&mut self.res[a].unclaim);
            if (unclaim || self.res[a].acquire_failed.is_some()) && self.res[a].open {
                // Undone after a failed acquire: no longer claimed, so that the next try
                // (here or elsewhere) claims it afresh, in a new epoch.
                let stamp = self.next_stamp(now);
                let r = &mut self.res[a];
                r.open = false;
                r.released_us = stamp;
                self.set_gate(a, Gate::Closed);
                self.send_heartbeats(now, true);
            }
        } else {
            self.res[a].step = Step::ReleaseFailed(now);
            self.event(Event::ReleaseFailed { res: a });
        }
        self.decide(now);
    }

    /// Whether `a` may be given up now (nothing of it runs here); if not, its release is
    /// started or under way.
    pub(super) fn released_here(&mut self, a: ResId) -> bool {
        if !self.cfg.resources[a].stateful {
            return true;
        }
        match self.res[a].step {
            Step::Idle => true,
            Step::Releasing | Step::ReleaseFailed(_) => false,
            Step::Acquiring | Step::Starting | Step::Serving => {
                self.start_release(a);
                false
            }
        }
    }

    fn start_release(&mut self, a: ResId) {
        let was_open = self.res[a].step == Step::Serving;
        self.res[a].step = Step::Releasing;
        self.res[a].reannounce = None;
        if was_open {
            // Closed before anything stops: no new request reaches a stopping service.
            self.set_gate(a, Gate::Closed);
        }
        self.actions.push_back(Action::Release { res: a });
        self.event(Event::Releasing { res: a });
    }

    /// `a` stays here: if it was released but kept (the target came back here), it is
    /// acquired again, once a failed acquire's wait is over.
    pub(super) fn keep_stateful(&mut self, now: Duration, a: ResId, target: Option<NodeId>) {
        let r = &self.res[a];
        let mine = target == Some(self.cfg.me);
        if !self.cfg.resources[a].stateful || !r.open || r.step != Step::Idle || !mine {
            return;
        }
        if r.acquire_failed
            .is_some_and(|at| now < at + self.cfg.fence_retry)
        {
            return;
        }
        self.acquire(a);
    }

    /// Once every cold service of a started resource can serve, its gate opens.
    pub(super) fn stateful_progress(&mut self, now: Duration) {
        let me = self.cfg.me;
        for a in 0..self.res.len() {
            if self.res[a].step != Step::Starting
                || !self.res[a].open
                || self.votes[a] != Some(me)
                || !self.eligible(me)
            {
                continue;
            }
            let cold = self.cold_of(a);
            if cold.iter().all(|&c| self.components[c].can_serve(now)) {
                self.serve(now, a);
            }
        }
    }

    fn serve(&mut self, now: Duration, a: ResId) {
        self.res[a].step = Step::Serving;
        self.now_serving(now, a);
    }

    /// Retries of failed releases; cold services here back to Standby once nothing of them
    /// runs here and the address is claimed elsewhere (or a failed acquire's wait is over).
    pub(super) fn stateful_tick(&mut self, now: Duration) {
        self.withdraw_if_unfit();
        let mut changed = false;
        for a in 0..self.res.len() {
            if !self.cfg.resources[a].stateful {
                continue;
            }
            if let Step::ReleaseFailed(at) = self.res[a].step {
                if now >= at + self.cfg.fence_retry {
                    self.res[a].step = Step::Releasing;
                    self.actions.push_back(Action::Release { res: a });
                    self.event(Event::Releasing { res: a });
                }
                continue;
            }
            if self.res[a].open || self.res[a].step != Step::Idle {
                continue;
            }
            let cold = self.cold_of(a);
            if cold
                .iter()
                .all(|&c| self.components[c].state() == State::Standby)
            {
                continue;
            }
            // Given up because its services failed here: they stay so (this node ranks last)
            // for a while, or the address would come straight back.
            let failed = cold.iter().any(|&c| self.components[c].faulty(now));
            if failed && self.res[a].acquire_failed.is_none() {
                self.res[a].acquire_failed = Some(now);
            }
            let me = self.cfg.me;
            let elsewhere = self.current(a).is_some_and(|(n, _)| n != me);
            let waited = self.res[a]
                .acquire_failed
                .is_none_or(|at| now >= at + ACQUIRE_RETRY);
            if !(elsewhere || waited) {
                continue;
            }
            self.res[a].acquire_failed = None;
            for c in cold {
                let standby = self.components[c].state() == State::Standby;
                if self.cfg.components[c].here && !standby {
                    let policy = self.cfg.components[c].policy.clone();
                    self.components[c] = Component::standby(policy, now);
                    changed = true;
                }
            }
        }
        if changed {
            self.health_may_have_changed(now);
        }
    }

    /// When `stateful_tick` (or a paced claim) next has something to do, after `floor`.
    pub(super) fn stateful_deadline(&self, floor: Duration) -> Option<Duration> {
        let retry = self.cfg.fence_retry;
        self.res
            .iter()
            .flat_map(|r| match r.step {
                Step::ReleaseFailed(at) => vec![at + retry],
                Step::Idle => r
                    .acquire_failed
                    .map_or(vec![], |at| vec![at + retry, at + ACQUIRE_RETRY]),
                _ => vec![],
            })
            .filter(|&t| t > floor)
            .min()
    }

    /// A failed acquire here is this recent: `a` is not claimed again yet.
    pub(super) fn acquire_paced(&self, now: Duration, a: ResId) -> bool {
        self.res[a]
            .acquire_failed
            .is_some_and(|at| now < at + self.cfg.fence_retry)
    }

    // ---- read-only views for status and tests ----

    /// Where stateful resource `a` is here.
    pub fn step(&self, a: ResId) -> Step {
        self.res[a].step
    }
}
