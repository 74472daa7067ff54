//! `takeover run`: the shell around the core. Its main thread owns the sockets, the clock and
//! the gate table, and runs the heartbeat loop; a tokio worker does netlink, the control
//! socket, signals and the neighbour table, and reports through the inbox. The core decides.
//!
//! By job: `startup` (checks, then changes undone on failure), `arrivals` (what a wake-up
//! read), `perform` (what the core decided), `fence`, `epochs` (durable), `translate` (the
//! configuration as the core sees it), `audit` (the gate table against the core).
mod arrivals;
mod audit;
mod disk;
mod disk_worker;
mod epochs;
mod fence;
mod lease;
mod perform;
mod services;
mod startup;
mod stateful;
mod translate;

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd, RawFd},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

pub use fence::fence_argv;
pub use translate::core_config;

use self::{arrivals::Arrivals, epochs::Epochs, fence::Fencing};
use super::{
    announce, control,
    inbox::{self, Inbox},
    netlink,
    udp::{self, RecvBufs},
};
use crate::{
    config::Config,
    core::{
        node::{Action, Core, CoreConfig, NodeId},
        wire::MAX_MESSAGE,
    },
    dataplane::{heard::HeardRing, liveness::Registration, Gates, Target},
    sys::iface::Iface,
};

/// Real-time priority and locked memory for the one thread that runs the agent, so that a
/// busy machine does not delay heartbeats. Failures are reported, not fatal. For the calling
/// thread only (and threads it starts later).
fn realtime() {
    unsafe {
        if libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) != 0 {
            log::warn!("mlockall: {}", std::io::Error::last_os_error());
        }
    }
    fifo();
}

/// SCHED_FIFO for the calling thread.
fn fifo() {
    let param = libc::sched_param {
        sched_priority: RT_PRIORITY,
    };
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        log::warn!("SCHED_FIFO: {}", std::io::Error::last_os_error());
    }
}

enum Input {
    Link(netlink::LinkEvent),
    LinksStopped,
    Control(control::Request),
    /// The peers' MACs, read from the neighbour tables.
    PeerMacs(PeerMacs),
    /// Time to compare the gate table with what the core holds.
    Audit,
    /// A service's instance: a check's result, its exit, a restart done.
    Service(services::Report),
    /// A round of the disk heartbeat's thread.
    Disk(disk::Round),
    /// The disk thread recorded (or could not) the epochs of a `Persist`.
    DiskClaimed(Result<(), String>),
    /// A stateful resource's `Acquire` finished (`seen_epoch`: the journals showed it taken
    /// elsewhere in this epoch or a later one).
    Acquired {
        res: usize,
        result: Result<(), String>,
        seen_epoch: Option<u64>,
    },
    /// A stateful resource's `Release` finished.
    Released {
        res: usize,
        result: Result<(), String>,
    },
    Stop,
}

/// Per peer, its MAC on the LAN and on the dedicated line (`None`: not known).
#[derive(Clone, Debug, Default)]
struct PeerMacs {
    lan: Vec<Option<[u8; 6]>>,
    line: Vec<Option<[u8; 6]>>,
}

/// This node's end of the dedicated line.
struct Line {
    index: u32,
    mac: [u8; 6],
}

/// Real-time priority of the agent's threads and of the heartbeat interfaces' NAPI threads.
const RT_PRIORITY: i32 = 50;

pub fn run(cfg: Config, key: Vec<u8>, realtime_priority: bool) -> Result<()> {
    // Nothing this process inherited (a lock its starter holds, say) goes on to what it
    // runs: services that outlive it, OCF agents, checks, fence commands. Its own
    // descriptors are close-on-exec already.
    if let Err(e) = crate::sys::inherit_nothing() {
        log::warn!("close_range: {e}: inherited descriptors pass on to services");
    }
    // The heartbeats have this thread to themselves, in a loop of plain system calls
    // (`io::udp`). What is slow or rare (netlink, the control socket, signals, the fence,
    // announcements) runs on one runtime thread, at the same real-time priority.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .on_thread_start(move || {
            if realtime_priority {
                fifo();
            }
        })
        .enable_all()
        .build()?;
    let (mailbox, inbox) = inbox::inbox().context("creating an eventfd")?;
    // Set-up (loading and verifying the data plane, netlink) at normal priority: at real-time
    // priority it would hold up the host's services for tens of milliseconds.
    let mut shell = rt.block_on(Shell::start(cfg, key, realtime_priority, mailbox.clone()))?;
    rt.spawn(async move {
        let mut every = tokio::time::interval(audit::EVERY);
        every.tick().await;
        loop {
            every.tick().await;
            if !mailbox.send(Input::Audit) {
                return;
            }
        }
    });
    if realtime_priority {
        realtime();
    }
    shell.run(&rt, inbox)
}

/// What the heartbeat loop owns.
struct Shell {
    cfg: Config,
    core: Core,
    core_cfg: CoreConfig,
    peer_paths: Vec<Vec<SocketAddr>>,
    /// The data plane's entries of each resource (a service has one per port).
    targets: Vec<Vec<Target>>,
    gates: Gates,
    epochs: Epochs,
    lan: Iface,
    mac: [u8; 6],
    /// The dedicated line's interface, and the peers it reaches: its carrier is a hint for
    /// the core about each of them.
    dedicated: Option<u32>,
    line_peers: Vec<NodeId>,
    /// Per path, the configured address: the peers' periodic heartbeats arrive here, read at
    /// every wake-up (at least one per interval: this node's own tick), stamped on arrival.
    /// While the gates take them into `heard`, only what they leave (a full ring, a path
    /// without a gate) comes here, and the loop sleeps on these sockets too.
    listen: Vec<UdpSocket>,
    /// The peers' periodic heartbeats as the gates took them off the wire (kernel-assisted
    /// liveness registered): read from shared memory at every wake-up.
    heard: Option<HeardRing>,
    /// Datagrams read from the ring and from sockets, for `status`.
    received: super::status::Received,
    /// Per path, the same address on a port of its own, which the loop sleeps on: what
    /// must be acted on at once arrives here (the peers' urgent heartbeats, and what their
    /// kernels answer to this node's heartbeats and probes, which leave from it).
    wake: Vec<UdpSocket>,
    /// Each peer's wake socket per path, learnt from the source of its heartbeats; until then
    /// urgent messages go to its listening address.
    peer_wake: Vec<Vec<Option<SocketAddr>>>,
    /// Each peer's MAC on the LAN (for forwarding to it and receiving from it).
    peer_macs: Vec<Option<[u8; 6]>>,
    /// Each peer's MAC on the dedicated line, and this node's end of it.
    peer_line_macs: Vec<Option<[u8; 6]>>,
    line: Option<Line>,
    /// Fence commands running.
    fencing: Vec<Fencing>,
    registration: Option<Registration>,
    announcer: Arc<announce::Sender>,
    refused: arrivals::RefusedLog,
    /// The next gate entry the audit reads.
    audit_next: usize,
    /// The services' instances here, and per component the exit plans armed for its
    /// process (its pid, 0: none).
    services: services::Services,
    /// The stateful resources' steps (mount, start; stop, unmount).
    stateful: stateful::Stateful,
    exit_armed: Vec<(u32, Vec<takeover_common::ExitPlan>)>,
    /// Per component, its services' resources.
    component_res: Vec<Vec<usize>>,
    start: Instant,
    /// `start` on CLOCK_MONOTONIC (ns), the data plane's clock: the lease is written on it.
    start_mono_ns: u64,
    /// The lease was found lapsed at the last renewal (said once per lapse).
    lease_lapsed: bool,
    /// The disk heartbeat's thread, if the nodes share a storage area.
    disk: Option<disk::Disk>,
    /// Its last round could not read the area (said once).
    disk_unreadable: bool,
}

impl Shell {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// The heartbeat loop: perform what the core decided, send what it queued (one
    /// `sendmmsg` per socket), sleep until a wake socket or the inbox is readable or the
    /// core's deadline comes, feed the core what arrived and what happened.
    fn run(&mut self, rt: &tokio::runtime::Runtime, inbox: Inbox<Input>) -> Result<()> {
        let paths = self.listen.len();
        // Epoll indices: the wake sockets, then the listen sockets if the gates take the
        // periodic heartbeats (else they are read at every wake-up), then the inbox.
        let mut fds: Vec<RawFd> = self.wake.iter().map(|s| s.as_raw_fd()).collect();
        if self.heard.is_some() {
            fds.extend(self.listen.iter().map(|s| s.as_raw_fd()));
        }
        let inbox_at = fds.len();
        fds.push(inbox.fd());
        let poller = udp::Poller::new(&fds).context("creating an epoll set")?;
        let mut ready = Vec::with_capacity(fds.len());
        let mut bufs = RecvBufs::new(MAX_MESSAGE + 1);
        let mut arrived = Arrivals::default();
        // Per socket, listen sockets first: what to send on it.
        let mut out: Vec<Vec<(SocketAddr, Vec<u8>)>> = vec![Vec::new(); 2 * paths];
        loop {
            self.perform(rt, &poller, &mut out)?;
            self.renew_lease();
            self.disk_beat();
            self.arm_exit_plans();
            let mut wake = self.start + self.core.poll_timeout();
            for f in &self.fencing {
                let check = if f.has_pidfd() {
                    f.deadline
                } else {
                    Instant::now() + Duration::from_millis(1)
                };
                wake = wake.min(check);
            }
            let left = wake.saturating_duration_since(Instant::now());
            poller
                .wait(left, &mut ready)
                .context("waiting for datagrams")?;
            // Arrival stamps are on the wall clock (sockets) or the monotonic clock (the
            // ring): this wake-up's time on each, against the core's.
            let clocks = arrivals::Clocks::read(self.now());
            arrived.clear();
            self.drain_ring(&mut arrived, &clocks);
            for path in 0..paths {
                if self.heard.is_none() || ready[paths + path] {
                    self.collect(&mut bufs, &mut arrived, path, false, &clocks);
                }
                if ready[path] {
                    self.collect(&mut bufs, &mut arrived, path, true, &clocks);
                }
            }
            self.feed(&mut arrived);
            if !self.fencing.is_empty() {
                self.reap_fences(&poller);
            }
            if ready[inbox_at] {
                for input in inbox.drain() {
                    if !self.handle(input, &mut out)? {
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= wake {
                self.core.handle_timeout(self.now());
            }
        }
    }

    /// One message from the runtime's thread; false when the agent must stop.
    fn handle(&mut self, input: Input, out: &mut [Vec<(SocketAddr, Vec<u8>)>]) -> Result<bool> {
        let now = self.now();
        match input {
            Input::Link(ev) if ev.ifindex == self.lan.index => {
                self.core.handle_lan(now, ev.up);
                // The disk heartbeat says whether the LAN is up.
                if let Some(disk) = self.disk.as_mut() {
                    disk.dirty = true;
                }
            }
            Input::Link(ev) if Some(ev.ifindex) == self.dedicated => {
                for &p in &self.line_peers {
                    self.core.handle_line_carrier(now, p, ev.up);
                }
                // Services handed over go by the LAN while the line is dark, by the line again
                // once it is back.
                self.refresh_service_forwards()?;
            }
            Input::Link(_) => {}
            Input::LinksStopped => bail!("netlink link events stopped"),
            Input::Control(control::Request {
                command: control::Command::Handoff(h),
                reply,
            }) => self.handoff(h, reply),
            Input::Control(req) => {
                let answer = self.control(req.command, now);
                let _ = req.reply.send(answer);
            }
            Input::PeerMacs(macs) => {
                // Keep what was known when a read found nothing (an entry being refreshed).
                for (known, new) in self.peer_macs.iter_mut().zip(macs.lan) {
                    if new.is_some() {
                        *known = new;
                    }
                }
                let mut line_changed = false;
                for (known, new) in self.peer_line_macs.iter_mut().zip(macs.line) {
                    if new.is_some() && *known != new {
                        *known = new;
                        line_changed = true;
                    }
                }
                if line_changed {
                    self.refresh_service_forwards()?;
                }
            }
            Input::Audit => self.audit()?,
            Input::Service(r) => self.service_report(now, r),
            Input::Disk(round) => self.disk_round(round),
            Input::DiskClaimed(result) => {
                if let Err(e) = &result {
                    log::error!("recording the new epochs in the storage area: {e}");
                }
                self.core.handle_persisted(now, result.is_ok());
            }
            Input::Acquired {
                res,
                result,
                seen_epoch,
            } => {
                if let Some(e) = seen_epoch {
                    self.core.saw_epoch(res, e);
                }
                self.core.handle_acquired(now, res, result.is_ok())
            }
            Input::Released { res, result } => self.core.handle_released(now, res, result.is_ok()),
            Input::Stop => {
                self.stop(now, out);
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Gates stay as they are (pinned): a restart must not drop a packet. The peers are told,
    /// so they wait for the next agent instead of fencing this node.
    fn stop(&mut self, now: Duration, out: &mut [Vec<(SocketAddr, Vec<u8>)>]) {
        // The peers first: told to wait for a restart (and the core's last decisions on the
        // gates applied: a gate it let go must not be carried over the restart).
        self.core.shutdown(now);
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Send {
                    peer,
                    path,
                    bytes,
                    urgent,
                } => self.queue((peer, path, bytes, urgent), out),
                Action::SetGate { res, gate } => {
                    if let Err(e) = self.repair(res, gate) {
                        log::warn!("{e:#}");
                    }
                }
                Action::Event(e) => {
                    crate::io::log::event(&self.core_cfg, &e, std::time::SystemTime::now())
                }
                _ => {}
            }
        }
        self.send(out);
        // The gates may serve on over the restart, which the peers wait for, only if the
        // lease still runs now (a lapsed one may have let a peer take over meanwhile).
        let runs = self
            .registration
            .as_ref()
            .is_some_and(|r| r.lease.until_ns() > crate::dataplane::heard::clock_ns() + 1_000_000);
        // With a storage area, peers cut off the network judge this node by its disk: its
        // last heartbeat there must say it restarts, before they could count it stale, or
        // the gates are not extended.
        self.disk_beat();
        let told_disk = match (&self.disk, &self.cfg.storage) {
            (Some(disk), Some(st)) => {
                disk.last_write(st.interval, st.timeout / 2)
                    && self.core.disk_lease_runs(self.now())
            }
            _ => true,
        };
        let over_restart = self.mono_ns(self.now() + self.core_cfg.restart_grace);
        if let Some(r) = self.registration.as_mut() {
            if let Err(e) = r.stopping() {
                log::warn!("{e:#}: the peers may take this restart for a crash");
            }
            if self.core_cfg.lease && told_disk && runs {
                r.lease.extend(over_restart);
            }
        }
        log::info!(
            "stopping (SIGTERM/SIGINT); gates stay as they are, peers told to wait for a restart"
        );
    }

    fn service_report(&mut self, now: Duration, r: services::Report) {
        use services::Report;
        match r {
            Report::Check {
                component,
                check,
                result,
            } => self
                .core
                .handle_check(now, component, check, result.is_ok()),
            Report::Exited { component } => self.core.handle_exited(now, component),
            Report::StartFailed { component, .. } => self.core.handle_start_failed(now, component),
            Report::Restarted { component, result } => {
                self.core.handle_restarted(now, component, result.is_ok())
            }
        }
    }

    fn control(&mut self, command: control::Command, now: Duration) -> serde_json::Value {
        match command {
            control::Command::Status => {
                let mut st = super::status::Status::of(
                    &self.core,
                    now,
                    &self.lan.name,
                    &self.received,
                    &self.services.notes(),
                );
                if let Some(reg) = self.registration.as_ref().filter(|_| self.core_cfg.lease) {
                    let left = reg
                        .lease
                        .until_ns()
                        .saturating_sub(crate::dataplane::heard::clock_ns());
                    st.lease = Some(super::status::Lease {
                        remaining_ms: left as f64 / 1e6,
                    });
                }
                for (c, (tgid, plans)) in self.exit_armed.iter().enumerate() {
                    let gate = self.component_res[c]
                        .iter()
                        .find_map(|&r| self.core.exit_plan(r));
                    if *tgid != 0 && !plans.is_empty() {
                        st.components[c].exit_plan = gate.map(|g| g.describe(&self.core_cfg));
                    }
                }
                serde_json::to_value(st)
                    .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
            }
            control::Command::Switchover { addr, to } => {
                let a = addr.parse::<IpAddr>().ok().and_then(|ip| {
                    self.core_cfg
                        .resources
                        .iter()
                        .position(|r| r.ip == ip && r.service.is_none())
                });
                let n = self.core_cfg.nodes.iter().position(|x| *x == to);
                match (a, n) {
                    (Some(a), Some(n)) => {
                        if let Some(why) = control::switchover_refusal(&self.core, a, n) {
                            return serde_json::json!({ "error": why });
                        }
                        self.core.handle_switchover(now, a, n);
                        serde_json::json!({"ok": true, "address": addr, "to": to})
                    }
                    (None, _) => {
                        serde_json::json!({"error": format!("{addr} is not a logical address of this cluster")})
                    }
                    (_, None) => {
                        serde_json::json!({"error": format!("{to} is not a node of this cluster ({})", self.core_cfg.nodes.join(", "))})
                    }
                }
            }
            control::Command::Handoff(_) => unreachable!("answered by the disk thread"),
        }
    }
}
