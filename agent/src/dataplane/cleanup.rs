//! `takeover cleanup`: the pins (/sys/fs/bpf/takeover/<id>/) and agent files
//! (/run/takeover/<id>/) of network namespaces that no longer exist.
//!
//! Namespace ids are never reused (cookies), so a deleted namespace's directories are never
//! found again by anyone: they only take memory, and a gate on an interface that outlived its
//! namespace (a physical device goes back to the root namespace) is still attached. A
//! directory goes when no live namespace has its id (see [`crate::sys::namespaces`]) and the
//! agent registered in it is not running. It stays, with the reason, if one of its gates is
//! still attached to an interface: its namespace may live on out of sight.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use takeover_common::PIN_ROOT;

use super::{
    attach::remove_pins,
    liveness, pinned_link,
    pins::PinDir,
    stale::{self, gate_dirs, run_dir_of, RUN_ROOT},
};
use crate::sys::{namespaces, netns};

/// What cleanup did with one namespace id's directories.
#[derive(Serialize, Debug)]
pub struct Outcome {
    pub id: String,
    /// The directories it has (pins and/or agent files).
    pub paths: Vec<String>,
    /// `removed`, `would remove` (dry run) or `kept`.
    pub action: &'static str,
    pub reason: String,
}

#[derive(Serialize, Debug)]
pub struct Report {
    /// Only namespaces found dead are listed; a live one's directories are never touched.
    pub namespaces: Vec<Outcome>,
    /// How many directories belong to live namespaces (left alone).
    pub live: usize,
}

fn is_id(name: &str) -> bool {
    [netns::COOKIE_PREFIX, netns::INODE_PREFIX].iter().any(|p| {
        name.strip_prefix(p)
            .is_some_and(|n| n.parse::<u64>().is_ok())
    })
}

fn ids_under(root: &Path) -> Vec<String> {
    std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| is_id(n))
        .collect()
}

/// Removes (or with `dry_run` lists) the directories of every dead namespace.
pub fn cleanup(dry_run: bool) -> Result<Report> {
    let _lock = stale::lock_root()?;
    let live = namespaces::live_ids()?;
    let mut ids: Vec<String> = ids_under(Path::new(PIN_ROOT));
    ids.extend(ids_under(Path::new(RUN_ROOT)));
    ids.sort();
    ids.dedup();
    let mut report = Report {
        namespaces: Vec::new(),
        live: 0,
    };
    for id in ids {
        if live.contains(&id) {
            report.live += 1;
            continue;
        }
        let pins = Path::new(PIN_ROOT).join(&id);
        let run = run_dir_of(&pins);
        let paths: Vec<String> = [&pins, &run]
            .iter()
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        let (action, reason) = match keep_reason(&pins)? {
            Some(why) => ("kept", why),
            None if dry_run => ("would remove", "its network namespace is gone".into()),
            None => {
                remove(&pins, &run)?;
                ("removed", "its network namespace is gone".into())
            }
        };
        report.namespaces.push(Outcome {
            id,
            paths,
            action,
            reason,
        });
    }
    Ok(report)
}

/// Why a dead-looking namespace's directory must stay, if it must.
fn keep_reason(pins: &Path) -> Result<Option<String>> {
    if let Some(pid) = liveness::agent_alive(pins)? {
        return Ok(Some(format!(
            "its agent (pid {pid}) still runs; stop it (SIGTERM) first"
        )));
    }
    for g in gate_dirs(pins) {
        if let Ok(i) = pinned_link::ifindex(&g.xdp_link()) {
            if i != 0 {
                return Ok(Some(format!(
                    "its gate for {} is still attached to interface {i}, so its namespace \
                     may live out of sight (held by a socket, or a mount elsewhere); once \
                     sure, remove it with rm -r {}",
                    g.iface,
                    pins.display()
                )));
            }
        }
    }
    Ok(None)
}

fn remove(pins: &Path, run: &PathBuf) -> Result<()> {
    for g in gate_dirs(pins) {
        remove_pins(&g);
    }
    if pins.exists() {
        // Namespace-wide pins left without a gate (remove_pins takes them with the last one).
        let any = PinDir::under(pins, "-");
        let _ = pinned_link::detach(&any.exit_link());
        for p in any.namespace_maps() {
            let _ = std::fs::remove_file(p);
        }
        std::fs::remove_dir(pins).with_context(|| {
            format!(
                "cannot remove {} (something takeover does not know is pinned in it)",
                pins.display()
            )
        })?;
    }
    if run.exists() {
        std::fs::remove_dir_all(run).with_context(|| format!("removing {}", run.display()))?;
    }
    Ok(())
}

/// The report for people: one line per namespace, then a summary.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    for o in &r.namespaces {
        let paths = if o.paths.is_empty() {
            o.id.clone()
        } else {
            o.paths.join(" and ")
        };
        out.push_str(&format!("{} {paths}: {}\n", o.action, o.reason));
    }
    let count = |a: &str| r.namespaces.iter().filter(|o| o.action == a).count();
    out.push_str(&format!(
        "{} removed, {} to remove, {} kept; the directories of {} live namespace(s) left alone\n",
        count("removed"),
        count("would remove"),
        count("kept"),
        r.live
    ));
    out
}
