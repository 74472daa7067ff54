//! Where one interface's gate lives in bpffs: `/sys/fs/bpf/takeover/<netns>/<iface>/`.
use std::path::{Path, PathBuf};

use anyhow::Result;
use takeover_common::{
    COUNTERS_MAP, EXIT_LINK_PIN, GATES_MAP, HEARD_MAP, INFO_MAP, LEASE_MAP, LIVENESS_MAP, PIN_ROOT,
    REDIRECT_MAP, TC_LINK_PIN, XDP_LINK_PIN,
};

use crate::sys::netns;

/// The pin directory of one interface in the current network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinDir {
    pub iface: String,
    pub path: PathBuf,
}

impl PinDir {
    /// For `iface` in the current network namespace.
    pub fn for_iface(iface: &str) -> Result<Self> {
        Ok(Self::under(&namespace_dir()?, iface))
    }

    /// For `iface` under an explicit namespace directory (tests use their own roots).
    pub fn under(ns_dir: &Path, iface: &str) -> Self {
        Self {
            iface: iface.to_string(),
            path: ns_dir.join(iface),
        }
    }

    pub fn xdp_link(&self) -> PathBuf {
        self.path.join(XDP_LINK_PIN)
    }

    pub fn tc_link(&self) -> PathBuf {
        self.path.join(TC_LINK_PIN)
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The namespace's directory, which holds this interface's.
    pub fn namespace(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new(PIN_ROOT))
    }

    /// The namespace's agent liveness map, shared by every interface's gate.
    pub fn liveness_map(&self) -> PathBuf {
        self.namespace().join(LIVENESS_MAP)
    }

    /// The namespace's ring of heartbeats the gates took for the agent.
    pub fn heard_map(&self) -> PathBuf {
        self.namespace().join(HEARD_MAP)
    }

    /// The namespace's lease of the agent (see `takeover_common::LEASE_MAP`).
    pub fn lease_map(&self) -> PathBuf {
        self.namespace().join(LEASE_MAP)
    }

    /// The maps every interface's gate of the namespace shares.
    pub fn namespace_maps(&self) -> [PathBuf; 3] {
        [self.liveness_map(), self.heard_map(), self.lease_map()]
    }

    /// The namespace's link of the agent-exit tracepoint.
    pub fn exit_link(&self) -> PathBuf {
        self.namespace().join(EXIT_LINK_PIN)
    }

    /// Every map the object pins, by name.
    pub const MAPS: [&'static str; 4] = [GATES_MAP, COUNTERS_MAP, REDIRECT_MAP, INFO_MAP];

    /// True if the gate table is pinned, i.e. `attach` ran and `detach` did not.
    pub fn is_attached(&self) -> bool {
        self.map(GATES_MAP).exists()
    }
}

/// `/sys/fs/bpf/takeover/<netns>` of the current network namespace.
pub fn namespace_dir() -> Result<PathBuf> {
    Ok(Path::new(PIN_ROOT).join(netns::current_id()?))
}

/// Every interface with a pinned gate in the current network namespace, sorted by name.
pub fn attached() -> Result<Vec<PinDir>> {
    let dir = namespace_dir()?;
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Ok(out);
    };
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pins = PinDir::under(&dir, &name);
        if pins.is_attached() {
            out.push(pins);
        }
    }
    out.sort_by(|a, b| a.iface.cmp(&b.iface));
    Ok(out)
}
