//! `takeover map show`: the gate tables as an aligned table for people or JSON for scripts.
use anyhow::Result;
use serde::Serialize;
use takeover::{
    dataplane::{heard, lease::Lease, pins, target::format_mac, Entry, Gates, PinDir},
    sys::{bpffs, iface, netns},
};
use takeover_common::{Action, Counters};

/// `map show --json`: one object per attached interface. Field names are a stable interface.
#[derive(Serialize)]
struct Report {
    netns: String,
    /// The namespace's lease on its leased entries; `null` if no gate of this release is
    /// attached (the map is pinned with the first gate).
    lease: Option<LeaseReport>,
    interfaces: Vec<IfaceReport>,
}

#[derive(Serialize)]
struct LeaseReport {
    /// Its end on CLOCK_MONOTONIC, nanoseconds (0: ended by the kernel at the agent's exit).
    until_ns: u64,
    /// Milliseconds it still runs; 0 once lapsed: leased `open`/`receive` entries then act
    /// as `closed`, whatever the table says.
    remaining_ms: f64,
    /// Milliseconds since it lapsed (`null` while it runs or if the kernel ended it).
    lapsed_ms_ago: Option<f64>,
}

#[derive(Serialize)]
struct IfaceReport {
    iface: String,
    /// `null` if the interface no longer exists (stale pins; `detach` removes them).
    ifindex: Option<u32>,
    /// `null` if the gate is attached to the interface, else why not: a stale gate filters
    /// nothing, and `attach` replaces it with a fresh table.
    stale: Option<String>,
    pins: String,
    entries: Vec<EntryReport>,
}

#[derive(Serialize)]
struct EntryReport {
    address: String,
    /// `null` for the address-wide entry, else `{"proto": "tcp", "port": 80}`.
    service: Option<ServiceReport>,
    /// `open`, `closed`, `forward`, `receive` or `unknown`.
    state: &'static str,
    forward: Option<ForwardReport>,
    /// `receive`: the MAC of the host handing the address over, whose forwards pass.
    receive_from_mac: Option<String>,
    /// Written by an agent with leases: serves only while the namespace's lease runs.
    leased: bool,
    counters: CountersReport,
}

#[derive(Serialize)]
struct ServiceReport {
    proto: &'static str,
    port: u16,
}

#[derive(Serialize)]
struct ForwardReport {
    to_mac: String,
    from_mac: String,
    /// `null`: back out of the same interface (XDP_TX).
    via: Option<String>,
    via_ifindex: Option<u32>,
}

#[derive(Serialize, Clone, Copy)]
struct PacketsBytes {
    packets: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct CountersReport {
    rx_pass: PacketsBytes,
    rx_drop: PacketsBytes,
    rx_forward: PacketsBytes,
    tx_pass: PacketsBytes,
    tx_drop: PacketsBytes,
}

impl From<&Counters> for CountersReport {
    fn from(c: &Counters) -> Self {
        let pb = |packets, bytes| PacketsBytes { packets, bytes };
        Self {
            rx_pass: pb(c.rx_pass_packets, c.rx_pass_bytes),
            rx_drop: pb(c.rx_drop_packets, c.rx_drop_bytes),
            rx_forward: pb(c.rx_forward_packets, c.rx_forward_bytes),
            tx_pass: pb(c.tx_pass_packets, c.tx_pass_bytes),
            tx_drop: pb(c.tx_drop_packets, c.tx_drop_bytes),
        }
    }
}

fn entry_report(e: &Entry) -> EntryReport {
    let state = e.action.map_or("unknown", Action::name);
    let forward = (e.action == Some(Action::Forward)).then(|| ForwardReport {
        to_mac: format_mac(&e.value.dst_mac),
        from_mac: format_mac(&e.value.src_mac),
        via: (e.value.ifindex != 0)
            .then(|| iface::name_of(e.value.ifindex).unwrap_or_else(|| "?".into())),
        via_ifindex: (e.value.ifindex != 0).then_some(e.value.ifindex),
    });
    EntryReport {
        address: e.target.addr.to_string(),
        service: e.target.service.map(|s| ServiceReport {
            proto: s.proto.name(),
            port: s.port,
        }),
        state,
        forward,
        receive_from_mac: (e.action == Some(Action::Receive)).then(|| format_mac(&e.value.src_mac)),
        leased: e.value.is_leased(),
        counters: (&e.counters).into(),
    }
}

fn collect(only: Option<&str>) -> Result<Report> {
    let dirs = match only {
        Some(name) => {
            // An unknown interface is an error, a known one without a gate too.
            iface::Iface::by_name(name)?;
            let p = PinDir::for_iface(name)?;
            Gates::open(&p)?;
            vec![p]
        }
        None if !bpffs::is_mounted() => vec![],
        None => pins::attached()?,
    };
    let lease = match dirs.first() {
        Some(p) if p.lease_map().exists() => Some(lease_report(&Lease::open(&p.lease_map())?)),
        _ => None,
    };
    let mut interfaces = Vec::new();
    for p in dirs {
        let gates = Gates::open(&p)?;
        interfaces.push(IfaceReport {
            ifindex: iface::index_of(&p.iface)?,
            stale: takeover::dataplane::stale::why_stale(&p)?,
            pins: p.path.display().to_string(),
            entries: gates.entries()?.iter().map(entry_report).collect(),
            iface: p.iface,
        });
    }
    Ok(Report {
        netns: netns::current_id()?,
        lease,
        interfaces,
    })
}

fn lease_report(lease: &Lease) -> LeaseReport {
    let (until_ns, now) = (lease.until_ns(), heard::clock_ns());
    let ms = |ns: u64| ns as f64 / 1e6;
    LeaseReport {
        until_ns,
        remaining_ms: ms(until_ns.saturating_sub(now)),
        lapsed_ms_ago: (until_ns != 0 && until_ns <= now).then(|| ms(now - until_ns)),
    }
}

pub fn show(only: Option<&str>, json: bool) -> Result<()> {
    let report = collect(only)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(());
    }
    out!("{}", render(&report))?;
    Ok(())
}

fn render(report: &Report) -> String {
    if report.interfaces.is_empty() {
        return "no gate is attached in this network namespace (takeover attach --iface IF)\n"
            .into();
    }
    let lapsed = report.lease.as_ref().is_some_and(|l| l.remaining_ms == 0.0);
    let mut rows: Vec<[String; 9]> = vec![[
        "IFACE",
        "ADDRESS",
        "SERVICE",
        "STATE",
        "NEXT HOP",
        "RX PASS",
        "RX DROP",
        "RX FWD",
        "TX PASS/DROP",
    ]
    .map(String::from)];
    for i in &report.interfaces {
        let name = match (i.ifindex, &i.stale) {
            (None, _) => format!("{} (gone)", i.iface),
            (Some(_), Some(_)) => format!("{} (stale)", i.iface),
            _ => i.iface.clone(),
        };
        if i.entries.is_empty() {
            rows.push([
                name.clone(),
                "-".into(),
                "-".into(),
                "no entries".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
            ]);
        }
        for e in &i.entries {
            let c = &e.counters;
            rows.push([
                name.clone(),
                e.address.clone(),
                e.service
                    .as_ref()
                    .map(|s| format!("{}/{}", s.proto, s.port))
                    .unwrap_or_else(|| "*".into()),
                match e.state {
                    "open" | "receive" if e.leased && lapsed => format!("{} (lapsed)", e.state),
                    _ => e.state.into(),
                },
                e.forward
                    .as_ref()
                    .map(|f| {
                        format!(
                            "{}{}",
                            f.to_mac,
                            f.via
                                .as_ref()
                                .map(|v| format!(" via {v}"))
                                .unwrap_or_default()
                        )
                    })
                    .or_else(|| e.receive_from_mac.as_ref().map(|m| format!("from {m}")))
                    .unwrap_or_else(|| "-".into()),
                human(c.rx_pass),
                human(c.rx_drop),
                human(c.rx_forward),
                format!("{}/{}", c.tx_pass.packets, c.tx_drop.packets),
            ]);
        }
    }
    // Only entries an agent wrote are leased: for tables written by hand the lease says nothing.
    let any_leased = report
        .interfaces
        .iter()
        .any(|i| i.entries.iter().any(|e| e.leased));
    let lease = match &report.lease {
        Some(l) if any_leased => match (l.remaining_ms, l.lapsed_ms_ago) {
            (ms, _) if ms > 0.0 => format!("lease: {ms:.1} ms left\n"),
            (_, Some(ago)) => {
                format!("lease: LAPSED {ago:.1} ms ago: leased open entries act as closed\n")
            }
            _ => "lease: ENDED (the agent exited): leased open entries act as closed\n".into(),
        },
        _ => String::new(),
    };
    lease + &takeover::io::status::table(&rows)
}

/// `packets (bytes)` with bytes in a readable unit.
fn human(pb: PacketsBytes) -> String {
    let b = pb.bytes as f64;
    let bytes = if b >= 1e9 {
        format!("{:.1}G", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1}M", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1}k", b / 1e3)
    } else {
        format!("{}B", pb.bytes)
    };
    format!("{} ({bytes})", pb.packets)
}
