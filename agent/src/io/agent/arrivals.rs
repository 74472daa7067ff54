//! What one wake-up read: datagrams from the gates' ring and from the sockets, each with when
//! it arrived on the core's clock, handed to the core together (it orders them).
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant, SystemTime},
};

use super::Shell;
use crate::{
    core::{node::Arrival, wire::Rejected},
    dataplane::heard,
    io::udp::{self, RecvBufs},
};

/// One wake-up's datagrams, from every socket.
#[derive(Default)]
pub(super) struct Arrivals {
    pub list: Vec<Arrival<SocketAddr>>,
    /// Their bytes, one after another (kept between wake-ups: no allocation once warm).
    pub bytes: Vec<u8>,
}

impl Arrivals {
    pub fn clear(&mut self) {
        self.list.clear();
        self.bytes.clear();
    }

    pub fn push(&mut self, at: Duration, path: usize, from: SocketAddr, bytes: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        self.list.push(Arrival {
            at,
            path,
            bytes: start..self.bytes.len(),
            tag: from,
        });
    }
}

/// One wake-up's time on the core's clock and on the clocks arrival stamps use.
pub(super) struct Clocks {
    pub now: Duration,
    pub wall: SystemTime,
    /// CLOCK_MONOTONIC, the eBPF programs' `bpf_ktime_get_ns`.
    pub mono_ns: u64,
}

impl Clocks {
    pub fn read(now: Duration) -> Self {
        Clocks {
            now,
            wall: SystemTime::now(),
            mono_ns: heard::clock_ns(),
        }
    }
}

impl Shell {
    /// Reads the gates' ring into `arrived`.
    pub(super) fn drain_ring(&mut self, arrived: &mut Arrivals, clocks: &Clocks) {
        let Some(heard) = self.heard.as_mut() else {
            return;
        };
        let listen = &self.cfg.node.listen;
        let received = &mut self.received;
        heard.drain(|d| {
            received.gate += 1;
            // A heartbeat to another address than a path's is not for this agent.
            if let Some(path) = listen.iter().position(|l| l.ip() == d.to) {
                let ago = Duration::from_nanos(clocks.mono_ns.saturating_sub(d.stamp_ns));
                arrived.push(clocks.now.saturating_sub(ago), path, d.from, d.bytes);
            }
        });
    }

    /// Reads what waits on one path's listen or wake socket into `arrived`.
    pub(super) fn collect(
        &mut self,
        bufs: &mut RecvBufs,
        arrived: &mut Arrivals,
        path: usize,
        woke: bool,
        clocks: &Clocks,
    ) {
        let sock = if woke {
            &self.wake[path]
        } else {
            &self.listen[path]
        };
        let got = udp::recv_all(sock, bufs, |bytes, from, stamp| {
            let ago = stamp.and_then(|t| clocks.wall.duration_since(t).ok());
            let at = ago.map_or(clocks.now, |a| clocks.now.saturating_sub(a));
            arrived.push(at, path, from, bytes);
        });
        // A socket error (reading it clears it) is a lost datagram, not a reason to stop.
        match got {
            Ok(n) => self.received.socket += n as u64,
            Err(e) => log::warn!("reading path {path}: {e}"),
        }
    }

    /// Hands the core what was read; learns each peer's wake socket from the source of its
    /// periodic heartbeats (any other port than the one it listens on).
    pub(super) fn feed(&mut self, arrived: &mut Arrivals) {
        let now = self.now();
        let (peer_paths, peer_wake, refused) =
            (&self.peer_paths, &mut self.peer_wake, &mut self.refused);
        self.core
            .handle_arrivals(now, &mut arrived.list, &arrived.bytes, |a, r| match r {
                Ok(()) => {
                    if let Some(p) = peer_paths.iter().position(|x| {
                        x.get(a.path)
                            .is_some_and(|x| x.ip() == a.tag.ip() && x.port() != a.tag.port())
                    }) {
                        peer_wake[p][a.path] = Some(a.tag);
                    }
                }
                // Normal for a moment after either agent starts: counted only.
                Err(Rejected::Unaddressed) => {}
                Err(r) => refused.note(r.as_str(), a.tag),
            });
    }
}

/// Refused datagrams, logged at most once a second (a flood must not flood the log too).
#[derive(Default)]
pub(super) struct RefusedLog {
    since: Option<Instant>,
    counts: BTreeMap<&'static str, u64>,
}

impl RefusedLog {
    fn note(&mut self, why: &'static str, from: SocketAddr) {
        *self.counts.entry(why).or_default() += 1;
        let now = Instant::now();
        if self
            .since
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        let list: Vec<String> = self
            .counts
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        log::warn!(
            "refused datagrams (changed nothing): {} (last from {from}); see `takeover status`",
            list.join(", ")
        );
        self.counts.clear();
        self.since = Some(now);
    }
}
