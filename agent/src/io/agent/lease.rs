//! Renewing the gates' lease (`core::node::lease`): after every wake-up, the data plane's
//! lease is extended to what the core allows, with one store into the mapped map.
use std::time::Duration;

use super::Shell;
use crate::dataplane::heard;

impl Shell {
    /// `at` on the core's clock, as CLOCK_MONOTONIC nanoseconds (the data plane's clock).
    pub(super) fn mono_ns(&self, at: Duration) -> u64 {
        self.start_mono_ns + at.as_nanos() as u64
    }

    pub(super) fn renew_lease(&mut self) {
        let Some(reg) = self.registration.as_ref() else {
            return;
        };
        let first = self.core.lease_first();
        let Some(until) = self.core.lease_until(self.now()) else {
            return;
        };
        let until = self.mono_ns(until);
        let before = if first {
            reg.lease.replace(until)
        } else {
            reg.lease.extend(until)
        };
        // Lapsed in between (this agent stalled, or its peers did not echo it for the dead
        // time) while it served: its leased gates were closed meanwhile. Said once per lapse;
        // not at this agent's first renewal (the lease it found may have run out before it
        // was ready, with nothing open).
        let now = heard::clock_ns();
        let lapsed = before < now && until > now;
        if lapsed && !self.lease_lapsed && !first && self.core.serves_any() {
            log::warn!(
                "the gates' lease had lapsed {:?} ago (this agent stalled, or no peer echoed its heartbeats for the dead time): its open gates were closed meanwhile; renewed",
                Duration::from_nanos(now - before)
            );
        }
        self.lease_lapsed = lapsed;
    }
}
