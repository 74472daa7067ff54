//! Start-up, all or nothing: first everything that can be checked without changing the host
//! (interfaces, addresses, ports, another agent), then the changes (gates attached, gates
//! closed, addresses added, control socket, liveness), each undone if a later one fails.
use std::{
    net::{SocketAddr, UdpSocket},
    path::Path,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use takeover_common::{Action as GateAction, GateValue};

use super::{disk, epochs::Epochs, services, stateful, translate, Input, PeerMacs, Shell};
use crate::{
    config::{Config, XdpMode},
    core::{event::resource_name, node::Core, wire},
    dataplane::{self, heard, liveness, stale::RUN_ROOT, AttachMode, Gates, PinDir, Target},
    io::{announce, control, inbox::Mailbox, netlink, udp},
    sys::{iface::Iface, napi},
};

/// What start-up changed, to be undone (newest first) if it cannot finish.
#[derive(Default)]
struct Undo {
    /// Interfaces this start attached the gate to (not those found attached).
    attached: Vec<String>,
    /// Gate entries as they were before this start wrote them.
    gates: Vec<(Target, Option<GateValue>)>,
    /// Addresses this start added: (ifindex, ip, prefix).
    addresses: Vec<(u32, std::net::IpAddr, u8)>,
}

impl Undo {
    async fn run(self, nl: &rtnetlink::Handle, gates: Option<&mut Gates>) {
        for (ifindex, ip, prefix) in self.addresses.into_iter().rev() {
            if let Err(e) = netlink::remove_address(nl, ifindex, ip, prefix).await {
                log::warn!("undoing start-up: {e:#}");
            }
        }
        if let Some(g) = gates {
            for (t, before) in self.gates.into_iter().rev() {
                let r = match before {
                    Some(v) => g.set(&t, v),
                    None => g.remove(&t).map(|_| ()),
                };
                if let Err(e) = r {
                    log::warn!("undoing start-up: gate of {t}: {e:#}");
                }
            }
        }
        for iface in self.attached.into_iter().rev() {
            if let Err(e) = dataplane::detach(&iface) {
                log::warn!("undoing start-up: detaching {iface}: {e:#}");
            }
        }
    }
}

/// Refuses to start beside a running agent of this network namespace: it answers on the
/// control socket (a stale socket file of a dead one does not).
fn refuse_if_running() -> Result<()> {
    let path = control::socket_path()?;
    let Ok(stream) = std::os::unix::net::UnixStream::connect(&path) else {
        return Ok(());
    };
    let pid = peer_pid(&stream).map_or("unknown".to_string(), |p| p.to_string());
    bail!(
        "an agent is already running in this network namespace (pid {pid}, {}); stop it first \
         (SIGTERM: its gates stay as they are and the next agent takes them over)",
        path.display()
    )
}

fn peer_pid(s: &std::os::unix::net::UnixStream) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0 && cred.pid > 0).then_some(cred.pid)
}

/// The listen and wake sockets of every path (a port in use, or an address not on this
/// host, fails here, before anything changed).
fn bind(cfg: &Config) -> Result<(Vec<UdpSocket>, Vec<UdpSocket>)> {
    let (mut listen, mut wake) = (Vec::new(), Vec::new());
    for (path, addr) in cfg.node.listen.iter().enumerate() {
        let sock = UdpSocket::bind(addr)
            .with_context(|| format!("node.listen[{path}]: cannot bind {addr}"))?;
        udp::stamp_arrivals(&sock).context("SO_TIMESTAMPNS")?;
        listen.push(sock);
        let any_port = SocketAddr::new(addr.ip(), 0);
        let sock = UdpSocket::bind(any_port)
            .with_context(|| format!("node.listen[{path}]: cannot bind {any_port}"))?;
        udp::stamp_arrivals(&sock).context("SO_TIMESTAMPNS")?;
        wake.push(sock);
    }
    Ok((listen, wake))
}

/// 16 random bytes from the kernel.
fn random_token() -> Result<[u8; wire::TOKEN_LEN]> {
    let mut t = [0u8; wire::TOKEN_LEN];
    let n = unsafe { libc::getrandom(t.as_mut_ptr().cast(), t.len(), 0) };
    if n != t.len() as isize {
        return Err(std::io::Error::last_os_error()).context("getrandom");
    }
    Ok(t)
}

/// Reads each peer's LAN MAC from the neighbour table now and then, for the loop's cache.
/// Each peer's MAC on the LAN and, with a dedicated line, on the line (from the neighbour
/// tables: the peers' addresses are static or resolved by the heartbeats).
async fn read_peer_macs(
    nl: &rtnetlink::Handle,
    lan: u32,
    line: Option<u32>,
    peers: &[Vec<SocketAddr>],
) -> PeerMacs {
    let mut out = PeerMacs::default();
    for paths in peers {
        let lan_mac = match paths.last() {
            Some(a) => netlink::neighbour_mac(nl, lan, a.ip()).await.ok().flatten(),
            None => None,
        };
        let line_mac = match (line, paths.first()) {
            (Some(l), Some(a)) if paths.len() > 1 => {
                netlink::neighbour_mac(nl, l, a.ip()).await.ok().flatten()
            }
            _ => None,
        };
        out.lan.push(lan_mac);
        out.line.push(line_mac);
    }
    out
}

impl Shell {
    pub(super) async fn start(
        cfg: Config,
        key: Vec<u8>,
        realtime_priority: bool,
        mailbox: Mailbox<Input>,
    ) -> Result<Self> {
        // ---- checks: nothing on the host changes until they pass ----
        let lan = Iface::by_name(&cfg.node.lan).context("node.lan")?;
        let mac = lan.mac()?;
        refuse_if_running()?;
        let nl = netlink::connect()?;
        let mut heartbeat_ifaces = vec![lan.clone()];
        for (i, addr) in cfg.node.listen.iter().enumerate() {
            let Some(index) = netlink::ifindex_of_address(&nl, addr.ip()).await? else {
                bail!(
                    "node.listen[{i}]: no interface of this host holds {} (add it, or fix the configuration)",
                    addr.ip()
                );
            };
            let name = crate::sys::iface::name_of(index)
                .with_context(|| format!("node.listen[{i}]: interface {index} has no name"))?;
            if heartbeat_ifaces.iter().all(|f| f.index != index) {
                heartbeat_ifaces.push(Iface::by_name(&name)?);
            }
        }
        let (listen, wake) = bind(&cfg)?;
        let dedicated = if cfg.node.listen.len() > 1 {
            netlink::ifindex_of_address(&nl, cfg.node.listen[0].ip()).await?
        } else {
            None
        };
        let (core_cfg, peer_paths) = translate::core_config(&cfg, key);
        let targets = translate::targets(&core_cfg);
        let epochs = Epochs::load(&lan.name)?;
        let storage = match &cfg.storage {
            Some(st) => Some(disk::open(st, &cfg.node.name, &core_cfg.nodes)?),
            None => None,
        };

        // ---- changes, undone on failure ----
        let checked = Checked {
            lan,
            mac,
            dedicated,
            heartbeat_ifaces,
            listen,
            wake,
            core_cfg,
            peer_paths,
            targets,
            epochs,
            storage,
        };
        let mut undo = Undo::default();
        let mut gates = None;
        match Self::build(
            cfg,
            checked,
            &nl,
            realtime_priority,
            mailbox,
            &mut undo,
            &mut gates,
        )
        .await
        {
            Ok(shell) => Ok(shell),
            Err(e) => {
                log::error!("start-up failed; undoing what it changed");
                undo.run(&nl, gates.as_mut()).await;
                Err(e)
            }
        }
    }

    /// Makes the changes (recorded in `undo`) and the shell.
    #[allow(clippy::too_many_arguments)]
    async fn build(
        cfg: Config,
        c: Checked,
        nl: &rtnetlink::Handle,
        realtime_priority: bool,
        mailbox: Mailbox<Input>,
        undo: &mut Undo,
        gates_slot: &mut Option<Gates>,
    ) -> Result<Self> {
        let mode = match cfg.node.xdp_mode {
            XdpMode::Auto => AttachMode::Auto,
            XdpMode::Driver => AttachMode::Driver,
            XdpMode::Generic => AttachMode::Generic,
        };
        // Every heartbeat interface gets the gate too (it passes what is not a logical
        // address): its XDP program answers for a dead agent (kernel-assisted liveness).
        for (i, iface) in c.heartbeat_ifaces.iter().enumerate() {
            let attached = dataplane::attach(iface, mode)?;
            attached.notes.iter().for_each(|n| log::warn!("{n}"));
            if attached.xdp != dataplane::XdpAttach::Kept {
                undo.attached.push(iface.name.clone());
            }
            let role = if i == 0 { "" } else { " (heartbeats)" };
            log::info!(
                "gate on {}{role}: ingress XDP {}, egress {}",
                iface.name,
                attached.xdp,
                attached.egress
            );
        }
        let pins = PinDir::for_iface(&c.lan.name)?;
        let gates = gates_slot.insert(Gates::open(&pins)?);

        // Gates found open (an agent restart) stay open; every other one is closed before the
        // address is configured, so a standby never answers for it, not even for a moment.
        // A leased entry whose lease has lapsed is closed in effect (the previous agent died
        // or stalled unannounced, and a peer may serve it by now): it is not revived.
        let lapsed = c.core_cfg.lease && lease_lapsed(&pins);
        let mut open: Vec<(usize, u64)> = Vec::new();
        let mut found_lapsed = Vec::new();
        for (r, entries) in c.targets.iter().enumerate() {
            let mut before = Vec::new();
            for t in entries {
                before.push(gates.get(t)?);
            }
            let all_open = before.iter().all(|b| {
                b.as_ref().is_some_and(|e| {
                    e.action == Some(GateAction::Open) && !(lapsed && e.value.is_leased())
                })
            });
            if !all_open
                && before.iter().any(|b| {
                    b.as_ref()
                        .is_some_and(|e| e.action == Some(GateAction::Open))
                })
            {
                found_lapsed.push(resource_name(&c.core_cfg, r));
            }
            // A service stays open only with its address (which comes first).
            let with_address = c.core_cfg.resources[r]
                .service
                .is_none_or(|sv| open.iter().any(|&(a, _)| a == sv.address));
            if all_open && with_address {
                let name = resource_name(&c.core_cfg, r);
                open.push((r, c.epochs.get(&name).unwrap_or(1)));
                continue;
            }
            for (t, b) in entries.iter().zip(before) {
                undo.gates.push((*t, b.map(|e| e.value)));
                gates.set(t, GateValue::new(GateAction::Closed))?;
            }
        }
        if !found_lapsed.is_empty() {
            log::warn!(
                "found open but with a lapsed lease (the previous agent died or stalled without stopping; a peer may serve them now): {}: closed until this agent opens them again",
                found_lapsed.join(", ")
            );
        }
        for a in &cfg.addresses {
            if netlink::ensure_address(nl, c.lan.index, a.ip, a.prefix).await? {
                undo.addresses.push((c.lan.index, a.ip, a.prefix));
            }
        }
        if cfg.node.threaded_napi {
            for iface in &c.heartbeat_ifaces {
                // Only at real-time priority: a NAPI thread at normal priority waits behind
                // busy processes, where a softirq would not.
                if !realtime_priority {
                    log::info!(
                        "threaded NAPI on {} left off: it needs real-time priority (--no-realtime)",
                        iface.name
                    );
                    continue;
                }
                match napi::threaded(&iface.name, RT_PRIORITY) {
                    Ok(n) => log::info!(
                        "threaded NAPI on {}: {n} thread(s) at SCHED_FIFO",
                        iface.name
                    ),
                    Err(e) => log::warn!("threaded NAPI on {}: {e:#}", iface.name),
                }
            }
        }
        let announcer = Arc::new(
            announce::Sender::new(c.lan.index)
                .context("opening a packet socket for announcements")?,
        );
        let lan_up = netlink::is_up(nl, c.lan.index).await?;
        let line_up = match c.dedicated {
            Some(d) => netlink::is_up(nl, d).await?,
            None => true,
        };
        let macs = read_peer_macs(nl, c.lan.index, c.dedicated, &c.peer_paths).await;
        // A service handed to a peer goes over the dedicated line while it works (the
        // patent's figure 18): the LAN gate redirects into it.
        let line = match c.dedicated {
            Some(index) => {
                let name = crate::sys::iface::name_of(index)
                    .with_context(|| format!("dedicated line interface {index}"))?;
                gates.allow_redirect(index)?;
                Some(super::Line {
                    index,
                    mac: Iface::by_name(&name)?.mac()?,
                })
            }
            None => None,
        };
        let m = mailbox.clone();
        control::listen(move |req| m.send(Input::Control(req)))?;

        // ---- nothing fails from here on but what is only reported ----
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
        let (m, nl2, lan_index, line_index, peers) = (
            mailbox.clone(),
            nl.clone(),
            c.lan.index,
            c.dedicated,
            c.peer_paths.clone(),
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(MAC_REFRESH).await;
                if !m.send(Input::PeerMacs(
                    read_peer_macs(&nl2, lan_index, line_index, &peers).await,
                )) {
                    return;
                }
            }
        });
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut interrupt =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let m = mailbox.clone();
        tokio::spawn(async move {
            tokio::select! { _ = term.recv() => {}, _ = interrupt.recv() => {} }
            m.send(Input::Stop);
        });

        if !cfg.services.is_empty() {
            // The peer that receives a service's traffic answers clients it has no ARP entry
            // for; its request must not come from the logical address, whose gate shuts it
            // (the address is not this host's): from the interface's own address instead.
            let knob = format!("/proc/sys/net/ipv4/conf/{}/arp_announce", c.lan.name);
            if let Err(e) = std::fs::write(&knob, "2") {
                log::warn!(
                    "{knob}: {e}: a peer receiving a service's traffic may not reach new clients"
                );
            }
        }
        let here: Vec<bool> = c.core_cfg.components.iter().map(|x| x.here).collect();
        let mut component_res = vec![Vec::new(); here.len()];
        for (r, spec) in c.core_cfg.resources.iter().enumerate() {
            if let Some(sv) = spec.service {
                component_res[sv.component].push(r);
            }
        }
        let start = Instant::now();
        // The core's clock on CLOCK_MONOTONIC, the data plane's (`Instant` is the same clock).
        let start_mono_ns = heard::clock_ns().saturating_sub(start.elapsed().as_nanos() as u64);
        let incarnation = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)?
            .as_nanos() as u64;
        let mut core = Core::new(c.core_cfg.clone(), incarnation, start.elapsed(), &open);
        // A cold service runs here only if its address was found open (the core says so).
        let active: Vec<bool> = (0..here.len())
            .map(|k| core.component(k).state() != crate::core::component::State::Standby)
            .collect();
        let services = services::Services::start(
            &cfg.services,
            &here,
            &active,
            Path::new(RUN_ROOT)
                .join(crate::sys::netns::current_id()?)
                .join("services"),
            mailbox.clone(),
        );
        // Kernel-assisted liveness: if this process dies unannounced, the data plane answers
        // the peers' heartbeats with this notice; they hold the token's hash from our
        // heartbeats.
        let token = random_token()?;
        let port = cfg.node.listen[0].port();
        if cfg.node.listen.iter().any(|l| l.port() != port) {
            log::warn!("the paths listen on different ports; exit notices answer port {port} only");
        }
        let (registration, heard) = match liveness::register(
            &pins,
            port,
            wire::encode_notice(incarnation, &token),
        ) {
            Ok((r, heard)) => {
                core.set_exit_commit(wire::commit(&token));
                (Some(r), Some(heard))
            }
            Err(e) if c.core_cfg.lease => {
                return Err(e.context(
                    "the gates' lease needs the data plane's registration (set lease.enabled = false in the configuration to run without leases, with a fence command)",
                ));
            }
            Err(e) => {
                log::warn!(
                        "no kernel-assisted liveness (peers will wait out the dead time if this agent dies): {e:#}"
                    );
                (None, None)
            }
        };
        if let Some(reg) = registration.as_ref().filter(|_| c.core_cfg.lease) {
            // Gates found open serve on: under the lease the stopping agent left (over its
            // restart), renewed once this agent is ready. An earlier release's unleased
            // entries become leased, for the dead time from now (what the peers count from
            // this agent's first heartbeat): a release without leases left none.
            if lapsed && !open.is_empty() {
                let dead = core.lease_span();
                reg.lease
                    .extend(start_mono_ns + (start.elapsed() + dead).as_nanos() as u64);
            }
            for &(r, _) in &open {
                for t in &c.targets[r] {
                    gates.set(t, GateValue::new(GateAction::Open).leased())?;
                }
            }
        }
        if !lan_up {
            core.handle_lan(start.elapsed(), false);
        }
        let peers: Vec<usize> = (0..c.core_cfg.nodes.len())
            .filter(|&p| p != c.core_cfg.me)
            .collect();
        if !line_up {
            for &p in &peers {
                core.handle_line_carrier(start.elapsed(), p, false);
            }
        }
        log::info!(
            "node {} running: {} path(s), {} resource(s), configuration digest {}",
            cfg.node.name,
            c.listen.len(),
            c.targets.len(),
            c.core_cfg
                .digest
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let disk = match (c.storage, &cfg.storage) {
            (Some(opened), Some(st)) => Some(disk::Disk::start(
                opened,
                &c.core_cfg,
                st.interval,
                realtime_priority,
                mailbox.clone(),
            )?),
            _ => None,
        };
        let mut cold = vec![Vec::new(); c.core_cfg.resources.len()];
        for (k, svc) in cfg.services.iter().enumerate() {
            let Some(commands) = services.commands(k).filter(|_| svc.cold) else {
                continue;
            };
            for spec in &c.core_cfg.resources {
                if let Some(sv) = spec.service.filter(|sv| sv.component == k) {
                    cold[sv.address].push((svc.clone(), commands.clone()));
                }
            }
        }
        let stateful = stateful::Stateful::start(
            cold,
            (0..c.core_cfg.resources.len())
                .map(|r| resource_name(&c.core_cfg, r))
                .collect(),
            disk.as_ref().map(disk::Disk::requests),
            mailbox.clone(),
        );
        let peer_wake = vec![vec![None; c.listen.len()]; c.peer_paths.len()];
        Ok(Shell {
            peer_wake,
            cfg,
            core,
            core_cfg: c.core_cfg,
            peer_paths: c.peer_paths,
            targets: c.targets,
            gates: gates_slot.take().expect("opened above"),
            epochs: c.epochs,
            lan: c.lan,
            mac: c.mac,
            dedicated: c.dedicated,
            line_peers: peers,
            listen: c.listen,
            heard,
            received: Default::default(),
            wake: c.wake,
            fencing: Vec::new(),
            registration,
            announcer,
            refused: Default::default(),
            audit_next: 0,
            exit_armed: vec![(0, Vec::new()); here.len()],
            component_res,
            services,
            stateful,
            peer_macs: macs.lan,
            peer_line_macs: macs.line,
            line,
            start,
            start_mono_ns,
            lease_lapsed: false,
            disk,
            disk_unreadable: false,
        })
    }
}

/// Has the namespace's lease lapsed (or is there none yet)? A leased gate entry serves only
/// while it runs.
fn lease_lapsed(pins: &PinDir) -> bool {
    match crate::dataplane::lease::Lease::open(&pins.lease_map()) {
        Ok(lease) => lease.until_ns() <= heard::clock_ns(),
        Err(_) => true,
    }
}

/// What the checks found, for the changes to use.
struct Checked {
    lan: Iface,
    mac: [u8; 6],
    dedicated: Option<u32>,
    heartbeat_ifaces: Vec<Iface>,
    listen: Vec<UdpSocket>,
    wake: Vec<UdpSocket>,
    core_cfg: crate::core::node::CoreConfig,
    peer_paths: Vec<Vec<SocketAddr>>,
    targets: Vec<Vec<Target>>,
    epochs: Epochs,
    /// The shared storage area, opened and checked.
    storage: Option<disk::Opened>,
}

/// How often the peers' MACs are read again from the neighbour table.
const MAC_REFRESH: Duration = Duration::from_millis(250);
use super::RT_PRIORITY;
