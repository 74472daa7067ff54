//! `takeover run`: the shell around the core. Its main thread owns the sockets, the clock and
//! the gate table, and runs the heartbeat loop; a tokio worker does netlink, the control
//! socket, signals and the fence command, and reports through the inbox. The core decides.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use takeover_common::{Action as GateAction, GateValue};

use super::{
    announce, control,
    inbox::{self, Inbox, Mailbox},
    netlink,
    udp::{self, RecvBufs},
};
use crate::{
    config::{AgentExit, Config, XdpMode},
    core::{
        node::{Action, AddrSpec, Core, CoreConfig, NodeId},
        wire::{self, Rejected, MAX_MESSAGE, TOKEN_LEN},
    },
    dataplane::{
        self,
        heard::{self, HeardRing},
        liveness::Registration,
        AttachMode, Gates, PinDir, Target,
    },
    sys::{iface::Iface, napi, netns},
};

/// The core's view of the configuration: node names sorted (votes name nodes by index, so
/// every node must number them alike), and each peer's address per path.
pub fn core_config(cfg: &Config, key: Vec<u8>) -> (CoreConfig, Vec<Vec<SocketAddr>>) {
    let mut names: Vec<String> = std::iter::once(cfg.node.name.clone())
        .chain(cfg.peers.iter().map(|p| p.name.clone()))
        .collect();
    names.sort();
    let index = |n: &str| names.iter().position(|x| x == n).expect("validated name");
    let mut paths = vec![Vec::new(); names.len()];
    for p in &cfg.peers {
        paths[index(&p.name)] = p.paths.clone();
    }
    let core = CoreConfig {
        me: index(&cfg.node.name),
        paths: cfg.node.listen.len(),
        addresses: cfg
            .addresses
            .iter()
            .map(|a| AddrSpec {
                ip: a.ip,
                preference: a.preference.iter().map(|n| index(n)).collect(),
            })
            .collect(),
        interval: cfg.heartbeat.interval,
        misses: cfg.heartbeat.misses,
        lan_every: cfg.heartbeat.lan_every,
        preempt: cfg.preempt.enabled.then_some(cfg.preempt.delay),
        fence_retry: Duration::from_secs(1),
        startup_grace: cfg.heartbeat.startup_grace.max(cfg.heartbeat.dead_after()),
        restart_grace: cfg.heartbeat.restart_grace.max(cfg.heartbeat.dead_after()),
        exit_takes_over: cfg.heartbeat.agent_exit == AgentExit::Takeover,
        // A dark line: probe the peers' kernels twice an interval; an interval of silence
        // from kernel and agent confirms, if it begins within the dead time of the line going
        // dark. LAN stalls of 2-7 ms happen now and then on the benchmark machines under load
        // (soaks with the line down): a short window open all the while the line is dark
        // fenced live peers; one open only around the carrier drop is a small exposure.
        probe_interval: cfg.heartbeat.interval / 2,
        probe_confirm: cfg.heartbeat.interval,
        key,
        nodes: names,
    };
    (core, paths)
}

/// Where the epochs of open gates are kept between agent runs: tmpfs, so they survive an
/// agent restart (like the pinned gates) and not a reboot (which clears the pins too).
fn epochs_file(iface: &str) -> Result<PathBuf> {
    Ok(PathBuf::from(format!(
        "/run/takeover/{}/{iface}.epochs",
        netns::current_id()?
    )))
}

fn load_epochs(path: &PathBuf) -> BTreeMap<IpAddr, u64> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| {
            s.lines()
                .filter_map(|l| {
                    let (ip, e) = l.split_once(' ')?;
                    Some((ip.parse().ok()?, e.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn save_epochs(path: &PathBuf, epochs: &BTreeMap<IpAddr, u64>) {
    let text: String = epochs.iter().map(|(ip, e)| format!("{ip} {e}\n")).collect();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

fn log(msg: impl AsRef<str>) {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    eprintln!(
        "{}.{:06} takeover: {}",
        d.as_secs(),
        d.subsec_micros(),
        msg.as_ref()
    );
}

/// Real-time priority and locked memory for the one thread that runs the agent, so that a
/// busy machine does not delay heartbeats. Failures are reported, not fatal. For the calling
/// thread only (and threads it starts later).
fn realtime() {
    unsafe {
        if libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) != 0 {
            log(format!(
                "warning: mlockall: {}",
                std::io::Error::last_os_error()
            ));
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
        log(format!(
            "warning: SCHED_FIFO: {}",
            std::io::Error::last_os_error()
        ));
    }
}

enum Input {
    Link(netlink::LinkEvent),
    LinksStopped,
    Control(control::Request),
    Stop,
}

/// Real-time priority of the agent's threads and of the heartbeat interfaces' NAPI threads.
const RT_PRIORITY: i32 = 50;

pub fn run(cfg: Config, key: Vec<u8>, realtime_priority: bool) -> Result<()> {
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
    let mut shell = rt.block_on(Shell::start(cfg, key, realtime_priority, mailbox))?;
    if realtime_priority {
        realtime();
    }
    shell.run(&rt, inbox)
}

/// 16 random bytes from the kernel.
fn random_token() -> Result<[u8; TOKEN_LEN]> {
    let mut t = [0u8; TOKEN_LEN];
    let n = unsafe { libc::getrandom(t.as_mut_ptr().cast(), t.len(), 0) };
    if n != t.len() as isize {
        return Err(std::io::Error::last_os_error()).context("getrandom");
    }
    Ok(t)
}

/// What the heartbeat loop owns.
struct Shell {
    cfg: Config,
    core: Core,
    core_cfg: CoreConfig,
    peer_paths: Vec<Vec<SocketAddr>>,
    addresses: Vec<IpAddr>,
    gates: Gates,
    epochs: BTreeMap<IpAddr, u64>,
    epochs_path: PathBuf,
    lan: Iface,
    mac: [u8; 6],
    nl: rtnetlink::Handle,
    /// The dedicated line's interface: its carrier is a hint for the core.
    dedicated: Option<u32>,
    /// Per path, the configured address: the peers' periodic heartbeats arrive here, read at
    /// every wake-up (at least one per interval: this node's own tick), stamped on arrival.
    /// While the gates take them into `heard`, only what they leave (a full ring, a path
    /// without a gate) comes here, and the loop sleeps on these sockets too.
    listen: Vec<UdpSocket>,
    /// The peers' periodic heartbeats as the gates took them off the wire (kernel-assisted
    /// liveness registered): read from shared memory at every wake-up.
    heard: Option<HeardRing>,
    /// Datagrams read from the ring and from sockets, for `status`.
    received: control::Received,
    /// Per path, the same address on a port of its own, which the loop sleeps on: what
    /// must be acted on at once arrives here (the peers' urgent heartbeats, and what their
    /// kernels answer to this node's heartbeats and probes, which leave from it).
    wake: Vec<UdpSocket>,
    /// Each peer's wake socket per path, learnt from the source of its heartbeats; until then
    /// urgent messages go to its listening address.
    peer_wake: Vec<Vec<Option<SocketAddr>>>,
    /// Fence commands running.
    fencing: Vec<Fencing>,
    /// The latest time fed to the core: arrival stamps are clamped to it (time never goes back).
    fed: Duration,
    registration: Option<Registration>,
    announcer: Arc<announce::Sender>,
    refused: RefusedLog,
    start: Instant,
}

impl Shell {
    async fn start(
        cfg: Config,
        key: Vec<u8>,
        realtime_priority: bool,
        mailbox: Mailbox<Input>,
    ) -> Result<Self> {
        let lan = Iface::by_name(&cfg.node.lan)?;
        let mode = match cfg.node.xdp_mode {
            XdpMode::Auto => AttachMode::Auto,
            XdpMode::Driver => AttachMode::Driver,
            XdpMode::Generic => AttachMode::Generic,
        };
        let attached = dataplane::attach(&lan, mode)?;
        attached.notes.iter().for_each(log);
        log(format!(
            "gate on {}: ingress XDP {}, egress {}",
            lan.name, attached.xdp, attached.egress
        ));
        let mut gates = Gates::open(&PinDir::for_iface(&lan.name)?)?;
        let mac = lan.mac()?;
        let (core_cfg, peer_paths) = core_config(&cfg, key);
        let addresses: Vec<IpAddr> = core_cfg.addresses.iter().map(|a| a.ip).collect();

        // Gates found open (an agent restart) stay open; every other one is closed before the
        // address is configured, so a standby never answers for it, not even for a moment.
        let epochs_path = epochs_file(&lan.name)?;
        let epochs = load_epochs(&epochs_path);
        let mut open = Vec::new();
        for (a, ip) in addresses.iter().enumerate() {
            let t = Target::new(*ip, None);
            let is_open = gates
                .get(&t)?
                .is_some_and(|e| e.action == Some(GateAction::Open));
            if is_open {
                open.push((a, epochs.get(ip).copied().unwrap_or(1)));
            } else {
                gates.set(&t, GateValue::new(GateAction::Closed))?;
            }
        }
        let nl = netlink::connect()?;
        for a in &cfg.addresses {
            netlink::ensure_address(&nl, lan.index, a.ip, a.prefix).await?;
        }

        let (mut listen, mut wake) = (Vec::new(), Vec::new());
        for (path, addr) in cfg.node.listen.iter().enumerate() {
            let sock = UdpSocket::bind(addr)
                .with_context(|| format!("cannot bind path {path} to {addr}"))?;
            udp::stamp_arrivals(&sock).context("SO_TIMESTAMPNS")?;
            listen.push(sock);
            let any_port = SocketAddr::new(addr.ip(), 0);
            let sock = UdpSocket::bind(any_port)
                .with_context(|| format!("cannot bind path {path} to {any_port}"))?;
            udp::stamp_arrivals(&sock).context("SO_TIMESTAMPNS")?;
            wake.push(sock);
        }
        let dedicated = if cfg.node.listen.len() > 1 {
            netlink::ifindex_of_address(&nl, cfg.node.listen[0].ip()).await?
        } else {
            None
        };
        // Every heartbeat interface gets the gate too (it passes what is not a logical
        // address): its XDP program answers for a dead agent (kernel-assisted liveness).
        let mut heartbeat_ifaces = vec![lan.clone()];
        for addr in &cfg.node.listen {
            let Some(index) = netlink::ifindex_of_address(&nl, addr.ip()).await? else {
                log(format!("warning: no interface holds {}", addr.ip()));
                continue;
            };
            let Some(name) = crate::sys::iface::name_of(index) else {
                continue;
            };
            if heartbeat_ifaces.iter().all(|i| i.index != index) {
                let iface = Iface::by_name(&name)?;
                let attached = dataplane::attach(&iface, mode)?;
                attached.notes.iter().for_each(log);
                log(format!(
                    "gate on {name} (heartbeats): ingress XDP {}, egress {}",
                    attached.xdp, attached.egress
                ));
                heartbeat_ifaces.push(iface);
            }
        }
        if cfg.node.threaded_napi {
            for iface in &heartbeat_ifaces {
                // Only at real-time priority: a NAPI thread at normal priority waits behind
                // busy processes, where a softirq would not.
                if !realtime_priority {
                    log(format!(
                        "threaded NAPI on {} left off: it needs real-time priority (--no-realtime)",
                        iface.name
                    ));
                    continue;
                }
                match napi::threaded(&iface.name, RT_PRIORITY) {
                    Ok(n) => log(format!(
                        "threaded NAPI on {}: {n} thread(s) at SCHED_FIFO",
                        iface.name
                    )),
                    Err(e) => log(format!("warning: threaded NAPI on {}: {e:#}", iface.name)),
                }
            }
        }
        let mut links = netlink::watch_links()?;
        let m = mailbox.clone();
        tokio::spawn(async move {
            while let Some(ev) = links.next().await {
                if !m.send(Input::Link(ev)) {
                    return;
                }
            }
            m.send(Input::LinksStopped);
        });

        let start = Instant::now();
        let incarnation = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)?
            .as_nanos() as u64;
        let mut core = Core::new(core_cfg.clone(), incarnation, start.elapsed(), &open);
        // Kernel-assisted liveness: if this process dies unannounced, the data plane answers
        // the peers' heartbeats with this notice; they hold the token's hash from our
        // heartbeats.
        let token = random_token()?;
        let port = cfg.node.listen[0].port();
        if cfg.node.listen.iter().any(|l| l.port() != port) {
            log(format!(
                "warning: the paths listen on different ports; exit notices answer port {port} only"
            ));
        }
        let (registration, heard) = match dataplane::liveness::register(
            &PinDir::for_iface(&lan.name)?,
            port,
            wire::encode_notice(incarnation, &token),
        ) {
            Ok((r, heard)) => {
                core.set_exit_commit(wire::commit(&token));
                (Some(r), Some(heard))
            }
            Err(e) => {
                log(format!(
                    "warning: no kernel-assisted liveness (peers will wait out the dead time if this agent dies): {e:#}"
                ));
                (None, None)
            }
        };
        if !netlink::is_up(&nl, lan.index).await? {
            core.handle_lan(start.elapsed(), false);
        }
        if let Some(d) = dedicated {
            if !netlink::is_up(&nl, d).await? {
                core.handle_dedicated_carrier(start.elapsed(), false);
            }
        }
        let announcer = Arc::new(
            announce::Sender::new(lan.index)
                .context("opening a packet socket for announcements")?,
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut interrupt =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let m = mailbox.clone();
        tokio::spawn(async move {
            tokio::select! { _ = term.recv() => {}, _ = interrupt.recv() => {} }
            m.send(Input::Stop);
        });
        let m = mailbox.clone();
        control::listen(move |req| m.send(Input::Control(req)))?;
        log(format!(
            "node {} running: {} path(s), {} address(es)",
            cfg.node.name,
            listen.len(),
            addresses.len()
        ));
        let peer_wake = vec![vec![None; listen.len()]; peer_paths.len()];
        Ok(Self {
            peer_wake,
            cfg,
            core,
            core_cfg,
            peer_paths,
            addresses,
            gates,
            epochs,
            epochs_path,
            lan,
            mac,
            nl,
            dedicated,
            listen,
            heard,
            received: Default::default(),
            wake,
            fed: Duration::ZERO,
            fencing: Vec::new(),
            registration,
            announcer,
            refused: RefusedLog::default(),
            start,
        })
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// The heartbeat loop: perform what the core decided, send what it queued (one
    /// `sendmmsg` per socket), sleep until a wake socket or the inbox is readable or the
    /// core's deadline comes, feed the core what arrived (in the order it arrived, by the
    /// kernel's stamps) and what happened.
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
            let mut wake = self.start + self.core.poll_timeout();
            for f in &self.fencing {
                let check = match f.pidfd {
                    Some(_) => f.deadline,
                    None => Instant::now() + Duration::from_millis(1),
                };
                wake = wake.min(check);
            }
            let left = wake.saturating_duration_since(Instant::now());
            poller
                .wait(left, &mut ready)
                .context("waiting for datagrams")?;
            // Arrival stamps are on the wall clock (sockets) or the monotonic clock (the
            // ring): this wake-up's time on each, against the core's.
            let now = self.now();
            let clocks = Clocks {
                now,
                wall: SystemTime::now(),
                mono_ns: heard::clock_ns(),
            };
            arrived.clear();
            if let Some(heard) = self.heard.as_mut() {
                heard.drain(|d| {
                    self.received.gate += 1;
                    // A heartbeat to another address than a path's is not for this agent.
                    if let Some(path) = self.cfg.node.listen.iter().position(|l| l.ip() == d.to) {
                        let ago = Duration::from_nanos(clocks.mono_ns.saturating_sub(d.stamp_ns));
                        arrived.push(now.saturating_sub(ago), path, d.from, d.bytes);
                    }
                });
            }
            for path in 0..paths {
                let listen = self.heard.is_none() || ready[paths + path];
                if listen {
                    self.collect(&mut bufs, &mut arrived, path, false, &clocks);
                }
                if ready[path] {
                    self.collect(&mut bufs, &mut arrived, path, true, &clocks);
                }
            }
            if !arrived.list.is_empty() {
                self.feed(&mut arrived);
                let now = self.feed_time(self.now());
                self.core.heard(now);
            }
            if !self.fencing.is_empty() {
                self.reap_fences(&poller);
            }
            if ready[inbox_at] {
                for input in inbox.drain() {
                    if !self.handle(input)? {
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= wake {
                let now = self.feed_time(self.now());
                self.core.handle_timeout(now);
            }
        }
    }

    /// The core's time, never before what it was last given.
    fn feed_time(&mut self, t: Duration) -> Duration {
        self.fed = self.fed.max(t);
        self.fed
    }

    /// Reads what waits on one path's listen or wake socket into `arrived`, each datagram
    /// with when it arrived on the core's clock.
    fn collect(
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
            Err(e) => log(format!("reading path {path}: {e}")),
        }
    }

    /// Feeds the core what `collect` read, oldest first: a peer's urgent and periodic
    /// heartbeats come by two sockets but number their sequence together, and one taken
    /// after a newer one only proves the peer alive.
    fn feed(&mut self, arrived: &mut Arrivals) {
        arrived.list.sort_by_key(|a| a.at);
        for a in &arrived.list {
            let at = self.feed_time(a.at);
            match self
                .core
                .handle_datagram(at, a.path, &arrived.bytes[a.bytes.clone()])
            {
                Ok(()) => {
                    // A peer's periodic heartbeat comes from its wake socket (any other
                    // port than the one it listens on).
                    if let Some(p) = self.peer_paths.iter().position(|x| {
                        x.get(a.path)
                            .is_some_and(|x| x.ip() == a.from.ip() && x.port() != a.from.port())
                    }) {
                        self.peer_wake[p][a.path] = Some(a.from);
                    }
                }
                // Normal for a moment after either agent starts: counted only.
                Err(Rejected::Unaddressed) => {}
                Err(r) => self.refused.note(r.as_str(), a.from),
            }
        }
    }

    /// One message from the runtime's thread; false when the agent must stop.
    fn handle(&mut self, input: Input) -> Result<bool> {
        let now = self.now();
        match input {
            Input::Link(ev) if ev.ifindex == self.lan.index => self.core.handle_lan(now, ev.up),
            Input::Link(ev) if Some(ev.ifindex) == self.dedicated => {
                self.core.handle_dedicated_carrier(now, ev.up)
            }
            Input::Link(_) => {}
            Input::LinksStopped => bail!("netlink link events stopped"),
            Input::Control(req) => {
                let answer = self.control(req.command, now);
                let _ = req.reply.send(answer);
            }
            Input::Stop => {
                // Gates stay as they are (pinned): a restart must not drop a packet. The
                // peers are told, so they wait for the next agent instead of fencing this
                // node.
                if let Some(r) = self.registration.as_mut() {
                    if let Err(e) = r.stopping() {
                        log(format!(
                            "warning: {e:#}: the peers may take this restart for a crash"
                        ));
                    }
                }
                self.core.shutdown(now);
                let mut out = vec![Vec::new(); 2 * self.listen.len()];
                while let Some(action) = self.core.poll_action() {
                    if let Action::Send {
                        peer,
                        path,
                        bytes,
                        urgent,
                    } = action
                    {
                        self.queue((peer, path, bytes, urgent), &mut out);
                    }
                }
                self.send(&mut out);
                log("stopping (SIGTERM/SIGINT); gates stay as they are, peers told to wait for a restart");
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn control(&mut self, command: control::Command, now: Duration) -> serde_json::Value {
        match command {
            control::Command::Status => {
                control::status(&self.core, now, &self.lan.name, &self.received)
            }
            control::Command::Switchover { addr, to } => {
                let a = addr
                    .parse::<IpAddr>()
                    .ok()
                    .and_then(|ip| self.addresses.iter().position(|x| *x == ip));
                let n = self.core_cfg.nodes.iter().position(|x| *x == to);
                match (a, n) {
                    (Some(a), Some(n)) => {
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
        }
    }

    /// Everything the core decided; datagrams are queued per socket and sent at the end.
    fn perform(
        &mut self,
        rt: &tokio::runtime::Runtime,
        poller: &udp::Poller,
        out: &mut [Vec<(SocketAddr, Vec<u8>)>],
    ) -> Result<()> {
        // The epochs file is written once, after the announcements and heartbeats have gone.
        let mut epochs_changed = false;
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::OpenGate { addr } => {
                    let ip = self.addresses[addr];
                    self.gates
                        .set(&Target::new(ip, None), GateValue::new(GateAction::Open))?;
                    self.epochs.insert(ip, self.core.epoch(addr));
                    epochs_changed = true;
                    log(format!("{ip} open (epoch {})", self.core.epoch(addr)));
                }
                Action::ForwardGate { addr, to } => {
                    // Without the new server's MAC, closed is all that is safe.
                    let value = self
                        .peer_mac(rt, to)
                        .map_or(GateValue::new(GateAction::Closed), |peer_mac| {
                            GateValue::forward(0, peer_mac, self.mac)
                        });
                    self.gates
                        .set(&Target::new(self.addresses[addr], None), value)?;
                    epochs_changed |= self.epochs.remove(&self.addresses[addr]).is_some();
                    log(format!(
                        "{} handed over to {}: forwarding what still arrives here",
                        self.addresses[addr], self.core_cfg.nodes[to]
                    ));
                }
                Action::ReceiveGate { addr, from } => {
                    // Without the old server's MAC nothing it forwards can be told apart:
                    // closed, as before.
                    if let Some(from_mac) = self.peer_mac(rt, from) {
                        self.gates.set(
                            &Target::new(self.addresses[addr], None),
                            GateValue::receive(from_mac),
                        )?;
                    }
                }
                Action::CloseGate { addr } => {
                    let ip = self.addresses[addr];
                    self.gates
                        .set(&Target::new(ip, None), GateValue::new(GateAction::Closed))?;
                    if self.epochs.remove(&ip).is_some() {
                        epochs_changed = true;
                        log(format!("{ip} closed"));
                    }
                }
                Action::Announce { addr } => {
                    let (frames, sender, count, interval) = (
                        announce::frames(self.addresses[addr], self.mac),
                        self.announcer.clone(),
                        self.cfg.announce.count,
                        self.cfg.announce.interval,
                    );
                    let send = move |frames: &[Vec<u8>]| {
                        for f in frames {
                            if let Err(e) = sender.send(f) {
                                log(format!("announcement failed: {e}"));
                            }
                        }
                    };
                    // The first at once, from here: the clients come over as soon as they
                    // hear it. The rest from the runtime, at the interval.
                    send(&frames);
                    if count > 1 {
                        rt.spawn(async move {
                            for _ in 1..count {
                                tokio::time::sleep(interval).await;
                                send(&frames);
                            }
                        });
                    }
                }
                Action::Fence { peer } => self.start_fence(poller, peer),
                Action::Send {
                    peer,
                    path,
                    bytes,
                    urgent,
                } => self.queue((peer, path, bytes, urgent), out),
                Action::Notice(text) => log(text),
            }
        }
        self.send(out);
        if epochs_changed {
            save_epochs(&self.epochs_path, &self.epochs);
        }
        Ok(())
    }

    /// Starts the fence command for `peer` from this thread, its exit watched in the loop's
    /// epoll set (a pidfd): the takeover waits on it, so no hand-off to another thread.
    fn start_fence(&mut self, poller: &udp::Poller, peer: NodeId) {
        let name = self.core_cfg.nodes[peer].clone();
        let argv = fence_argv(&self.cfg.fence.command, &name);
        log(format!("fencing {name}: {}", argv.join(" ")));
        let spawned = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                log(format!("cannot run the fence command for {name}: {e}"));
                let now = self.feed_time(self.now());
                self.core.handle_fence(now, peer, false);
                return;
            }
        };
        // Without a pidfd (a kernel before 5.3) the loop still checks at every wake-up, and
        // wakes at least every millisecond while a fence runs.
        let pidfd = pidfd_open(child.id()).ok();
        if let Some(fd) = &pidfd {
            if let Err(e) = poller.add(fd.as_raw_fd()) {
                log(format!("warning: watching the fence command: {e}"));
            }
        }
        let deadline = Instant::now() + self.cfg.fence.timeout;
        // A fence that exited at once is reaped at the next wake-up, which comes at once (its
        // pidfd is readable).
        let _ = child.try_wait();
        self.fencing.push(Fencing {
            peer,
            child,
            pidfd,
            deadline,
        });
    }

    /// Reports every fence command that finished (or ran out of time, and is killed).
    fn reap_fences(&mut self, poller: &udp::Poller) {
        let mut i = 0;
        while i < self.fencing.len() {
            let f = &mut self.fencing[i];
            let name = &self.core_cfg.nodes[f.peer];
            let ok = match f.child.try_wait() {
                Ok(Some(status)) if status.success() => true,
                Ok(Some(status)) => {
                    log(format!("fence command for {name} failed: {status}"));
                    false
                }
                Ok(None) if Instant::now() >= f.deadline => {
                    let _ = f.child.kill();
                    let _ = f.child.wait();
                    log(format!(
                        "fence command for {name} timed out after {:?}",
                        self.cfg.fence.timeout
                    ));
                    false
                }
                Ok(None) => {
                    i += 1;
                    continue;
                }
                Err(e) => {
                    log(format!("fence command for {name}: {e}"));
                    false
                }
            };
            let f = self.fencing.swap_remove(i);
            if let Some(fd) = &f.pidfd {
                poller.remove(fd.as_raw_fd());
            }
            let now = self.feed_time(self.now());
            self.core.handle_fence(now, f.peer, ok);
        }
    }

    /// Peer `p`'s MAC on the LAN, from the neighbour table (heartbeats on the LAN keep it
    /// there); logged if it is missing.
    fn peer_mac(&self, rt: &tokio::runtime::Runtime, p: NodeId) -> Option<[u8; 6]> {
        let ip = self.peer_paths[p][self.core_cfg.paths - 1].ip();
        match rt.block_on(netlink::neighbour_mac(&self.nl, self.lan.index, ip)) {
            Ok(Some(mac)) => Some(mac),
            other => {
                log(format!(
                    "no MAC for {} ({ip}: {other:?}): closed instead",
                    self.core_cfg.nodes[p]
                ));
                None
            }
        }
    }

    /// Queues a datagram for its socket: an urgent one leaves from the listen socket for the
    /// peer's wake socket, which wakes it; a periodic one from the wake socket for the peer's
    /// listen socket, which it reads at its next tick, so the peer's kernel's answers (an
    /// exit notice, a probe's answer) come back to a socket that wakes this node.
    fn queue(
        &self,
        (peer, path, bytes, urgent): (NodeId, usize, Vec<u8>, bool),
        out: &mut [Vec<(SocketAddr, Vec<u8>)>],
    ) {
        let listen = self.peer_paths[peer][path];
        if urgent {
            out[path].push((self.peer_wake[peer][path].unwrap_or(listen), bytes));
        } else {
            out[self.listen.len() + path].push((listen, bytes));
        }
    }

    /// Sends what `queue` queued: one `sendmmsg` per socket.
    fn send(&self, out: &mut [Vec<(SocketAddr, Vec<u8>)>]) {
        for (sock, queued) in self.listen.iter().chain(&self.wake).zip(out.iter_mut()) {
            if !queued.is_empty() {
                udp::send_all(sock, queued);
                queued.clear();
            }
        }
    }
}

/// One wake-up's datagrams, from every socket, before they are fed to the core in order.
#[derive(Default)]
struct Arrivals {
    list: Vec<Arrival>,
    /// Their bytes, one after another (kept between wake-ups: no allocation once warm).
    bytes: Vec<u8>,
}

impl Arrivals {
    fn clear(&mut self) {
        self.list.clear();
        self.bytes.clear();
    }

    fn push(&mut self, at: Duration, path: usize, from: SocketAddr, bytes: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        self.list.push(Arrival {
            at,
            path,
            from,
            bytes: start..self.bytes.len(),
        });
    }
}

/// One wake-up's time on the core's clock and on the clocks arrival stamps use.
struct Clocks {
    now: Duration,
    wall: SystemTime,
    /// CLOCK_MONOTONIC, the eBPF programs' `bpf_ktime_get_ns`.
    mono_ns: u64,
}

struct Arrival {
    at: Duration,
    path: usize,
    from: SocketAddr,
    bytes: std::ops::Range<usize>,
}

/// Refused datagrams, logged at most once a second (a flood must not flood the log too).
#[derive(Default)]
struct RefusedLog {
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
        log(format!(
            "refused datagrams (changed nothing): {} (last from {from}); see `takeover status`",
            list.join(", ")
        ));
        self.counts.clear();
        self.since = Some(now);
    }
}

/// The fence command's argv for `peer`: `{peer}` in an argument is replaced by the peer's
/// name; without any, the name is appended.
pub fn fence_argv(argv: &[String], peer: &str) -> Vec<String> {
    if argv.iter().any(|a| a.contains("{peer}")) {
        argv.iter().map(|a| a.replace("{peer}", peer)).collect()
    } else {
        argv.iter().cloned().chain([peer.to_string()]).collect()
    }
}

/// Runs the fence command for `peer`; true only on exit status 0 within the timeout.
/// A running fence command.
struct Fencing {
    peer: NodeId,
    child: std::process::Child,
    /// Readable when the command has exited.
    pidfd: Option<OwnedFd>,
    deadline: Instant,
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor just made and owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

#[cfg(test)]
mod tests {
    use super::fence_argv;

    #[test]
    fn the_fence_command_gets_the_peer_in_place_or_at_the_end() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(fence_argv(&v(&["fence"]), "b"), v(&["fence", "b"]));
        assert_eq!(
            fence_argv(&v(&["ipmitool", "-H", "{peer}-bmc", "power", "off"]), "b"),
            v(&["ipmitool", "-H", "b-bmc", "power", "off"])
        );
    }
}
