//! Gates are leases (docs/design.md invariant 1): what this node may renew, and when a dead
//! peer's lease has lapsed for sure, so that its resources can be opened with no fence.
//!
//! This node's lease: the data plane serves its leased gates until `lease_until`. It extends
//! only as far as the peers know this node to be alive: to `D` (the dead time) past the newest
//! of this node's heartbeats that every live peer has echoed. A peer `p` that heard a heartbeat
//! stamped `s` did so at its own `r >= s`; it takes this node's resources only once it has heard
//! nothing for `D` and its lease has lapsed for sure, at `r + D` plus a margin for clock-rate
//! error. So a frozen or hung agent's gates close by themselves within `D` of the last heartbeat
//! a peer heard, and an agent that wakes up late cannot extend past what the peers counted
//! (invariant 3: a stale agent never reopens a gate it lost). The kernel zeroes the lease when
//! the agent dies unannounced: its exit notice then proves the gates closed at once.
//!
//! A peer this node calls dead bounds nothing by its echoes: behind a partition of every
//! network path it may be alive, and this node renews on. So silence alone never proves a
//! peer's lease lapsed; one of these must come with it:
//! - its kernel's exit notice (its agent died; the kernel zeroed the lease first);
//! - its kernel answering probes while its agent stays silent, for `D` and an interval past
//!   the first answer: both directions of the LAN work, so a running agent would have heard
//!   this node and been bounded by its echoes again, and would have been heard; it is stuck,
//!   and its lease ran out from its last renewal;
//! - its disk heartbeat stale (`disk`), from a peer seen writing one: a node that shares a
//!   storage area bounds its lease by its own last disk write plus the storage timeout (less
//!   the clock margin) towards a peer that is dead to it, and towards a live one by that or
//!   the echoes, whichever is later (a lost echo must not close the gates while the node
//!   notices a partition); so a peer that stopped writing for the timeout has stopped serving
//!   too. With a storage area only the disk proves it (its kernel's answers do not: its lease
//!   may run on its disk heartbeat), read by this node, from a peer it saw writing.
//!
//! Without any of these (every path cut, no storage, the peer's kernel silent: a crashed host
//! and a partition look alike) only a fence proves it gone.
//!
//! Margin: the two monotonic clocks may run at different rates. Crystal oscillators are within
//! 100 ppm and NTP slews a clock by at most 500 ppm; this core assumes at most 1000 ppm between
//! any two nodes' clocks (`CLOCK_RATE_PPM`), plus `LEASE_SLACK` for stamp rounding (stamps are
//! microseconds) and the shell's conversion between its clocks.
use std::time::Duration;

use super::{Core, Event, FenceState, NodeId};

/// The largest rate difference assumed between two nodes' monotonic clocks, parts per million.
pub const CLOCK_RATE_PPM: u32 = 1000;
/// Added to every lapse bound: microsecond stamps and the shell's clock conversions.
pub const LEASE_SLACK: Duration = Duration::from_micros(100);

/// When a lease of `span` taken no later than `from` (this node's clock) has lapsed for sure.
pub fn lapsed_by(from: Duration, span: Duration) -> Duration {
    from + span + span * CLOCK_RATE_PPM / 1_000_000 + LEASE_SLACK
}

/// How far past its last disk write (started, on its clock) a node whose peer is dead may
/// serve: a peer judges the heartbeat stale no sooner than the storage timeout after it read
/// that write, on its own clock; both clocks' rates may differ from true time.
pub fn disk_span(timeout: Duration) -> Duration {
    timeout.saturating_sub(timeout * 2 * CLOCK_RATE_PPM / 1_000_000 + LEASE_SLACK)
}

impl Core {
    /// The lease's length: the dead time.
    pub fn lease_span(&self) -> Duration {
        self.cfg.dead_after(self.cfg.misses)
    }

    /// Until when (this node's clock) the data plane may serve this node's leased gates, as
    /// far as the peers allow; `None` if gates are not leased or nothing may be renewed yet
    /// (before the node is ready, the lease a previous agent left runs on). The shell only
    /// ever extends the data plane's lease to this, never shortens it.
    pub fn lease_until(&mut self, now: Duration) -> Option<Duration> {
        // A stall just before this renewal counts (the loop may have frozen anywhere).
        let now = self.clock(now);
        self.awake(now);
        if !self.cfg.lease || !self.ready || self.restarting {
            return None;
        }
        let span = self.lease_span();
        let mut until = now + span;
        // What was granted ran out while this agent stalled: a peer may have proven it gone
        // (its kernel answered while it stayed silent) and taken its resources meanwhile. It
        // renews only as its peers allow (each heard again, echoing it, what they serve now
        // with it), never alone. (A lease that ran out while it ran, because the echoes
        // stopped before it counted a cut-off peer dead, gave no peer such a proof.)
        let lapsed = self.stalled && self.lease_granted.is_some_and(|g| now > g);
        let disk = self.cfg.disk_timeout.map(|timeout| {
            self.disk_written_at
                .map_or(Duration::ZERO, |w| w + disk_span(timeout))
        });
        for p in self.others() {
            let peer = &self.peers[p];
            // A peer waiting for its agent's restart takes nothing meanwhile.
            if peer.restart_until.is_some() {
                continue;
            }
            let echoed = Duration::from_micros(peer.acked_us) + span;
            until = until.min(match (peer.alive, disk) {
                (true, None) => echoed,
                // It judges this node by the disk heartbeat once it stops hearing it: while
                // that is written, a lost echo does not close the gates (no gap while it
                // notices a partition).
                (true, Some(disk)) => echoed.max(disk),
                (false, Some(disk)) => disk,
                // Dead to this node and no storage: it may be alive behind a partition, and
                // it cannot take anything without a proof that does not rest on this lease.
                (false, None) if lapsed => Duration::ZERO,
                (false, None) => continue,
            });
        }
        self.lease_granted = Some(self.lease_granted.map_or(until, |g| g.max(until)));
        if self.lease_granted.is_some_and(|g| g > now) {
            self.stalled = false;
        }
        Some(until)
    }

    /// No lease was given yet by this agent: its first replaces whatever the data plane
    /// holds (a stopping agent's extension over its restart ends with the restart; a lease
    /// that only shortens is always safe), the later ones only extend it.
    pub fn lease_first(&self) -> bool {
        self.lease_granted.is_none()
    }

    /// Notes what a heartbeat of `p`, taken at `now`, says of its lease: whether its gates are
    /// leased, and the latest time they can still serve by it.
    pub(super) fn take_lease(&mut self, now: Duration, p: NodeId, leased: bool, restarting: bool) {
        let span = if restarting {
            // A stopping agent extends its lease over its restart.
            self.lease_span().max(self.cfg.restart_grace)
        } else {
            self.lease_span()
        };
        let peer = &mut self.peers[p];
        peer.leased = leased;
        let by = lapsed_by(now, span);
        peer.lapsed_by = Some(peer.lapsed_by.map_or(by, |b| b.max(by)));
    }

    /// Peer `p`'s kernel said its agent died unannounced: its leased gates closed then.
    pub(super) fn take_exit_notice_lease(&mut self, p: NodeId) {
        if self.peers[p].leased {
            self.peers[p].kernel_closed = true;
        }
    }

    /// Has dead peer `p`'s lease lapsed for sure (or its kernel closed its gates)? Silence
    /// alone is not enough: its kernel's word, or its stale disk heartbeat, must say that it
    /// is not merely cut off (see the module's comment).
    pub(super) fn lease_lapsed(&self, now: Duration, p: NodeId) -> bool {
        let peer = &self.peers[p];
        if !peer.leased {
            return false;
        }
        if peer.kernel_closed {
            return true;
        }
        // With a storage area, every node bounds its lease by its disk heartbeat too: only
        // the disk can say (read by this node: a peer it never saw writing proves nothing).
        peer.lapsed_by.is_some_and(|t| now >= t)
            && if self.cfg.disk_timeout.is_some() {
                self.disk_proves_gone(p)
            } else {
                self.stuck_by(p).is_some_and(|t| now >= t)
            }
    }

    /// When dead peer `p`'s kernel has answered for long enough that its agent is stuck, not
    /// cut off: `D` and an interval past its first answer, plus the clock margin.
    fn stuck_by(&self, p: NodeId) -> Option<Duration> {
        let span = self.lease_span() + self.cfg.interval;
        self.peers[p].kernel_since.map(|k| lapsed_by(k, span))
    }

    /// A dead peer not yet proven gone (nor being fenced to success): probes to its kernel
    /// may prove its agent stuck.
    pub(super) fn awaits_proof(&self, p: NodeId) -> bool {
        let peer = &self.peers[p];
        peer.leased
            && !peer.kernel_closed
            && self.cfg.disk_timeout.is_none()
            && matches!(
                peer.fence,
                FenceState::Waiting | FenceState::Pending | FenceState::Failed(_)
            )
    }

    /// When dead peer `p`'s lease will have lapsed for sure, if it is leased and not yet and
    /// the time is known (the disk's judgement comes with its reads).
    pub(super) fn lease_deadline(&self, p: NodeId) -> Option<Duration> {
        let peer = &self.peers[p];
        if !peer.leased || peer.alive || peer.kernel_closed || peer.fence == FenceState::Fenced {
            return None;
        }
        let by = peer.lapsed_by?;
        if self.cfg.disk_timeout.is_some() {
            return self.disk_proves_gone(p).then_some(by);
        }
        self.stuck_by(p).map(|stuck| by.max(stuck))
    }

    /// Dead peer `p` is proven gone by its lease: recorded (and said) once.
    pub(super) fn proven_by_lease(&mut self, p: NodeId) {
        let by_kernel = self.peers[p].kernel_closed;
        self.peers[p].fence = FenceState::Lapsed;
        self.event(Event::LeaseLapsed { peer: p, by_kernel });
    }
}
