//! Every network namespace alive on this machine that a process can find, by id (see
//! [`super::netns::current_id`]), for `takeover cleanup` to tell a dead namespace's pins from
//! a live one's.
//!
//! A network namespace lives while a task is in it, a file refers to it (a bind mount such as
//! /run/netns/NAME, an open descriptor), or a socket of it is open. This finds the first two
//! kinds: every task's /proc/PID/task/TID/ns/net, every nsfs mount of this mount namespace,
//! and every descriptor open on a namespace. A namespace held only by a socket, or only by a
//! mount in another mount namespace, is not found; cleanup also keeps a directory whose gate
//! is still attached to an interface, which such a namespace would still have.
use std::{
    collections::{BTreeSet, HashSet},
    fs::File,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::Result;

use super::netns;

/// The ids of every live network namespace found: for each, its cookie id and its inode id
/// (the latter names an earlier takeover's directories).
pub fn live_ids() -> Result<HashSet<String>> {
    let mut seen = HashSet::new();
    let mut ids = HashSet::new();
    for path in candidates() {
        // Opening pins the namespace: it cannot die (and its inode be reused) while we look.
        let Ok(file) = File::open(&path) else {
            continue;
        };
        let Ok(meta) = file.metadata() else {
            continue;
        };
        if !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        ids.insert(format!("{}{}", netns::INODE_PREFIX, meta.ino()));
        // A namespace that cannot be entered still counts by its inode (kept, never removed).
        if let Ok(id) = netns::id_of(&file) {
            ids.insert(id);
        }
    }
    Ok(ids)
}

fn candidates() -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let numeric = |d: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
            .map(|e| e.path())
            .collect()
    };
    for proc in numeric(Path::new("/proc")) {
        for task in numeric(&proc.join("task")) {
            out.insert(task.join("ns/net"));
        }
        for fd in numeric(&proc.join("fd")) {
            let is_netns =
                std::fs::read_link(&fd).is_ok_and(|t| t.to_string_lossy().starts_with("net:["));
            if is_netns {
                out.insert(fd);
            }
        }
    }
    // Bind mounts: /run/netns/NAME (ip netns), container runtimes' own directories.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mounts.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
        let fields: Vec<&str> = line.split(' ').collect();
        let fstype = fields
            .iter()
            .position(|f| *f == "-")
            .and_then(|i| fields.get(i + 1));
        if fstype == Some(&"nsfs") && fields.get(3).is_some_and(|r| r.starts_with("net:[")) {
            if let Some(mp) = fields.get(4) {
                out.insert(PathBuf::from(unescape(mp)));
            }
        }
    }
    for e in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        out.insert(e.path());
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/run/netns/a\040b"), "/run/netns/a b");
        assert_eq!(unescape(r"/x\134y"), r"/x\y");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn the_own_namespace_is_live() {
        let ids = live_ids().unwrap();
        assert!(ids.contains(&netns::inode_id().unwrap()));
        // Finding the cookie means entering each namespace, which needs root.
        if unsafe { libc::geteuid() } == 0 {
            assert!(ids.contains(&netns::current_id().unwrap()));
        }
    }
}
