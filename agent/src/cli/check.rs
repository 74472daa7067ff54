//! `takeover check-config FILE`: validate a configuration and explain every problem.
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use takeover::config::{
    self,
    files::{self, KeyProblem},
    Config,
};

pub fn check(path: &Path) -> Result<()> {
    let config = load(path)?;
    let warning = key_file_problem(&config);
    let me = &config.node.name;
    let owns = config
        .addresses
        .iter()
        .filter(|a| a.preference[0] == *me)
        .count();
    let stands_by = config
        .addresses
        .iter()
        .filter(|a| a.preference[1..].contains(me))
        .count();
    outln!(
        "{}: valid. Node {me} on {}; {} peer(s); {} address(es): owns {owns}, stands by for {stands_by}; \
         heartbeat every {:?}, a peer is dead after {:?} of silence on every path",
        path.display(),
        config.node.lan,
        config.peers.len(),
        config.addresses.len(),
        config.heartbeat.interval,
        config.heartbeat.dead_after(),
    )?;
    if let Some(w) = warning {
        outln!("{}: warning: {w}", path.display())?;
    }
    let cold = config.services.iter().filter(|s| s.cold).count();
    if cold > 0 && config.fence.command.is_empty() {
        outln!(
            "{}: warning: {cold} cold service(s) and no [fence]: a dead host's stateful address is not taken over \
             (its lease closes its gates, not its writes to the shared storage); it waits until that host is heard again",
            path.display()
        )?;
    }
    if let Some(st) = &config.storage {
        outln!(
            "{}: {}",
            path.display(),
            storage_note(st, &config.node_names())
        )?;
    }
    Ok(())
}

/// What the storage area named by `st` is on this machine: a warning if it cannot be used
/// here (it may be reachable only from the nodes; `run` refuses it).
fn storage_note(st: &config::Storage, nodes: &[String]) -> String {
    use takeover::storage::{Area, Device};
    let dev = st.device.display();
    let every = format!(
        "disk heartbeat every {:?}, a peer's stale after {:?}",
        st.interval, st.timeout
    );
    match Device::open(&st.device).and_then(Area::open) {
        Err(e) => {
            format!("warning: storage.device: {e:#} (takeover run refuses to start without it)")
        }
        Ok(area) => match nodes.iter().find_map(|n| area.index_of(n).err()) {
            None => format!(
                "storage area {dev} (id {}, nodes {}); {every}",
                area.sb.area_id,
                area.sb.nodes.join(", ")
            ),
            Some(e) => format!("warning: storage.device: {e:#}"),
        },
    }
}

/// Reads and validates `path`, and what it names on this machine (the fence program, the
/// key file unless it is only missing); the error lists every problem, one per line.
pub fn load(path: &Path) -> Result<Config> {
    let config = parse_file(path)?;
    let mut found = fence_problem(&config).into_iter().collect::<Vec<_>>();
    found.extend(
        key_file_problem(&config)
            .filter(KeyProblem::wrong_anywhere)
            .map(|p| p.to_string()),
    );
    if !found.is_empty() {
        return Err(problems(path, found));
    }
    Ok(config)
}

/// Reads and validates `path` as a configuration, nothing more; the error lists every
/// problem, one per line.
pub fn parse_file(path: &Path) -> Result<Config> {
    let text =
        files::read_config(path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
    config::parse(&text)
        .map_err(|errors| problems(path, errors.iter().map(|e| e.to_string()).collect()))
}

fn problems(path: &Path, found: Vec<String>) -> anyhow::Error {
    let lines: Vec<String> = found
        .iter()
        .map(|e| format!("{}: {e}", path.display()))
        .collect();
    anyhow!(
        "{} problem(s) in {}:\n{}",
        found.len(),
        path.display(),
        lines.join("\n")
    )
}

/// The fence program must run where the agent runs: found now, not at the first takeover.
/// A name without a slash is looked up in this process's PATH, as the agent will.
fn fence_problem(config: &Config) -> Option<String> {
    let program = config.fence.command.first()?;
    let e = files::find_program(program, std::env::var_os("PATH").as_deref()).err()?;
    Some(format!(
        "fence.command: {e} (takeover run cannot fence without it, and refuses to start)"
    ))
}

/// The shared key, refused if it is missing, not a regular file, short or readable by
/// others.
pub fn read_key(config: &Config) -> Result<Vec<u8>> {
    if let Some(problem) = key_file_problem(config) {
        bail!("{problem}");
    }
    files::read_regular(&config.key_file)
        .with_context(|| format!("cannot read auth.key_file {}", config.key_file.display()))
}

/// The key file's problem: `check-config` only warns of those that may not apply on the
/// nodes (the file may live only there), and refuses the rest; `run` refuses all.
fn key_file_problem(config: &Config) -> Option<KeyProblem> {
    files::check_key_file(&config.key_file).err()
}
