//! `takeover storage init | show`: format the shared storage area, and read everything in it.
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use takeover::storage::{
    admin::{self, Report, Sizes},
    Area, Device,
};

pub struct Init<'a> {
    pub device: &'a Path,
    pub nodes: Vec<String>,
    pub config: Option<PathBuf>,
    pub sizes: Sizes,
    pub force: bool,
    pub json: bool,
}

pub fn init(req: Init) -> Result<()> {
    let nodes = match (&req.config, req.nodes.is_empty()) {
        (Some(_), false) => bail!("give the nodes either with --nodes or with --config, not both"),
        (Some(path), true) => super::check::parse_file(path)?.node_names(),
        (None, _) => req.nodes,
    };
    let area = admin::init(req.device, &nodes, req.sizes, req.force)?;
    let report = admin::inspect(&area)?;
    if req.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        outln!(
            "{}: formatted as takeover storage area {} for nodes {} ({} of {})",
            report.device,
            report.area_id,
            nodes.join(", "),
            bytes(report.area_bytes),
            bytes(report.device_bytes)
        )?;
        if !report.direct_io {
            outln!("{}", NOT_DIRECT)?;
        }
    }
    Ok(())
}

const NOT_DIRECT: &str = "warning: this file system does not take O_DIRECT: reads go through this host's page cache, so nodes on other hosts may read stale records (use a block device)";

pub fn show(device: &Path, json: bool) -> Result<()> {
    let area = Area::open(Device::open(device)?)?;
    let report = admin::inspect(&area)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        out!("{}", render(&report, takeover::storage::area::unix_ms()))?;
    }
    Ok(())
}

fn render(r: &Report, now_ms: u64) -> String {
    let mut out = format!(
        "storage area {} on {} ({}{}), {} of {}, format {}, formatted {}\n",
        r.area_id,
        r.device,
        if r.direct_io {
            "direct I/O"
        } else {
            "page cache"
        },
        if r.direct_io {
            ""
        } else {
            ": single host only"
        },
        bytes(r.area_bytes),
        bytes(r.device_bytes),
        r.format_version,
        ago(now_ms, r.created_unix * 1000),
    );
    let mut rows = vec![[
        "NODE",
        "HEARTBEAT",
        "WRITTEN",
        "LAN",
        "SERVING",
        "ORDERS",
        "JOURNAL",
        "DAMAGE",
    ]
    .map(String::from)];
    for n in &r.nodes {
        let hb = n.heartbeat.value.as_ref();
        let mut damage: Vec<String> = [
            ("heartbeat", &n.heartbeat.error, &n.heartbeat.damage),
            ("message", &n.message.error, &n.message.damage),
            ("ownership", &n.ownership.error, &n.ownership.damage),
            ("handoff", &n.handoff.error, &n.handoff.damage),
        ]
        .into_iter()
        .filter_map(|(what, error, damage)| {
            error
                .as_ref()
                .or(damage.as_ref())
                .map(|e| format!("{what}: {e}"))
        })
        .collect();
        damage.extend(
            n.journal
                .damaged
                .iter()
                .map(|d| format!("journal #{}: {}", d.seq, d.error)),
        );
        rows.push([
            n.name.clone(),
            match n.heartbeat.generation {
                0 => "never".into(),
                g => format!("#{g} every {} ms", hb.map_or(0, |h| h.interval_ms)),
            },
            hb.map_or("-".into(), |h| ago(now_ms, h.written_unix_ms)),
            hb.map_or("-", |h| if h.lan_up { "up" } else { "down" })
                .into(),
            hb.map(|h| {
                h.serving
                    .iter()
                    .map(|(res, epoch)| format!("{res}@{epoch}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "-".into()),
            n.message
                .value
                .as_ref()
                .map(|m| {
                    m.orders
                        .iter()
                        .map(|o| format!("fence {} #{}", o.to, o.id))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "-".into()),
            format!("#{} ({} records)", n.journal.end, n.journal.records),
            if damage.is_empty() {
                "-".into()
            } else {
                damage.join("; ")
            },
        ]);
    }
    out += &takeover::io::status::table(&rows);
    if r.owners.is_empty() {
        out += "no resource claimed yet\n";
    } else {
        let mut rows = vec![["RESOURCE", "OWNER", "EPOCH", "HELD"].map(String::from)];
        for (res, o) in &r.owners {
            rows.push([
                res.clone(),
                o.node.clone(),
                o.epoch.to_string(),
                if o.held { "yes" } else { "released" }.into(),
            ]);
        }
        out += &takeover::io::status::table(&rows);
    }
    out += &format!(
        "{} damaged record(s){}\n",
        r.damaged,
        if r.damaged > 0 {
            " (the other copy was used; a torn last write is expected after a crash)"
        } else {
            ""
        }
    );
    out
}

/// How long before `now_ms` `at_ms` was, by the wall clocks of the writer and this host.
fn ago(now_ms: u64, at_ms: u64) -> String {
    if at_ms > now_ms {
        return format!(
            "{:.1} s ahead (clocks differ)",
            (at_ms - now_ms) as f64 / 1e3
        );
    }
    let s = (now_ms - at_ms) as f64 / 1e3;
    match s {
        s if s < 120.0 => format!("{s:.1} s ago"),
        s if s < 7200.0 => format!("{:.0} min ago", s / 60.0),
        s if s < 172_800.0 => format!("{:.0} h ago", s / 3600.0),
        s => format!("{:.0} days ago", s / 86400.0),
    }
}

fn bytes(n: u64) -> String {
    match n as f64 {
        b if b >= 1e9 => format!("{:.1} GB", b / 1e9),
        b if b >= 1e6 => format!("{:.1} MB", b / 1e6),
        b if b >= 1e3 => format!("{:.1} kB", b / 1e3),
        _ => format!("{n} B"),
    }
}
