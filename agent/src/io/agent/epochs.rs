//! The epochs of this node's open gates, kept between agent runs: in tmpfs beside the pins,
//! so they survive an agent restart (like the pinned gates) and not a reboot (which clears
//! the pins too). The core asks for them to be written before it opens (`Action::Persist`).
use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::sys::netns;

/// One line per resource: its name (the address, as the previous version wrote it) and
/// the epoch it was last opened in.
pub struct Epochs {
    path: PathBuf,
    map: BTreeMap<String, u64>,
}

impl Epochs {
    /// The file of `iface` in this network namespace, as it is (missing: none recorded).
    pub fn load(iface: &str) -> Result<Self> {
        let path = PathBuf::from(format!(
            "/run/takeover/{}/{iface}.epochs",
            netns::current_id()?
        ));
        Ok(Self::load_at(path))
    }

    pub fn load_at(path: PathBuf) -> Self {
        let map = std::fs::read_to_string(&path)
            .ok()
            .map(|s| {
                s.lines()
                    .filter_map(|l| {
                        let (name, e) = l.rsplit_once(' ')?;
                        Some((name.to_string(), e.parse().ok()?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self { path, map }
    }

    pub fn get(&self, resource: &str) -> Option<u64> {
        self.map.get(resource).copied()
    }

    /// Records `epochs` and writes the file through: a new file renamed over the old, so the
    /// next agent reads the old or the new, never half. Not synced to disk: its reader is the
    /// next agent on the same running kernel (the gates it is about live in bpffs and do not
    /// outlive a reboot either), and a sync costs a takeover up to a millisecond or more
    /// where /run is not tmpfs.
    pub fn record(&mut self, epochs: impl IntoIterator<Item = (String, u64)>) -> Result<()> {
        let mut next = self.map.clone();
        next.extend(epochs);
        let text: String = next.iter().map(|(n, e)| format!("{n} {e}\n")).collect();
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = self.path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            std::fs::rename(&tmp, &self.path)
        };
        write().with_context(|| format!("writing {}", self.path.display()))?;
        self.map = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_survive_a_reload_and_the_previous_format_reads() {
        let dir = std::env::temp_dir().join(format!("takeover-epochs-{}", std::process::id()));
        let path = dir.join("lan.epochs");
        // The previous version's file: `<ip> <epoch>` per line.
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&path, "10.0.0.1 4\nfd00::1 7\n").unwrap();
        let mut e = Epochs::load_at(path.clone());
        assert_eq!((e.get("10.0.0.1"), e.get("fd00::1")), (Some(4), Some(7)));
        e.record([
            ("10.0.0.1".to_string(), 5),
            ("10.0.0.2 tcp/80".to_string(), 1),
        ])
        .unwrap();
        let again = Epochs::load_at(path);
        assert_eq!(again.get("10.0.0.1"), Some(5));
        assert_eq!(again.get("fd00::1"), Some(7));
        assert_eq!(again.get("10.0.0.2 tcp/80"), Some(1));
        // A failed write changes nothing held.
        let mut bad = Epochs::load_at(PathBuf::from("/proc/takeover-no/lan.epochs"));
        assert!(bad.record([("x".to_string(), 1)]).is_err());
        assert_eq!(bad.get("x"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
