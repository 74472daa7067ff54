//! The epochs of this node's open gates, kept between agent runs beside the pins, so they
//! survive an agent restart (like the pinned gates) and not a reboot (which clears the pins
//! too). The core asks for them to be written before it opens (`Action::Persist`), so the
//! write is on a takeover's critical path: it is one append.
use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::sys::netns;

/// One line per opening: a resource's name (the address, as the previous version wrote it)
/// and the epoch it was opened in; the last line of a resource wins (as the previous
/// version read it too). Rewritten whole, renamed into place, when it has grown well past
/// what it holds.
pub struct Epochs {
    path: PathBuf,
    map: BTreeMap<String, u64>,
    /// Lines in the file, if it can be appended to (it ends with a whole line).
    lines: Option<usize>,
    /// Open for appending, once something was recorded.
    file: Option<File>,
}

/// Lines beyond which the file is rewritten: this, or twice the resources it holds.
const COMPACT_AFTER: usize = 1024;

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
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        // Whole lines only: a write cut short (a full disk) leaves a line without its end.
        let map = text
            .split_inclusive('\n')
            .filter_map(|l| l.strip_suffix('\n'))
            .filter_map(|l| {
                let (name, e) = l.rsplit_once(' ')?;
                Some((name.to_string(), e.parse().ok()?))
            })
            .collect();
        let whole = text.is_empty() || text.ends_with('\n');
        Self {
            path,
            map,
            lines: whole.then(|| text.matches('\n').count()),
            file: None,
        }
    }

    pub fn get(&self, resource: &str) -> Option<u64> {
        self.map.get(resource).copied()
    }

    /// Records `epochs` and writes them through, in one append (one write: the next reader
    /// finds all of it or none; a line cut short by a full disk is not read). Not
    /// synced to disk: its reader is the next agent on the same running kernel (the gates
    /// it is about live in bpffs and do not outlive a reboot either), and a sync, or the
    /// rename of a rewrite, costs a takeover 0.2 to 2 ms where /run is not tmpfs.
    pub fn record(&mut self, epochs: impl IntoIterator<Item = (String, u64)>) -> Result<()> {
        let new: Vec<(String, u64)> = epochs.into_iter().collect();
        let live = self.map.len()
            + new
                .iter()
                .filter(|(n, _)| !self.map.contains_key(n))
                .count();
        let result = match self.lines.map(|n| n + new.len()) {
            Some(n) if n <= COMPACT_AFTER.max(2 * live) => self.append(&new).map(|()| n),
            _ => {
                let mut all = self.map.clone();
                all.extend(new.iter().cloned());
                self.rewrite(&all).map(|()| all.len())
            }
        };
        match result {
            Ok(n) => {
                self.lines = Some(n);
                self.map.extend(new);
                Ok(())
            }
            Err(e) => {
                // What the file ends with is unknown now: the next write rewrites it whole.
                (self.lines, self.file) = (None, None);
                Err(e).with_context(|| format!("writing {}", self.path.display()))
            }
        }
    }

    fn append(&mut self, new: &[(String, u64)]) -> std::io::Result<()> {
        if self.file.is_none() {
            let dir = self.path.parent().unwrap_or(Path::new("/"));
            std::fs::create_dir_all(dir)?;
            let f = OpenOptions::new()
                .append(true)
                .create(true)
                .open(&self.path)?;
            self.file = Some(f);
        }
        let text: String = new.iter().map(|(n, e)| format!("{n} {e}\n")).collect();
        self.file
            .as_mut()
            .expect("opened above")
            .write_all(text.as_bytes())
    }

    /// The whole file anew, renamed over the old (a reader sees the old or the new).
    fn rewrite(&mut self, all: &BTreeMap<String, u64>) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir)?;
        let tmp = self.path.with_extension("tmp");
        let text: String = all.iter().map(|(n, e)| format!("{n} {e}\n")).collect();
        File::create(&tmp)?.write_all(text.as_bytes())?;
        std::fs::rename(&tmp, &self.path)?;
        // The handle held was the replaced file's.
        self.file = None;
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
        let again = Epochs::load_at(path.clone());
        assert_eq!(again.get("10.0.0.1"), Some(5));
        assert_eq!(again.get("fd00::1"), Some(7));
        assert_eq!(again.get("10.0.0.2 tcp/80"), Some(1));
        // Openings are appended; the file is rewritten whole when it has grown well past
        // what it holds, and reads the same.
        for epoch in 6..6 + 3 * COMPACT_AFTER as u64 {
            e.record([("10.0.0.1".to_string(), epoch)]).unwrap();
        }
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines <= COMPACT_AFTER + 1, "{lines} lines");
        let again = Epochs::load_at(path.clone());
        assert_eq!(again.get("10.0.0.1"), Some(5 + 3 * COMPACT_AFTER as u64));
        assert_eq!(again.get("fd00::1"), Some(7));
        // A line cut short (a full disk) is not read, and the next write rewrites the file.
        std::fs::write(&path, "10.0.0.1 4\n10.0.0.1 9").unwrap();
        let mut torn = Epochs::load_at(path.clone());
        assert_eq!(torn.get("10.0.0.1"), Some(4));
        torn.record([("fd00::1".to_string(), 8)]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "10.0.0.1 4\nfd00::1 8\n"
        );
        // A failed write changes nothing held.
        let mut bad = Epochs::load_at(PathBuf::from("/proc/takeover-no/lan.epochs"));
        assert!(bad.record([("x".to_string(), 1)]).is_err());
        assert_eq!(bad.get("x"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
