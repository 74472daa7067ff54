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
//! Margin: the two monotonic clocks may run at different rates. Crystal oscillators are within
//! 100 ppm and NTP slews a clock by at most 500 ppm; this core assumes at most 1000 ppm between
//! any two nodes' clocks (`CLOCK_RATE_PPM`), plus `LEASE_SLACK` for stamp rounding (stamps are
//! microseconds) and the shell's conversion between its clocks.
//!
//! Limit: with every peer dead to it (a partition of every network path, no shared storage
//! yet), a node renews on its own; the peer on the other side then needs a fence to be sure.
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

impl Core {
    /// The lease's length: the dead time.
    pub fn lease_span(&self) -> Duration {
        self.cfg.dead_after(self.cfg.misses)
    }

    /// Until when (this node's clock) the data plane may serve this node's leased gates, as
    /// far as the peers allow; `None` if gates are not leased or nothing may be renewed yet
    /// (before the node is ready, the lease a previous agent left runs on). The shell only
    /// ever extends the data plane's lease to this, never shortens it.
    pub fn lease_until(&self, now: Duration) -> Option<Duration> {
        if !self.cfg.lease || !self.ready || self.restarting {
            return None;
        }
        let span = self.lease_span();
        let mut until = now + span;
        for p in self.others() {
            let peer = &self.peers[p];
            // A peer waiting for its agent's restart takes nothing meanwhile; a dead one
            // cannot take anything before it is heard again (startup waits to hear).
            if !peer.alive || peer.restart_until.is_some() {
                continue;
            }
            until = until.min(Duration::from_micros(peer.acked_us) + span);
        }
        Some(until)
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

    /// Has dead peer `p`'s lease lapsed for sure (or its kernel closed its gates)?
    pub(super) fn lease_lapsed(&self, now: Duration, p: NodeId) -> bool {
        let peer = &self.peers[p];
        peer.leased && (peer.kernel_closed || peer.lapsed_by.is_some_and(|t| now >= t))
    }

    /// When dead peer `p`'s lease will have lapsed for sure, if it is leased and not yet.
    pub(super) fn lease_deadline(&self, p: NodeId) -> Option<Duration> {
        let peer = &self.peers[p];
        (peer.leased && !peer.alive && !peer.kernel_closed && peer.fence != FenceState::Fenced)
            .then_some(peer.lapsed_by)
            .flatten()
    }

    /// Dead peer `p` is proven gone by its lease: recorded (and said) once.
    pub(super) fn proven_by_lease(&mut self, p: NodeId) {
        let by_kernel = self.peers[p].kernel_closed;
        self.peers[p].fence = FenceState::Lapsed;
        self.event(Event::LeaseLapsed { peer: p, by_kernel });
    }
}
