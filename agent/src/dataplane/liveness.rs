//! Kernel-assisted liveness: the agent registers its process with the data plane, and the
//! kernel tells the peers when that process dies unannounced (see `takeover_common::Liveness`).
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{Array, HashMap, Map, MapData},
    programs::{links::FdLink, RawTracePoint},
};
use takeover_common::{
    ExitPlan, ExitPlanKey, Liveness, AGENT_RUNNING, AGENT_STOPPING, EXIT_LINK_PIN, EXIT_PLANS_MAP,
    EXIT_PROGRAM, HEARD_MAP, LEASE_MAP, LIVENESS_MAP, MAX_PLANS_PER_PROCESS, NOTICE_LEN,
};

use super::{attach::loader, heard::HeardRing, lease::Lease, pins::PinDir, OBJECT};

/// This agent's registration; dropping it leaves the registration as it is (the kernel
/// reports the exit that follows, unless [`Registration::stopping`] said it is planned).
pub struct Registration {
    map: Array<MapData, Liveness>,
    entry: Liveness,
    /// The exit tracepoint's plans (see `takeover_common::ExitPlan`), and how many are armed
    /// per process.
    plans: HashMap<MapData, ExitPlanKey, ExitPlan>,
    armed: std::collections::BTreeMap<u32, u32>,
    /// The lease on the gates marked leased (see `lease`).
    pub lease: Lease,
}

/// Registers the calling process as the agent of this network namespace: peers' heartbeats
/// to `port` on any interface with a gate (`pins` is one of them) get `notice` back once the
/// process has exited without calling [`Registration::stopping`]. Attaches the exit
/// tracepoint afresh each time (its pin is replaced, so one is left, never two). From then on
/// the gates take the peers' heartbeats to `port` into the returned ring.
pub fn register(
    pins: &PinDir,
    port: u16,
    notice: [u8; NOTICE_LEN],
) -> Result<(Registration, HeardRing)> {
    let mut ebpf = loader(pins)
        .load(OBJECT)
        .map_err(|e| anyhow!("cannot load the eBPF object for the exit tracepoint: {e}"))?;
    let prog: &mut RawTracePoint = ebpf
        .program_mut(EXIT_PROGRAM)
        .context("the eBPF object has no exit tracepoint")?
        .try_into()?;
    prog.load()
        .map_err(|e| anyhow!("cannot load {EXIT_PROGRAM}: {e}"))?;
    let id = prog
        .attach("sched_process_exit")
        .map_err(|e| anyhow!("cannot attach to the sched_process_exit tracepoint: {e}"))?;
    let link: FdLink = prog.take_link(id)?.into();
    let pin = pins.exit_link();
    // bpffs refuses names with a dot.
    let tmp = pin.with_file_name(format!("{EXIT_LINK_PIN}_new"));
    let _ = std::fs::remove_file(&tmp);
    link.pin(&tmp)
        .with_context(|| format!("pinning {}", tmp.display()))?;
    // rename(2) replaces the old pin at once; the old link goes with its last reference.
    std::fs::rename(&tmp, &pin).with_context(|| format!("pinning {}", pin.display()))?;

    let mut heard = HeardRing::new(
        ebpf.take_map(HEARD_MAP)
            .context("the eBPF object has no HEARD map")?,
    )?;
    // What a previous agent left unread is not news to this one.
    heard.drain(|_| {});
    let map = ebpf
        .take_map(LIVENESS_MAP)
        .context("the eBPF object has no LIVENESS map")?;
    let plans = ebpf
        .take_map(EXIT_PLANS_MAP)
        .context("the eBPF object has no EXIT_PLANS map")?;
    let lease = Lease::new(
        ebpf.take_map(LEASE_MAP)
            .context("the eBPF object has no LEASE map")?,
    )?;
    let mut reg = Registration {
        lease,
        plans: HashMap::try_from(plans)?,
        armed: Default::default(),
        map: Array::try_from(map)?,
        entry: Liveness {
            tgid: std::process::id(),
            state: AGENT_RUNNING,
            port,
            _pad: [0; 6],
            notice,
        },
    };
    reg.write()?;
    Ok((reg, heard))
}

impl Registration {
    fn write(&mut self) -> Result<()> {
        self.map
            .set(0, self.entry, 0)
            .context("writing the agent's liveness entry")
    }

    /// Arms what the gate table gets the moment process `tgid` exits (`plans` empty: nothing;
    /// at most `MAX_PLANS_PER_PROCESS`, the rest is left to the agent).
    pub fn arm_exit(&mut self, tgid: u32, plans: &[ExitPlan]) -> Result<()> {
        let n = plans.len().min(MAX_PLANS_PER_PROCESS as usize) as u32;
        for (index, plan) in plans.iter().take(n as usize).enumerate() {
            let key = ExitPlanKey {
                tgid,
                index: index as u32,
            };
            self.plans
                .insert(key, plan, 0)
                .context("writing an exit plan")?;
        }
        let before = self.armed.get(&tgid).copied().unwrap_or(0);
        // From the end: the tracepoint stops at the first missing index.
        for index in (n..before).rev() {
            let _ = self.plans.remove(&ExitPlanKey { tgid, index });
        }
        if n == 0 {
            self.armed.remove(&tgid);
        } else {
            self.armed.insert(tgid, n);
        }
        Ok(())
    }

    /// The agent is about to exit for a restart (its peers were told): no exit notice.
    pub fn stopping(&mut self) -> Result<()> {
        self.entry.state = AGENT_STOPPING;
        self.write()
    }
}

/// The registration pinned in the namespace directory `ns_dir`, if any.
pub fn registered(ns_dir: &Path) -> Result<Option<Liveness>> {
    let path = ns_dir.join(LIVENESS_MAP);
    if !path.exists() {
        return Ok(None);
    }
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let map: Array<MapData, Liveness> = Array::try_from(Map::from_map_data(data)?)?;
    Ok(Some(map.get(&0, 0)?))
}

/// The pid of the agent registered in `ns_dir` if that process still runs: registered as
/// running or stopping (an agent killed unannounced reads exited), and a live process of the
/// same program (a pid reused by another program does not count).
pub fn agent_alive(ns_dir: &Path) -> Result<Option<u32>> {
    let Some(entry) = registered(ns_dir)? else {
        return Ok(None);
    };
    if !matches!(entry.state, AGENT_RUNNING | AGENT_STOPPING) || entry.tgid == 0 {
        return Ok(None);
    }
    let pid = entry.tgid;
    let comm = |p: &str| std::fs::read_to_string(format!("/proc/{p}/comm")).ok();
    let alive = pid != std::process::id()
        // A zombie (exited, not yet reaped) has no namespaces left to read.
        && std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok()
        && comm(&pid.to_string()).is_some_and(|c| Some(c) == comm("self"));
    Ok(alive.then_some(pid))
}

/// The agent that manages the gates of the current network namespace, if one runs: its pid.
/// After a SIGTERM its registration says stopping; once the process is gone the gates belong
/// to nobody until the next agent starts (and keeps what it finds open).
pub fn agent_in_charge() -> Result<Option<u32>> {
    let dir = super::pins::namespace_dir()?;
    let Some(pid) = agent_alive(&dir)? else {
        return Ok(None);
    };
    // The agent of this namespace lives in it: a registration of another is not ours.
    use std::os::unix::fs::MetadataExt;
    let ino = |p: String| std::fs::metadata(p).map(|m| m.ino()).ok();
    let here = ino("/proc/thread-self/ns/net".into());
    Ok((here.is_some() && ino(format!("/proc/{pid}/ns/net")) == here).then_some(pid))
}
