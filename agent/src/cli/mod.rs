//! Command-line definitions (clap) and their dispatch.

/// `print!` that returns an error instead of panicking when stdout's reader has gone.
macro_rules! out {
    ($($arg:tt)*) => { crate::cli::write_stdout(format_args!($($arg)*)) };
}

/// `println!` likewise.
macro_rules! outln {
    ($($arg:tt)*) => { crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

mod check;
mod events;
mod handoff;
mod show;
mod storage;

use std::net::IpAddr;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use takeover::{
    dataplane::{
        self,
        target::{format_mac, parse_mac},
        AttachMode, Gates, PinDir, Service, Target,
    },
    sys::{self, iface::Iface},
};
use takeover_common::{Action, GateValue};

/// Stdout has no reader any more (`takeover map show | head -1`): the command stops there,
/// and it is not a failure (main exits 0, silently).
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("stdout closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writes to stdout and flushes; a closed pipe is [`StdoutClosed`].
pub fn write_stdout(args: std::fmt::Arguments) -> Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        other => Ok(other?),
    }
}

const ABOUT: &str = "XDP-accelerated active/standby takeover of logical addresses.

`takeover run` is the agent: it exchanges authenticated heartbeats with its peers on every
path, fences a dead peer and takes over its addresses in milliseconds, and gives them back
when it recovers. `takeover status` shows what it knows.

The gate decides, per logical address (and optionally per service), what this host does with
its traffic: open (serve it), closed (drop it both ways, ARP and neighbour discovery included,
so this host never answers for it) or forward (send it on to the host that serves it). Gates
are pinned in /sys/fs/bpf/takeover/ and keep working when no takeover process runs.";

const EXAMPLES: &str = "Examples:
  takeover check-config /etc/takeover/takeover.toml
  takeover run --config /etc/takeover/takeover.toml
  takeover status
  takeover switchover 192.0.2.10 --to b
  takeover attach --iface eth0
  takeover gate close 192.0.2.10 --iface eth0
  takeover gate open 192.0.2.10 --iface eth0
  takeover gate forward 192.0.2.10 --iface eth0 --to-mac 02:00:00:00:00:0b --service udp/53
  takeover map show --json
  takeover --netns blue map show --iface eth0
  takeover detach --iface eth0";

#[derive(Parser, Debug)]
#[command(name = "takeover", version, about = ABOUT, after_help = EXAMPLES)]
pub struct Cli {
    /// Run in network namespace NAME (/run/netns/NAME, as made by `ip netns add`). Unlike
    /// `ip netns exec`, this keeps the host's bpffs, so pins outlive the command.
    #[arg(long, global = true, value_name = "NAME")]
    netns: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Attach the gate (XDP ingress + TC egress) to an interface and pin it. Idempotent: a live
    /// gate is kept as it is, traffic and table untouched.
    #[command(
        after_help = "Examples:\n  takeover attach --iface eth0\n  takeover attach --iface eth0 --mode generic"
    )]
    Attach {
        /// LAN interface that carries the logical addresses.
        #[arg(long, value_name = "IF")]
        iface: String,
        /// XDP mode: driver (native), generic (skb, slower, works everywhere) or auto
        /// (driver, else generic).
        #[arg(long, value_enum, default_value_t = Mode::Auto)]
        mode: Mode,
    },
    /// Detach the gate from an interface and remove its pins, gate table and counters. With
    /// the namespace's last gate go the agent's liveness registration, its heartbeat ring and
    /// the exit tracepoint. Refused while an agent runs in the namespace (it needs the gate):
    /// stop it first.
    #[command(after_help = "Example:\n  takeover detach --iface eth0")]
    Detach {
        /// Interface whose gate to remove (as given to `attach` or `node.lan`).
        #[arg(long, value_name = "IF")]
        iface: String,
    },
    /// Open, close, forward or remove the gate of a logical address by hand. Refused while an
    /// agent runs in the namespace: the gates are its own (use `takeover switchover`).
    #[command(subcommand)]
    Gate(GateCommand),
    /// Inspect the gate tables.
    #[command(subcommand)]
    Map(MapCommand),
    /// Run the agent: heartbeats, fault detection, fencing, takeover and failback for the
    /// logical addresses of the configuration. Stops on SIGTERM, leaving the gates as they are.
    #[command(after_help = "Example:\n  takeover run --config /etc/takeover/takeover.toml")]
    Run {
        /// The TOML configuration (see examples/takeover.toml; check it with check-config).
        #[arg(long, value_name = "FILE")]
        config: std::path::PathBuf,
        /// Do not ask for real-time priority and locked memory (threaded NAPI stays off too).
        #[arg(long)]
        no_realtime: bool,
        /// Log lines as text (`<unix time> takeover: <message>`) or as JSON objects (`ts`,
        /// `level`, `message`, and for each event `event` and its fields), one per line on
        /// stderr.
        #[arg(long, value_enum, default_value_t = takeover::io::log::Format::Text)]
        log_format: takeover::io::log::Format,
        /// Also log every gate change of every resource (a whole-node takeover of many
        /// resources logs one line per resource).
        #[arg(long)]
        verbose: bool,
    },
    /// The running agent's state table: components and peers with their state and since
    /// when, every address with its owner and gate, per path the last heartbeat and RTT,
    /// datagrams read (from the gates' ring of heartbeats, from sockets) and rejected.
    #[command(after_help = "Examples:\n  takeover status\n  takeover --netns blue status --json")]
    Status {
        /// Machine-readable output (stable field names).
        #[arg(long)]
        json: bool,
    },
    /// Move a logical address to another node on purpose (maintenance), without a fault: the
    /// server releases it, the node opens and announces it. The order stands (preempt does
    /// not pull it back) until the next switchover. Asks the agent running here.
    #[command(
        after_help = "Examples:\n  takeover switchover 10.77.0.100 --to b\n  takeover switchover 10.77.0.100 --to a   # and back"
    )]
    Switchover {
        /// The logical address.
        #[arg(value_name = "ADDR")]
        addr: String,
        /// The node to move it to.
        #[arg(long, value_name = "NODE")]
        to: String,
    },
    /// Validate a configuration file and explain every problem (key and line). Needs no root.
    ///
    /// Then checks what it names on this machine, as `run` does: the fence program must exist
    /// and be executable (a bare name is looked up in PATH), the key file must not be a
    /// directory or other non-regular file (errors). A missing, short or group-readable key
    /// file is only a warning here (it may live only on the nodes); `run` refuses it. The
    /// file itself must be a regular file of at most 1 MiB.
    #[command(
        name = "check-config",
        after_help = "Example:\n  takeover check-config /etc/takeover/takeover.toml"
    )]
    CheckConfig {
        /// The TOML file (see examples/takeover.toml).
        file: std::path::PathBuf,
    },
    /// Remove the pins (/sys/fs/bpf/takeover/<id>/) and agent files (/run/takeover/<id>/)
    /// of network namespaces that no longer exist, detaching what is still attached. A live
    /// namespace's are never touched; nor a directory whose agent still runs or whose gate is
    /// still on an interface (its namespace may live out of sight: the reason is printed).
    /// Also removes the net-<inode> directories of earlier versions once unused.
    #[command(
        after_help = "Examples:\n  takeover cleanup --dry-run\n  takeover cleanup\n  takeover cleanup --json"
    )]
    Cleanup {
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Machine-readable output (stable field names).
        #[arg(long)]
        json: bool,
    },
    /// What a service leaves for its successor (the patent's takeover information): key/value
    /// pairs per resource, kept by the agents in the storage area under the resource's epoch.
    /// The node that serves a resource puts; any node gets the newest record (the highest
    /// epoch). Asks the agent running here; needs `[storage]`.
    #[command(subcommand)]
    Handoff(HandoffCommand),
    /// Format and inspect the shared storage area: each node's disk heartbeat, its orders to
    /// other nodes (the poison pill), the resources it claims with their epochs, its services'
    /// handoff records and its journal. A block device every node reaches (or, for one host,
    /// a file).
    #[command(subcommand)]
    Storage(StorageCommand),
    /// Follow the data plane's rare events on an interface (a forward whose interface is gone,
    /// a full counters table) until interrupted. Nothing is logged per packet.
    #[command(
        after_help = "Examples:\n  takeover log --iface eth0\n  takeover --netns blue log --iface lan"
    )]
    Log {
        /// Interface whose gate's events to follow (it must be attached).
        #[arg(long, value_name = "IF")]
        iface: String,
    },
}

#[derive(Subcommand, Debug)]
enum HandoffCommand {
    /// Set keys of RESOURCE's handoff record (this node must serve it). A successor's first
    /// put starts its own record under its epoch; until then `get` gives its predecessor's.
    /// Answers once the record is on the storage device.
    #[command(
        after_help = "Examples:\n  takeover handoff put 10.77.0.100 clients=12 grace_until=1796531260\n  takeover handoff put \"10.77.0.100 tcp/2049\" exports=/srv/nfs"
    )]
    Put {
        /// The resource: an address, or \"ADDRESS tcp/PORT\" for a service.
        resource: String,
        /// KEY=VALUE pairs (a value may contain '=' and spaces: quote it).
        #[arg(required = true, value_name = "KEY=VALUE")]
        values: Vec<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// RESOURCE's newest handoff record (every key, or KEY's value alone), with the epoch and
    /// the node that wrote it.
    #[command(
        after_help = "Examples:\n  takeover handoff get 10.77.0.100\n  takeover handoff get 10.77.0.100 clients\n  takeover handoff get 10.77.0.100 --json"
    )]
    Get {
        /// The resource: an address, or \"ADDRESS tcp/PORT\" for a service.
        resource: String,
        /// Only this key's value, printed alone (for scripts).
        key: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Every resource's newest handoff record.
    #[command(after_help = "Examples:\n  takeover handoff list\n  takeover handoff list --json")]
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum StorageCommand {
    /// Format DEVICE as a storage area for the given nodes. Refuses (changing nothing) a
    /// device that holds anything, a formatted area included, unless --force; and, even with
    /// --force, an area whose disk heartbeats are moving: stop its agents first.
    #[command(
        after_help = "Examples:\n  takeover storage init /dev/disk/by-id/wwn-0x5000c500a1b2c3d4 --nodes a,b\n  takeover storage init /dev/sdb --config /etc/takeover/takeover.toml\n  takeover storage init /dev/sdb --nodes a,b --force   # anew: ownership, handoffs and journals are lost"
    )]
    Init {
        /// The block device (or file) every node reaches.
        device: std::path::PathBuf,
        /// The nodes that will use it, comma-separated (each gets its own part of the area).
        #[arg(long, value_name = "A,B,...", value_delimiter = ',')]
        nodes: Vec<String>,
        /// Take the nodes from this configuration (its node and its peers).
        #[arg(long, value_name = "FILE")]
        config: Option<std::path::PathBuf>,
        /// Overwrite what DEVICE holds (never an area in use).
        #[arg(long)]
        force: bool,
        /// Blocks (4 KiB) per node for its ownership record (two copies each).
        #[arg(long, value_name = "N", default_value_t = takeover::storage::layout::DEFAULT_OWNERSHIP_BLOCKS)]
        ownership_blocks: u32,
        /// Blocks per node for its handoff record (two copies each).
        #[arg(long, value_name = "N", default_value_t = takeover::storage::layout::DEFAULT_HANDOFF_BLOCKS)]
        handoff_blocks: u32,
        /// Blocks per node for its journal ring (one record each).
        #[arg(long, value_name = "N", default_value_t = takeover::storage::layout::DEFAULT_JOURNAL_BLOCKS)]
        journal_blocks: u32,
        /// Print the new area as `show --json` does.
        #[arg(long)]
        json: bool,
    },
    /// Everything in the area: each node's disk heartbeat (generation, when written, what it
    /// serves), its orders, its claims, its handoffs and its journal's end, each resource's
    /// owner and epoch, and every damaged record (the other copy is used).
    #[command(
        after_help = "Examples:\n  takeover storage show /dev/sdb\n  takeover storage show /dev/sdb --json"
    )]
    Show {
        /// The block device (or file) that holds the area.
        device: std::path::PathBuf,
        /// Machine-readable output (stable field names).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    Auto,
    Driver,
    Generic,
}

#[derive(Args, Debug)]
struct GateTarget {
    /// The logical address (IPv4 or IPv6).
    #[arg(value_name = "ADDR")]
    addr: String,
    /// Interface whose gate to change (must be attached).
    #[arg(long, value_name = "IF")]
    iface: String,
    /// Only this service of the address, as PROTO/PORT (tcp/80, udp/53); it overrides the
    /// address-wide entry for the traffic it matches.
    #[arg(long, value_name = "PROTO/PORT")]
    service: Option<String>,
}

#[derive(Subcommand, Debug)]
enum GateCommand {
    /// This host serves the address: pass its traffic both ways.
    #[command(after_help = "Example:\n  takeover gate open 192.0.2.10 --iface eth0")]
    Open(GateTarget),
    /// Another host serves the address: drop its traffic both ways, including ARP and
    /// neighbour discovery for it.
    #[command(
        after_help = "Example:\n  takeover gate close 2001:db8::10 --iface eth0 --service tcp/443"
    )]
    Close(GateTarget),
    /// Send received traffic for the address on to MAC (back out of IF, or out of --via).
    #[command(
        after_help = "Examples:\n  takeover gate forward 192.0.2.10 --iface eth0 --to-mac 02:00:00:00:00:0b\n  takeover gate forward 192.0.2.10 --iface eth0 --to-mac 02:00:00:00:00:0b --via eth1 --service udp/53"
    )]
    Forward {
        #[command(flatten)]
        target: GateTarget,
        /// Ethernet address of the next hop (the host that serves the address).
        #[arg(long, value_name = "MAC")]
        to_mac: String,
        /// Leave through this interface instead of IF (such as a dedicated line to the peer).
        #[arg(long, value_name = "IF2")]
        via: Option<String>,
    },
    /// Forget the address: its traffic passes untouched again and its counters are dropped.
    #[command(
        after_help = "Examples:\n  takeover gate remove 192.0.2.10 --iface eth0\n  takeover gate remove 192.0.2.10 --iface eth0 --service tcp/80"
    )]
    Remove(GateTarget),
}

#[derive(Subcommand, Debug)]
enum MapCommand {
    /// Every address and service entry, its state and its counters.
    ///
    /// Entries a running agent wrote are leased: they serve only while the agent renews the
    /// namespace's lease, which the first line shows. A hung or killed agent's lease lapses
    /// by itself; its entries still read `open` in the table, shown as `open (lapsed)`, and act
    /// as closed.
    #[command(
        after_help = "Examples:\n  takeover map show\n  takeover map show --iface eth0 --json"
    )]
    Show {
        /// Only this interface (default: every attached interface of this network namespace).
        #[arg(long, value_name = "IF")]
        iface: Option<String>,
        /// Machine-readable output (stable field names).
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cli: Cli) -> Result<()> {
    // Before anything else (and before any thread exists): setns applies to this thread only.
    if let Some(ns) = &cli.netns {
        sys::require_root()?;
        sys::netns::enter(ns)?;
    }
    if let Command::CheckConfig { file } = &cli.command {
        return check::check(file);
    }
    // The area's device says who may: no root needed for a file.
    if let Command::Storage(cmd) = cli.command {
        return match cmd {
            StorageCommand::Init {
                device,
                nodes,
                config,
                force,
                ownership_blocks,
                handoff_blocks,
                journal_blocks,
                json,
            } => storage::init(storage::Init {
                device: &device,
                nodes,
                config,
                sizes: takeover::storage::admin::Sizes {
                    ownership_blocks,
                    handoff_blocks,
                    journal_blocks,
                },
                force,
                json,
            }),
            StorageCommand::Show { device, json } => storage::show(&device, json),
        };
    }
    sys::require_root()?;
    match cli.command {
        Command::Attach { iface, mode } => {
            let iface = Iface::by_name(&iface)?;
            let mode = match mode {
                Mode::Auto => AttachMode::Auto,
                Mode::Driver => AttachMode::Driver,
                Mode::Generic => AttachMode::Generic,
            };
            let a = dataplane::attach(&iface, mode)?;
            for n in &a.notes {
                outln!("{n}")?;
            }
            outln!(
                "attached to {}: ingress XDP {}, egress {}; pinned in {}",
                a.iface,
                a.xdp,
                a.egress,
                a.pins.display()
            )?;
            Ok(())
        }
        Command::Detach { iface } => {
            refuse_while_agent_runs("stop it (SIGTERM) first: detaching pulls its gate away")?;
            dataplane::detach(&iface)?;
            outln!("detached from {iface}")?;
            Ok(())
        }
        Command::Gate(cmd) => gate(cmd),
        Command::Map(MapCommand::Show { iface, json }) => show::show(iface.as_deref(), json),
        Command::Log { iface } => events::follow(&iface),
        Command::Cleanup { dry_run, json } => {
            let report = dataplane::cleanup::cleanup(dry_run)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                out!("{}", dataplane::cleanup::render(&report))?;
            }
            Ok(())
        }
        Command::Switchover { addr, to } => {
            takeover::io::control::switchover(&addr, &to)?;
            outln!("{addr}: switchover to {to} ordered")?;
            Ok(())
        }
        Command::Handoff(cmd) => match cmd {
            HandoffCommand::Put {
                resource,
                values,
                json,
            } => handoff::put(resource, &values, json),
            HandoffCommand::Get {
                resource,
                key,
                json,
            } => handoff::get(resource, key, json),
            HandoffCommand::List { json } => handoff::list(json),
        },
        Command::Status { json } => {
            let v = takeover::io::control::query()?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                out!("{}", v.render())?;
            }
            Ok(())
        }
        Command::CheckConfig { .. } | Command::Storage(_) => unreachable!("handled above"),
        Command::Run {
            config,
            no_realtime,
            log_format,
            verbose,
        } => {
            takeover::io::log::init(log_format, verbose);
            let cfg = check::load(&config)?;
            let key = check::read_key(&cfg)?;
            takeover::io::agent::run(cfg, key, !no_realtime)
        }
    }
}

struct Resolved {
    target: Target,
    iface: Iface,
    gates: Gates,
}

/// Validates everything before touching a map, so bad input changes nothing.
fn resolve(t: &GateTarget) -> Result<Resolved> {
    let addr: IpAddr = Target::parse_addr(&t.addr)?;
    let service = t
        .service
        .as_deref()
        .map(str::parse::<Service>)
        .transpose()?;
    let iface = Iface::by_name(&t.iface)?;
    let pins = PinDir::for_iface(&iface.name)?;
    if pins.is_attached() {
        if let Some(why) = dataplane::stale::why_stale(&pins)? {
            bail!(
                "the gate pinned for {} is stale ({why}); `takeover attach --iface {}` makes a \
                 fresh one",
                iface.name,
                iface.name
            );
        }
    }
    let gates = Gates::open(&pins)?;
    Ok(Resolved {
        target: Target::new(addr, service),
        iface,
        gates,
    })
}

/// One writer of the gate table: while an agent runs in this namespace, its gates are its own
/// (a gate changed by hand behind it would serve beside the owner while `status` says
/// closed). Once it has stopped, or died, they are anyone's until the next agent starts.
fn refuse_while_agent_runs(what_instead: &str) -> Result<()> {
    if let Some(pid) = dataplane::liveness::agent_in_charge()? {
        bail!("the agent (pid {pid}) manages the gates of this network namespace; {what_instead}");
    }
    Ok(())
}

fn state_word(action: Option<Action>) -> &'static str {
    action.map_or("unknown", Action::name)
}

fn gate(cmd: GateCommand) -> Result<()> {
    let (t, value, extra) = match &cmd {
        GateCommand::Open(t) => (t, Some(GateValue::new(Action::Open)), String::new()),
        GateCommand::Close(t) => (t, Some(GateValue::new(Action::Closed)), String::new()),
        GateCommand::Remove(t) => (t, None, String::new()),
        GateCommand::Forward {
            target,
            to_mac,
            via,
        } => {
            let mac = parse_mac(to_mac)?;
            // Checked first so that a bad --via changes nothing either.
            let via = via.as_deref().map(Iface::by_name).transpose()?;
            (
                target,
                None,
                format!(
                    " to {}{}",
                    format_mac(&mac),
                    via.as_ref()
                        .map(|v| format!(" via {}", v.name))
                        .unwrap_or_default()
                ),
            )
        }
    };
    let mut r = resolve(t)?;
    refuse_while_agent_runs("use `takeover switchover` or stop it (SIGTERM) first")?;
    let before = r.gates.get(&r.target)?.map(|e| e.action);
    let value = match (&cmd, value) {
        (GateCommand::Forward { to_mac, via, .. }, _) => {
            let mac = parse_mac(to_mac)?;
            match via.as_deref().map(Iface::by_name).transpose()? {
                Some(v) if v.index != r.iface.index => {
                    r.gates.allow_redirect(v.index)?;
                    Some(GateValue::forward(v.index, mac, v.mac()?))
                }
                _ => Some(GateValue::forward(0, mac, r.iface.mac()?)),
            }
        }
        (_, v) => v,
    };
    let was = match before {
        Some(a) => format!("was {}", state_word(a)),
        None => "was not a gate".to_string(),
    };
    match value {
        Some(v) => {
            r.gates.set(&r.target, v)?;
            outln!(
                "{} on {}: {}{} ({was})",
                r.target,
                r.iface.name,
                state_word(Action::from_u8(v.action)),
                extra
            )?;
        }
        None => {
            if !r.gates.remove(&r.target)? {
                bail!("{} has no gate on {}", r.target, r.iface.name);
            }
            outln!("{} on {}: removed ({was})", r.target, r.iface.name)?;
        }
    }
    Ok(())
}
