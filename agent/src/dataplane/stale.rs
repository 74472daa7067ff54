//! Pins that no gate of this namespace uses any more, and what `attach` does with them.
//!
//! A gate is live only while its pinned XDP link is attached to the interface of this
//! namespace whose name its directory has. Anything else pinned is stale: the interface was
//! deleted (the kernel leaves the link defunct), or the pins are a dead namespace's (before
//! namespace cookies, pins were keyed by the namespace's inode, which the kernel reuses).
//! A stale gate table is never reused: it would open, for a standby that heard no one, an
//! address its previous holder served. The namespace's liveness map is stale with its last
//! gate: reused, a dead agent's exit notice would answer live agents' heartbeats.
use std::{
    fs::File,
    io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use takeover_common::PIN_ROOT;

use super::{attach::remove_pins, liveness, pinned_link, pins::PinDir};
use crate::sys::{iface, netns};

/// `None` if the gate pinned in `pins` is live here, else why it is stale.
pub fn why_stale(pins: &PinDir) -> Result<Option<String>> {
    let link = pins.xdp_link();
    let ifindex = match pinned_link::ifindex(&link) {
        Ok(i) => i,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Some("no XDP link is pinned with it".into()))
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", link.display())),
    };
    Ok(match (ifindex, iface::name_of(ifindex)) {
        (0, _) => Some("its interface was deleted".into()),
        (_, Some(name)) if name == pins.iface => None,
        (i, Some(name)) => Some(format!(
            "its XDP link is on interface {i}, which is {name} here"
        )),
        (i, None) => Some(format!(
            "its XDP link is on interface {i}, which is not in this network namespace"
        )),
    })
}

/// The interface directories in a namespace directory.
pub fn gate_dirs(ns_dir: &Path) -> Vec<PinDir> {
    let mut out: Vec<PinDir> = std::fs::read_dir(ns_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| PinDir::under(ns_dir, &e.file_name().to_string_lossy()))
        .collect();
    out.sort_by(|a, b| a.iface.cmp(&b.iface));
    out
}

/// Removes every stale gate of the namespace directory `ns_dir`, and its namespace-wide pins
/// (liveness map, heartbeat ring, exit tracepoint) if no gate is left. Returns what it did,
/// one sentence each, for the operator.
pub fn sweep(ns_dir: &Path) -> Result<Vec<String>> {
    let any = PinDir::under(ns_dir, "-");
    let [live, heard, lease] = any.namespace_maps();
    let wide = [live, heard, lease, any.exit_link()];
    let had_wide = wide.iter().any(|p| p.exists());
    let mut notes = Vec::new();
    for pins in gate_dirs(ns_dir) {
        if let Some(why) = why_stale(&pins)? {
            // The last gate's removal takes the namespace-wide pins along.
            remove_pins(&pins);
            notes.push(format!(
                "removed the stale gate pinned for {} in {} ({why}); its table is not reused",
                pins.iface,
                pins.path.display()
            ));
        }
    }
    if gate_dirs(ns_dir).is_empty() && ns_dir.exists() {
        let _ = pinned_link::detach(&any.exit_link());
        for p in &wide {
            let _ = std::fs::remove_file(p);
        }
        let _ = std::fs::remove_dir(ns_dir);
    }
    if had_wide && !any.liveness_map().exists() {
        notes.push(format!(
            "removed the stale liveness map, heartbeat ring and exit tracepoint in {} \
             (no gate is attached with them): a dead agent's registration is not reused",
            ns_dir.display()
        ));
    }
    Ok(notes)
}

/// Where an earlier `takeover` kept the current namespace's pins (`net-<inode>`), if that
/// differs from where this one does.
fn legacy_dir() -> Result<Option<PathBuf>> {
    let (id, old) = (netns::current_id()?, netns::inode_id()?);
    Ok((id != old).then(|| Path::new(PIN_ROOT).join(old)))
}

/// Pins an earlier `takeover` left under this namespace's inode: adopted if one of its gates
/// is attached here (an upgrade keeps the gates, their tables and the agent's epochs), else
/// removed (they are a deleted namespace's whose inode this one reuses, or all stale).
pub fn adopt_legacy(ns_dir: &Path) -> Result<Vec<String>> {
    let Some(old) = legacy_dir()? else {
        return Ok(Vec::new());
    };
    if !old.exists() {
        return Ok(Vec::new());
    }
    if let Some(pid) = liveness::agent_alive(&old)? {
        bail!(
            "an agent of an earlier takeover (pid {pid}) runs in this network namespace with \
             its pins in {}; stop it (SIGTERM) first",
            old.display()
        );
    }
    let old_run = run_dir_of(&old);
    let mut live = Vec::new();
    for pins in gate_dirs(&old) {
        if why_stale(&pins)?.is_none() {
            live.push(pins.iface);
        }
    }
    if live.is_empty() {
        let mut notes = sweep(&old)?;
        let _ = std::fs::remove_dir_all(&old_run);
        let _ = std::fs::remove_dir(&old);
        notes.push(format!(
            "removed {} of an earlier takeover: none of its gates is attached here \
             (a deleted namespace's, whose inode this one reuses)",
            old.display()
        ));
        return Ok(notes);
    }
    if ns_dir.exists() {
        bail!(
            "gates on {} are pinned both in {} (by an earlier takeover) and in {}; run \
             `takeover detach` for them and attach again",
            live.join(", "),
            old.display(),
            ns_dir.display()
        );
    }
    std::fs::rename(&old, ns_dir)
        .with_context(|| format!("moving {} to {}", old.display(), ns_dir.display()))?;
    let new_run = run_dir_of(ns_dir);
    if old_run.exists() && !new_run.exists() {
        std::fs::rename(&old_run, &new_run)
            .with_context(|| format!("moving {} to {}", old_run.display(), new_run.display()))?;
    }
    Ok(vec![format!(
        "adopted the gates on {} pinned by an earlier takeover: {} is now {}",
        live.join(", "),
        old.display(),
        ns_dir.display()
    )])
}

/// The agent's files (control socket, epochs) beside a namespace's pins: `/run/takeover/<id>`.
pub fn run_dir_of(ns_dir: &Path) -> PathBuf {
    Path::new(RUN_ROOT).join(ns_dir.file_name().unwrap_or_default())
}

/// Where the agent keeps its files, one directory per namespace id.
pub const RUN_ROOT: &str = "/run/takeover";

/// An exclusive lock on the pin root, held while pins are checked and changed, so that two
/// `takeover` processes (an attach and a cleanup) never remove what the other is making.
pub struct RootLock(#[allow(dead_code)] File);

pub fn lock_root() -> Result<RootLock> {
    std::fs::create_dir_all(PIN_ROOT).with_context(|| format!("cannot create {PIN_ROOT}"))?;
    let f = File::open(PIN_ROOT).with_context(|| format!("opening {PIN_ROOT}"))?;
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("locking {PIN_ROOT}"));
    }
    Ok(RootLock(f))
}
