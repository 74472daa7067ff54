//! An upgrade in place: live gates attached by another build of `takeover` get this build's
//! programs.
//!
//! `attach` keeps live pinned links (and with them the gate table, the counters and the
//! traffic), so without this an upgraded agent would go on running the data plane of the
//! release that first attached the gate, with that release's rules. The programs behind the
//! pinned links are swapped atomically (BPF_LINK_UPDATE): no packet meets no program, and the
//! maps, pinned and of the same layout (checked before), are the new programs' maps.
use anyhow::{anyhow, Context, Result};
use aya::programs::{
    links::{FdLink, PinnedLink},
    loaded_programs,
    tc::SchedClassifierLink,
    xdp::XdpLink,
    SchedClassifier, Xdp,
};
use takeover_common::{TC_PROGRAM, XDP_PROGRAM};

use super::{attach::loader, pins::PinDir, OBJECT};

/// The tag (a hash of the instructions, map references masked) of the program behind the
/// link pinned at `pin`.
fn attached_tag(link: &FdLink) -> Result<u64> {
    let id = link.info().context("reading a pinned link")?.program_id();
    for info in loaded_programs() {
        let info = info.context("listing the loaded programs")?;
        if info.id() == id {
            return Ok(info.tag());
        }
    }
    Err(anyhow!("program {id} of a pinned link is not loaded"))
}

fn pinned(pin: &std::path::Path) -> Result<FdLink> {
    Ok(PinnedLink::from_pin(pin)
        .with_context(|| format!("opening {}", pin.display()))?
        .into())
}

/// Replaces the programs behind the live links pinned in `pins` (XDP, and the tcx link if
/// `tcx`) with this build's where they differ. Returns a sentence for the operator if it
/// replaced any.
pub fn replace_programs(pins: &PinDir, tcx: bool) -> Result<Option<String>> {
    let mut ebpf = loader(pins)
        .load(OBJECT)
        .map_err(|e| anyhow!("cannot load the gate's eBPF object: {e}"))?;
    let mut replaced = Vec::new();

    let xdp: &mut Xdp = ebpf
        .program_mut(XDP_PROGRAM)
        .context("the eBPF object has no XDP program")?
        .try_into()?;
    xdp.load().context("loading the XDP program")?;
    let link = pinned(&pins.xdp_link())?;
    if attached_tag(&link)? != xdp.info()?.tag() {
        let id = xdp
            .attach_to_link(XdpLink::try_from(link)?)
            .context("replacing the XDP program")?;
        // The pin holds the link; this handle only closes its descriptor.
        drop(xdp.take_link(id)?);
        replaced.push("ingress (XDP)");
    }

    if tcx {
        let tc: &mut SchedClassifier = ebpf
            .program_mut(TC_PROGRAM)
            .context("the eBPF object has no TC program")?
            .try_into()?;
        tc.load().context("loading the TC program")?;
        let link = pinned(&pins.tc_link())?;
        if attached_tag(&link)? != tc.info()?.tag() {
            let id = tc
                .attach_to_link(SchedClassifierLink::try_from(link)?)
                .context("replacing the egress program")?;
            drop(tc.take_link(id)?);
            replaced.push("egress (tcx)");
        }
    }
    Ok((!replaced.is_empty()).then(|| {
        format!(
            "the gate on {} ran another build's programs: {} replaced by this build's, \
             table and traffic kept",
            pins.iface,
            replaced.join(" and ")
        )
    }))
}
