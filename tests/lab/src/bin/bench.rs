//! `cargo xtask bench gate`: what the gate costs, measured side by side in one run.
//!
//! Usage: bench PATH-TO-TAKEOVER gate
//!
//! Two namespaces joined by a veth pair; trafgen (netsniff-ng) sends 64-byte UDP frames from
//! `tx` to `rx` as fast as one CPU can, through the qdisc layer so that TC egress runs. The
//! rate is what `rx` received (its `rx_packets`, which counts XDP verdicts too) divided by the
//! sender's wall time. Scenarios alternate within each round, so drift hits them all alike.
//! Then the flip latency: a stream to a closed address, the gate opened through the map, and
//! the kernel receive timestamp of the first datagram that got through.
use std::{
    fmt::Write as _,
    net::UdpSocket,
    os::fd::AsRawFd,
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Array, HashMap, Map, MapData},
    programs::{SchedClassifier, TcAttachType, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use takeover_common::{Action, GateKey, GateValue, PASS_PROGRAM, TC_PASS_PROGRAM};
use takeover_lab::{
    run,
    stats::{median, range},
    Netns, Takeover,
};

const TX_MAC: &str = "02:00:00:00:00:01";
const RX_MAC: &str = "02:00:00:00:00:02";
const LOGICAL: [u8; 4] = [10, 88, 0, 100];
const ROUNDS: usize = 5;
const PACKETS: u64 = 1_000_000;
const FLIPS: usize = 25;

struct Pair {
    tx: Netns,
    rx: Netns,
}

fn pair() -> Result<Pair> {
    let tx = Netns::new("btx")?;
    let rx = Netns::new("brx")?;
    takeover_lab::ip(&format!(
        "link add lan netns {} address {TX_MAC} type veth peer lan netns {} address {RX_MAC}",
        tx.name, rx.name
    ))?;
    tx.ip("addr add 10.88.0.1/24 dev lan")?;
    rx.ip("addr add 10.88.0.2/24 dev lan")?;
    rx.ip("addr add 10.88.0.100/24 dev lan")?;
    tx.ip("link set lan up")?;
    rx.ip("link set lan up")?;
    tx.ip(&format!(
        "neigh replace 10.88.0.100 lladdr {RX_MAC} dev lan nud permanent"
    ))?;
    rx.ip(&format!(
        "neigh replace 10.88.0.1 lladdr {TX_MAC} dev lan nud permanent"
    ))?;
    Ok(Pair { tx, rx })
}

/// A trafgen config: one UDP frame 10.88.0.1:12345 -> 10.88.0.100:9, 64 bytes on the wire.
fn trafgen_config(dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let mac = |m: &str| {
        m.split(':')
            .map(|b| format!("0x{b}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let conf = format!(
        "{{\n  {}, {},\n  0x08, 0x00,\n  0x45, 0x00, 0x00, 0x2e, 0x00, 0x01, 0x40, 0x00, 0x40, 0x11, csumip(14, 33),\n  10, 88, 0, 1,\n  {}, {}, {}, {},\n  0x30, 0x39, 0x00, 0x09, 0x00, 0x1a, 0x00, 0x00,\n  fill(0x41, 18)\n}}\n",
        mac(RX_MAC),
        mac(TX_MAC),
        LOGICAL[0],
        LOGICAL[1],
        LOGICAL[2],
        LOGICAL[3]
    );
    let path = dir.join(format!("takeover-bench-{}.trafgen", std::process::id()));
    std::fs::write(&path, conf)?;
    Ok(path)
}

fn rx_packets(ns: &Netns) -> Result<u64> {
    Ok(ns
        .sh("cat /sys/class/net/lan/statistics/rx_packets")?
        .trim()
        .parse()?)
}

/// Sends `PACKETS` frames and returns the rate `rx` received them at. trafgen is retried
/// once: on this machine it very rarely exits early for no reason it prints.
fn blast(p: &Pair, conf: &std::path::Path) -> Result<f64> {
    let mut last = None;
    for _ in 0..2 {
        let before = rx_packets(&p.rx)?;
        let start = Instant::now();
        match run(p
            .tx
            .cmd("trafgen")
            .args(["--dev", "lan", "--conf"])
            .arg(conf)
            .args(["-n", &PACKETS.to_string(), "-q", "--cpus", "1"]))
        {
            Ok(_) => {
                let elapsed = start.elapsed();
                let got = rx_packets(&p.rx)? - before;
                return Ok(got as f64 / elapsed.as_secs_f64());
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap())
}

/// The object's one-instruction `xdp_pass` (or `tc_pass` on egress), attached to `lan` in
/// `ns` while this lives.
struct PassProgram {
    _ebpf: Ebpf,
    pins: std::path::PathBuf,
}

impl PassProgram {
    fn attach(ns: &Netns, egress: bool) -> Result<Self> {
        let object = std::fs::read("target/ebpf/bpfel-unknown-none/release/takeover-gate")
            .context("the eBPF object (run from the repository root after a release build)")?;
        let pins =
            std::path::PathBuf::from(format!("/sys/fs/bpf/takeover-bench-{}", std::process::id()));
        std::fs::create_dir_all(&pins)?;
        let dir = pins.clone();
        let ebpf = ns.within(move || {
            let mut ebpf = EbpfLoader::new()
                .default_map_pin_directory(&dir)
                .load(&object)?;
            if egress {
                let prog: &mut SchedClassifier = ebpf
                    .program_mut(TC_PASS_PROGRAM)
                    .context("no tc_pass")?
                    .try_into()?;
                prog.load()?;
                prog.attach("lan", TcAttachType::Egress)?;
            } else {
                let prog: &mut Xdp = ebpf
                    .program_mut(PASS_PROGRAM)
                    .context("no xdp_pass")?
                    .try_into()?;
                prog.load()?;
                prog.attach("lan", XdpMode::Driver)?;
            }
            Ok(ebpf)
        })?;
        Ok(Self { _ebpf: ebpf, pins })
    }
}

impl Drop for PassProgram {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scenario {
    NoProgram,
    XdpPassOnly,
    XdpUnknown,
    XdpOpen,
    XdpOpenLeased,
    XdpClosed,
    TcPassOnly,
    TcOpen,
}

impl Scenario {
    const ALL: [Scenario; 8] = [
        Self::NoProgram,
        Self::XdpPassOnly,
        Self::XdpUnknown,
        Self::XdpOpen,
        Self::XdpOpenLeased,
        Self::XdpClosed,
        Self::TcPassOnly,
        Self::TcOpen,
    ];

    /// The one-instruction scenario on the same hook, as an index into `ALL`.
    fn baseline(self) -> Option<usize> {
        match self {
            Self::NoProgram => None,
            Self::XdpPassOnly
            | Self::XdpUnknown
            | Self::XdpOpen
            | Self::XdpOpenLeased
            | Self::XdpClosed => Some(1),
            Self::TcPassOnly | Self::TcOpen => Some(6),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::NoProgram => "no program on either end (baseline)",
            Self::XdpPassOnly => "one-instruction XDP_PASS program on rx (veth's XDP receive path)",
            Self::XdpUnknown => "gate on rx, destination not in the table (pass untouched)",
            Self::XdpOpen => "gate on rx, destination open (pass + counters)",
            Self::XdpOpenLeased => {
                "gate on rx, destination open and leased, the lease running (as an agent writes it: + the lease check)"
            }
            Self::XdpClosed => "gate on rx, destination closed (XDP_DROP)",
            Self::TcPassOnly => "one-instruction classifier on tx egress (tcx)",
            Self::TcOpen => "gate on tx, source open (egress classifier + counters)",
        }
    }

    fn prepare(self, t: &Takeover, p: &Pair) -> Result<Option<PassProgram>> {
        let gate_on_rx = !matches!(
            self,
            Self::NoProgram | Self::XdpPassOnly | Self::TcPassOnly | Self::TcOpen
        );
        for (ns, want) in [(&p.rx, gate_on_rx), (&p.tx, self == Self::TcOpen)] {
            let attached = ns.pin_dir()?.join("lan").exists();
            if want && !attached {
                t.ok(ns, "attach --iface lan")?;
            }
            if !want && attached {
                t.ok(ns, "detach --iface lan")?;
            }
        }
        match self {
            Self::XdpUnknown => {
                let _ = t.output(&p.rx, "gate remove 10.88.0.100 --iface lan")?;
            }
            Self::XdpOpen => drop(t.ok(&p.rx, "gate open 10.88.0.100 --iface lan")?),
            Self::XdpOpenLeased => {
                t.ok(&p.rx, "gate open 10.88.0.100 --iface lan")?;
                // As an agent writes it: leased, under a lease that runs (to the end of time).
                let dir = p.rx.pin_dir()?;
                let mut gates: HashMap<MapData, GateKey, GateValue> = HashMap::try_from(
                    Map::from_map_data(MapData::from_pin(dir.join("lan/GATES"))?)?,
                )?;
                gates.insert(
                    GateKey::v4(LOGICAL),
                    GateValue::new(Action::Open).leased(),
                    0,
                )?;
                let mut lease: Array<MapData, u64> = Array::try_from(Map::from_map_data(
                    MapData::from_pin(dir.join(takeover_common::LEASE_MAP))?,
                )?)?;
                lease.set(0, u64::MAX, 0)?;
            }
            Self::XdpClosed => drop(t.ok(&p.rx, "gate close 10.88.0.100 --iface lan")?),
            Self::TcOpen => drop(t.ok(&p.tx, "gate open 10.88.0.1 --iface lan")?),
            Self::XdpPassOnly => return Ok(Some(PassProgram::attach(&p.rx, false)?)),
            Self::TcPassOnly => return Ok(Some(PassProgram::attach(&p.tx, true)?)),
            Self::NoProgram => {}
        }
        Ok(None)
    }
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let bin = args
        .next()
        .context("usage: bench PATH-TO-TAKEOVER gate|failover|database")?;
    let what = args.next().unwrap_or_else(|| "gate".into());
    let t = Takeover::new(bin);
    match what.as_str() {
        "gate" => gate(&t),
        "failover" => {
            let s = takeover_lab::failover_bench::run(&t, &machine(), &date()?)?;
            print!("{s}");
            write_section("failover", &s)
        }
        "database" => {
            let s = database(&t)?;
            write_section("database", &s)
        }
        _ => bail!("unknown benchmark {what:?} (available: gate, failover, database)"),
    }
}

/// `cargo xtask bench database`: PostgreSQL on a shared disk, a's host crashed under a
/// client writing rows, taken over by b, given back; per trial the client's longest wait and
/// the acknowledged rows lost, each on a fresh topology and disk.
fn database(t: &Takeover) -> Result<String> {
    use takeover_lab::{agents::Timing, database::DbCluster};
    let trials: usize = std::env::var("TAKEOVER_BENCH_TRIALS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    let timing = Timing::default();
    let (mut over, mut back, mut lost, mut rows) = (vec![], vec![], 0usize, 0usize);
    for trial in 0..trials {
        let mut c = DbCluster::new(t, timing.clone())?;
        let r = c.crash_and_failback()?;
        eprintln!(
            "trial {trial}: takeover {:?} (lost {}), failback {:?} (lost {}), {} rows",
            r.takeover_gap,
            r.takeover_lost.len(),
            r.failback_gap,
            r.failback_lost.len(),
            r.acked.len()
        );
        over.push(r.takeover_gap.as_secs_f64() * 1e3);
        back.push(r.failback_gap.as_secs_f64() * 1e3);
        lost += r.takeover_lost.len() + r.failback_lost.len();
        rows += r.acked.len();
    }
    let ms = |v: &[f64]| {
        let (lo, hi) = range(v);
        format!("{:.0} ms ({lo:.0}–{hi:.0})", median(v))
    };
    let mut s = String::new();
    writeln!(
        s,
        "## A database taken over (`cargo xtask bench database`)\n"
    )?;
    writeln!(
        s,
        "Measured {} on {}, by `cargo xtask bench database`.",
        date()?,
        machine()
    )?;
    writeln!(
        s,
        "PostgreSQL 15 (Debian's) with its data on ext4 on a shared disk (a loop device per host over one file, direct I/O), run cold by the agents of a and b \
         (heartbeat {}, dead after {} misses, preempt delay {}; each agent in mount and IPC namespaces of its own), checked by `pg_isready` every 100 ms. \
         A client writes numbered rows, one transaction and one new connection each (`psql`, connect timeout 2 s), and notes each acknowledged one. \
         a crashes (every process frozen, links down, its path to the disk cut, then killed); b fences it (LAN and disk cut), mounts the disk (ext4 replays its journal), \
         starts the database told it is a takeover (it recovers from its WAL), opens once it accepts connections. Then a comes back and, preferred, gets it back \
         (b closes, stops the database with SIGINT, unmounts; a mounts, starts, opens). {trials} trials, each on a fresh disk and topology. \
         Wait = the longest time between two acknowledgements across the event, median (min–max); lost = acknowledged rows missing from the table afterwards.\n",
        timing.interval, timing.misses, timing.preempt_delay
    )?;
    writeln!(s, "| | takeover (crash) | failback |")?;
    writeln!(s, "|---|---|---|")?;
    writeln!(
        s,
        "| client's longest wait | {} | {} |",
        ms(&over),
        ms(&back)
    )?;
    writeln!(
        s,
        "| acknowledged rows lost | {lost} of {rows}, all trials | |"
    )?;
    writeln!(
        s,
        "\nMost of the wait is the client's: a connection attempt whose SYN met the closed gate is retried by its kernel 1 s later (TCP's initial retransmission timeout). \
         Pacemaker users report 15 to 20 s for the same job tuned (PostgreSQL with a shared file system, a virtual IP and a fence).\n"
    )?;
    Ok(s)
}

fn gate(t: &Takeover) -> Result<()> {
    let t = t.clone();
    let p = pair()?;
    let conf = trafgen_config(&std::env::temp_dir())?;

    let mut rates: Vec<(Scenario, Vec<f64>)> =
        Scenario::ALL.iter().map(|s| (*s, Vec::new())).collect();
    for round in 0..ROUNDS {
        for (s, v) in rates.iter_mut() {
            let _pass = s.prepare(&t, &p)?;
            let r = blast(&p, &conf)?;
            eprintln!("round {round} {s:?}: {:.0} pps", r);
            v.push(r);
        }
    }
    let flips = flip_latency(&t, &p)?;
    let _ = std::fs::remove_file(&conf);
    drop(p);
    write_report(&rates, flips)
}

/// Opens a closed gate under a stream of datagrams and measures, per flip, the time from just
/// before the map update to the kernel's receive timestamp of the first datagram through.
fn flip_latency(t: &Takeover, p: &Pair) -> Result<Flips> {
    Scenario::XdpClosed.prepare(t, p)?;
    let sock = p.rx.udp("10.88.0.100:9")?;
    enable_timestamps(&sock)?;
    let gates_pin = p.rx.pin_dir()?.join("lan/GATES");
    let mut gates: HashMap<MapData, GateKey, GateValue> =
        HashMap::try_from(Map::from_map_data(MapData::from_pin(&gates_pin)?)?)?;
    let key = GateKey::v4(LOGICAL);
    // A steady stream: one frame every 2 us at most.
    let conf = trafgen_config(&std::env::temp_dir())?;
    let mut sender =
        p.tx.cmd("trafgen")
            .args(["--dev", "lan", "--conf"])
            .arg(&conf)
            .args(["-n", "0", "-q", "--cpus", "1", "-t", "2us"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // trafgen forks a worker per CPU: give it a process group of its own to stop them all.
            .process_group(0)
            .spawn()?;
    let mut out = Flips::default();
    let result = (|| -> Result<()> {
        for _ in 0..FLIPS {
            gates.insert(key, GateValue::new(Action::Closed), 0)?;
            std::thread::sleep(Duration::from_millis(20));
            drain(&sock)?;
            let t0 = realtime();
            gates.insert(key, GateValue::new(Action::Open), 0)?;
            let t1 = realtime();
            let ts = recv_timestamp(&sock, Duration::from_secs(2))?
                .context("no datagram after opening the gate")?;
            out.latency_us.push((ts - t0) * 1e6);
            out.update_us.push((t1 - t0) * 1e6);
            // The stream's own spacing bounds how early the first datagram can be seen.
            let mut prev = ts;
            for _ in 0..20 {
                let Some(next) = recv_timestamp(&sock, Duration::from_secs(1))? else {
                    break;
                };
                out.spacing_us.push((next - prev) * 1e6);
                prev = next;
            }
        }
        Ok(())
    })();
    unsafe { libc::kill(-(sender.id() as i32), libc::SIGKILL) };
    let _ = sender.wait();
    let _ = std::fs::remove_file(&conf);
    result?;
    Ok(out)
}

#[derive(Default)]
struct Flips {
    latency_us: Vec<f64>,
    update_us: Vec<f64>,
    spacing_us: Vec<f64>,
}

fn realtime() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn enable_timestamps(sock: &UdpSocket) -> Result<()> {
    let one: libc::c_int = 1;
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            &one as *const _ as *const libc::c_void,
            4,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

fn drain(sock: &UdpSocket) -> Result<()> {
    sock.set_nonblocking(true)?;
    let mut buf = [0u8; 2048];
    while sock.recv(&mut buf).is_ok() {}
    sock.set_nonblocking(false)?;
    Ok(())
}

/// The kernel receive time (CLOCK_REALTIME, seconds) of the next datagram.
fn recv_timestamp(sock: &UdpSocket, timeout: Duration) -> Result<Option<f64>> {
    sock.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 2048];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 16];
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            return Ok(None);
        }
        return Err(e.into());
    }
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        let c = unsafe { &*cmsg };
        if c.cmsg_level == libc::SOL_SOCKET && c.cmsg_type == libc::SO_TIMESTAMPNS {
            let ts: libc::timespec =
                unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast()) };
            return Ok(Some(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9));
        }
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    bail!("datagram without a kernel timestamp")
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores ({cpu}), kernel {kernel}")
}

fn date() -> Result<String> {
    Ok(Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())?)
}

fn write_report(rates: &[(Scenario, Vec<f64>)], flips: Flips) -> Result<()> {
    let date = date()?;
    let mut s = String::new();
    writeln!(s, "## Gate cost (`cargo xtask bench gate`)\n")?;
    writeln!(
        s,
        "Measured {date} on {}, by `cargo xtask bench gate`.",
        machine()
    )?;
    writeln!(
        s,
        "Veth pair between two namespaces; trafgen sends {PACKETS} 60-byte UDP frames (64 on the wire) per trial through the qdisc layer, one CPU; \
         rate = frames `rx` received (its `rx_packets`, XDP verdicts included) / sender wall time. {ROUNDS} rounds, scenarios alternating within each round. \
         The machine is shared and noisy: compare the ratios, measured side by side.\n"
    )?;
    writeln!(
        s,
        "On veth, attaching any XDP program moves receive onto veth's NAPI path, which copies every frame whose headroom is \
         below XDP_PACKET_HEADROOM (trafgen's, like most locally sent frames): that is the gap between the first two rows, the \
         same for any XDP program, and absent on a NIC with native XDP. The gate's own cost is the last column: the rate \
         relative to a one-instruction program on the same hook.\n"
    )?;
    writeln!(
        s,
        "| scenario | median pps | min | max | vs no program | vs one-instruction program on the same hook |"
    )?;
    writeln!(s, "|---|---|---|---|---|---|")?;
    let med = |i: usize| median(&rates[i].1);
    let base = med(0);
    let at = |sc: Scenario| Scenario::ALL.iter().position(|s| *s == sc).unwrap();
    let baselines = [
        med(at(Scenario::XdpPassOnly)),
        med(at(Scenario::TcPassOnly)),
    ];
    for (sc, v) in rates.iter() {
        let (min, max) = range(v);
        let m = median(v);
        let vs_pass = match sc.baseline() {
            Some(1) => format!("{:.1} %", 100.0 * m / baselines[0]),
            Some(_) => format!("{:.1} %", 100.0 * m / baselines[1]),
            None => "-".into(),
        };
        writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.0} | {:.1} % | {vs_pass} |",
            sc.describe(),
            m,
            min,
            max,
            100.0 * m / base
        )?;
    }
    let lat = &flips.latency_us;
    let (lmin, lmax) = range(lat);
    writeln!(
        s,
        "\nFlip latency ({} flips; trafgen streams datagrams to a closed address, the bench opens the gate with one map update): from just before \
         the update to the kernel receive timestamp of the first datagram through, median {:.1} us (min {:.1}, max {:.1}). The update syscall \
         itself: median {:.1} us. The stream's own spacing, which bounds how soon the next datagram can arrive: median {:.1} us.",
        lat.len(),
        median(lat),
        lmin,
        lmax,
        median(&flips.update_us),
        median(&flips.spacing_us)
    )?;
    write_section("gate", &s)
}

/// Replaces (or appends) the section `name` of BENCHMARKS.md, leaving the others as they are.
fn write_section(name: &str, s: &str) -> Result<()> {
    let path = std::path::Path::new("BENCHMARKS.md");
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n\nWritten by `cargo xtask bench`; each section says the command that made it.\n".into());
    let (start, end) = (
        format!("<!-- bench {name} -->"),
        format!("<!-- /bench {name} -->"),
    );
    let section = format!("{start}\n{s}{end}");
    let new = match (old.find(&start), old.find(&end)) {
        (Some(a), Some(b)) => format!("{}{}{}", &old[..a], section, &old[b + end.len()..]),
        _ => format!("{}\n{}\n", old.trim_end(), section),
    };
    std::fs::write(path, new)?;
    print!("{s}");
    println!("\nwritten to {}", path.display());
    Ok(())
}
