//! Attaching the gate to an interface (XDP ingress + TC egress) and detaching it.
//!
//! Everything is pinned under the interface's [`PinDir`], so the gate keeps working with no
//! agent running. Attaching is idempotent: live pinned links are kept as they are (their gate
//! table and counters too), so a second `attach` never interrupts traffic. What is pinned but
//! not attached here is stale (see [`super::stale`]): removed, never reused.
use std::{fmt, io, path::PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, Map, MapData},
    programs::{links::FdLink, tc, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode},
    util::KernelVersion,
    Ebpf, EbpfLoader,
};
use takeover_common::{
    ABI_VERSION, HEARD_MAP, INFO_MAP, LEASE_MAP, LIVENESS_MAP, TC_PROGRAM, XDP_PROGRAM,
};

use super::{pinned_link, pins::PinDir, stale, upgrade, OBJECT};
use crate::sys::{bpffs, iface::Iface};

/// How the operator wants XDP attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttachMode {
    /// Driver (native) mode if the driver supports it, else generic.
    #[default]
    Auto,
    Driver,
    Generic,
}

/// What `attach` did for the ingress program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttach {
    Driver,
    /// Generic (skb) mode: works everywhere, costs more per packet.
    Generic,
    /// A live link was pinned already and was kept.
    Kept,
}

/// What `attach` did for the egress program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Egress {
    /// A tcx link (kernel >= 6.6), pinned.
    Tcx,
    /// A clsact filter through netlink (older kernels); it stays with the qdisc.
    Netlink,
    Kept,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub iface: String,
    pub xdp: XdpAttach,
    pub egress: Egress,
    pub pins: PathBuf,
    /// Stale pins found and removed, or an earlier takeover's adopted: one sentence each.
    pub notes: Vec<String>,
}

impl fmt::Display for XdpAttach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpAttach::Driver => "driver mode",
            XdpAttach::Generic => "generic mode",
            XdpAttach::Kept => "already attached, kept",
        })
    }
}

impl fmt::Display for Egress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Egress::Tcx => "tcx link",
            Egress::Netlink => "clsact filter",
            Egress::Kept => "already attached, kept",
        })
    }
}

fn tcx_supported() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// Is the link pinned at `pin` attached to `iface`? A defunct link (its interface was
/// deleted) is unpinned so that a fresh one can take its place. (For the XDP link, the stale
/// sweep has already removed the whole gate in that case.)
fn live_link(pin: &std::path::Path, iface: &Iface) -> Result<bool> {
    match pinned_link::ifindex(pin) {
        Ok(ifindex) if ifindex == iface.index => Ok(true),
        Ok(_) => {
            std::fs::remove_file(pin)
                .with_context(|| format!("removing stale pin {}", pin.display()))?;
            Ok(false)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("reading pinned link {}", pin.display())),
    }
}

/// Attaches the gate to `iface` (or keeps what is attached) and pins it.
pub fn attach(iface: &Iface, mode: AttachMode) -> Result<Attached> {
    bpffs::ensure_mounted()?;
    let _lock = stale::lock_root()?;
    let pins = PinDir::for_iface(&iface.name)?;
    let mut notes = stale::adopt_legacy(pins.namespace())?;
    let mut out = attach_at(&pins, iface, mode)?;
    notes.append(&mut out.notes);
    out.notes = notes;
    Ok(out)
}

/// [`attach`] with an explicit pin directory.
pub fn attach_at(pins: &PinDir, iface: &Iface, mode: AttachMode) -> Result<Attached> {
    // First, so that neither a stale table nor a dead agent's liveness map is loaded below.
    let notes = stale::sweep(pins.namespace())?;
    check_abi(pins)?;
    let xdp_live = live_link(&pins.xdp_link(), iface)?;
    let tc_live = live_link(&pins.tc_link(), iface)?;
    // A gate of a release before the lease has no LEASE pin: the programs are swapped below
    // all the same (the object's loader creates and pins it).
    let maps_pinned = PinDir::MAPS.iter().all(|m| pins.map(m).exists())
        && pins.liveness_map().exists()
        && pins.heard_map().exists();
    let mut out = Attached {
        iface: iface.name.clone(),
        xdp: XdpAttach::Kept,
        egress: Egress::Kept,
        pins: pins.path.clone(),
        notes,
    };
    if xdp_live && (tc_live || !tcx_supported()) && maps_pinned {
        out.notes.extend(
            upgrade::replace_programs(pins, tc_live).with_context(|| {
                format!("bringing the live gate on {} to this build", iface.name)
            })?,
        );
        return Ok(out);
    }

    let created_dir = !pins.path.exists();
    std::fs::create_dir_all(&pins.path)
        .with_context(|| format!("cannot create pin directory {}", pins.path.display()))?;
    let result = (|| -> Result<()> {
        let mut ebpf = loader(pins)
            .load(OBJECT)
            .map_err(|e| anyhow!("cannot load the gate's eBPF object: {}", chain(&e)))?;
        write_abi(&mut ebpf)?;
        if !xdp_live {
            out.xdp = attach_xdp(&mut ebpf, pins, iface, mode)?;
        }
        if !tc_live {
            match attach_tc(&mut ebpf, pins, iface) {
                Ok(e) => out.egress = e,
                Err(e) => {
                    // Leave things as they were: drop the ingress link made just now.
                    if !xdp_live {
                        let _ = pinned_link::detach(&pins.xdp_link());
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        if created_dir {
            remove_pins(pins);
        }
        return Err(e);
    }
    Ok(out)
}

/// A loader that pins (or reuses) the interface's maps in its directory and the namespace's
/// liveness map and heartbeat ring in the namespace's.
pub(super) fn loader(pins: &PinDir) -> EbpfLoader<'_> {
    let mut l = EbpfLoader::new();
    l.default_map_pin_directory(&pins.path)
        .map_pin_path(LIVENESS_MAP, pins.liveness_map())
        .map_pin_path(HEARD_MAP, pins.heard_map())
        .map_pin_path(LEASE_MAP, pins.lease_map());
    l
}

/// Refuses pins written by a `takeover` with another map layout.
fn check_abi(pins: &PinDir) -> Result<()> {
    let path = pins.map(INFO_MAP);
    if !path.exists() {
        return Ok(());
    }
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let info: Array<MapData, u32> = Array::try_from(Map::from_map_data(data)?)?;
    let version = info.get(&0, 0)?;
    if version != 0 && version != ABI_VERSION {
        bail!(
            "{} holds a gate of map layout {version}, this takeover uses {ABI_VERSION}; \
             run `takeover detach --iface {}` with the takeover that attached it",
            pins.path.display(),
            pins.iface
        );
    }
    Ok(())
}

fn write_abi(ebpf: &mut Ebpf) -> Result<()> {
    let map = ebpf
        .map_mut(INFO_MAP)
        .context("the eBPF object has no INFO map")?;
    let mut info: Array<&mut MapData, u32> = Array::try_from(map)?;
    info.set(0, ABI_VERSION, 0)?;
    Ok(())
}

fn attach_xdp(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    iface: &Iface,
    mode: AttachMode,
) -> Result<XdpAttach> {
    let prog: &mut Xdp = ebpf
        .program_mut(XDP_PROGRAM)
        .context("the eBPF object has no XDP program")?
        .try_into()?;
    prog.load().map_err(|e| load_error(XDP_PROGRAM, e))?;
    let tries: &[(XdpMode, XdpAttach)] = match mode {
        AttachMode::Auto => &[
            (XdpMode::Driver, XdpAttach::Driver),
            (XdpMode::Skb, XdpAttach::Generic),
        ],
        AttachMode::Driver => &[(XdpMode::Driver, XdpAttach::Driver)],
        AttachMode::Generic => &[(XdpMode::Skb, XdpAttach::Generic)],
    };
    let mut last = None;
    for (xdp_mode, got) in tries {
        match prog.attach_to_if_index(iface.index, *xdp_mode) {
            Ok(id) => {
                let link = prog.take_link(id)?;
                let link: FdLink = link.try_into().map_err(|_| {
                    anyhow!("the kernel attached XDP without a bpf_link, which cannot be pinned (Linux >= 5.15 needed)")
                })?;
                link.pin(pins.xdp_link())
                    .with_context(|| format!("pinning {}", pins.xdp_link().display()))?;
                return Ok(*got);
            }
            Err(e) => last = Some(e),
        }
    }
    let e = last.expect("at least one mode tried");
    if busy(&e) {
        bail!(
            "{} already has an XDP program that takeover did not attach; remove it first \
             (ip link set dev {} xdp off)",
            iface.name,
            iface.name
        );
    }
    Err(anyhow!(
        "cannot attach XDP to {} ({mode:?} mode): {}",
        iface.name,
        chain(&e)
    ))
}

fn attach_tc(ebpf: &mut Ebpf, pins: &PinDir, iface: &Iface) -> Result<Egress> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(TC_PROGRAM)
        .context("the eBPF object has no TC program")?
        .try_into()?;
    prog.load().map_err(|e| load_error(TC_PROGRAM, e))?;
    let tcx = tcx_supported();
    if !tcx {
        // Before tcx: a filter on the clsact qdisc, which lives as long as the qdisc does.
        if let Err(e) = tc::qdisc_add_clsact(&iface.name) {
            if !matches!(&e, tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST))
            {
                return Err(anyhow!("cannot add a clsact qdisc to {}: {e}", iface.name));
            }
        }
    }
    let id = prog
        .attach(&iface.name, TcAttachType::Egress)
        .map_err(|e| {
            anyhow!(
                "cannot attach the egress classifier to {}: {}",
                iface.name,
                chain(&e)
            )
        })?;
    if !tcx {
        // Dropping the link would remove the filter; it must stay after this process exits.
        std::mem::forget(prog.take_link(id)?);
        return Ok(Egress::Netlink);
    }
    let link: FdLink = prog.take_link(id)?.try_into()?;
    link.pin(pins.tc_link())
        .with_context(|| format!("pinning {}", pins.tc_link().display()))?;
    Ok(Egress::Tcx)
}

fn busy(e: &ProgramError) -> bool {
    let text = chain(e);
    text.contains("Device or resource busy") || text.contains("File exists")
}

fn load_error(name: &str, e: ProgramError) -> anyhow::Error {
    if let ProgramError::LoadError {
        io_error,
        verifier_log,
    } = &e
    {
        let log = verifier_log.to_string();
        if std::env::var_os("TAKEOVER_VERIFIER_LOG").is_some() {
            eprintln!("{log}");
        }
        // The reason is the last line before the verifier's statistics.
        let last = log
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| {
                !l.is_empty() && !l.starts_with("processed ") && !l.starts_with("verification time")
            })
            .unwrap_or("");
        return anyhow!("the kernel's verifier rejected {name}: {io_error}: {last}");
    }
    anyhow!("cannot load {name}: {}", chain(&e))
}

/// An error and its causes on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

/// Detaches the gate from `iface_name` in the current network namespace and removes its pins
/// (gate table and counters included). Works also when the interface no longer exists.
pub fn detach(iface_name: &str) -> Result<()> {
    let pins = PinDir::for_iface(iface_name)?;
    detach_at(&pins)
}

pub fn detach_at(pins: &PinDir) -> Result<()> {
    if !pins.path.exists() {
        bail!(
            "nothing is attached to {} in this network namespace",
            pins.iface
        );
    }
    if !tcx_supported() && crate::sys::iface::index_of(&pins.iface)?.is_some() {
        let _ = tc::qdisc_detach_program(&pins.iface, TcAttachType::Egress, TC_PROGRAM);
    }
    remove_pins(pins);
    if pins.path.exists() {
        bail!("could not remove everything in {}", pins.path.display());
    }
    Ok(())
}

/// Detaches the links (synchronously) and removes every pin.
pub(super) fn remove_pins(pins: &PinDir) {
    let _ = pinned_link::detach(&pins.xdp_link());
    let _ = pinned_link::detach(&pins.tc_link());
    for m in PinDir::MAPS {
        let _ = std::fs::remove_file(pins.map(m));
    }
    let _ = std::fs::remove_dir(&pins.path);
    // When the namespace's last interface goes, so do its liveness map, heartbeat ring and exit
    // tracepoint.
    let ns = pins.namespace();
    let others = std::fs::read_dir(ns)
        .map(|rd| rd.flatten().any(|e| e.path().is_dir()))
        .unwrap_or(false);
    if !others {
        let _ = std::fs::remove_file(pins.exit_link());
        for m in pins.namespace_maps() {
            let _ = std::fs::remove_file(m);
        }
        let _ = std::fs::remove_dir(ns);
    }
}
