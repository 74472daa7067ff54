//! `takeover check-config FILE`: validate a configuration and explain every problem.
use std::path::Path;

use anyhow::{bail, Context, Result};
use takeover::config::{self, Config};

/// Keys shorter than this are refused: HMAC-SHA256 wants at least 128 bits of secret.
const MIN_KEY_BYTES: u64 = 16;

pub fn check(path: &Path) -> Result<()> {
    let config = load(path)?;
    let warnings = key_file_problems(&config);
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
    for w in &warnings {
        outln!("{}: warning: {w}", path.display())?;
    }
    Ok(())
}

/// Reads and validates `path`; the error lists every problem, one per line.
pub fn load(path: &Path) -> Result<Config> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    match config::parse(&text) {
        Ok(c) => Ok(c),
        Err(errors) => {
            let lines: Vec<String> = errors
                .iter()
                .map(|e| format!("{}: {e}", path.display()))
                .collect();
            bail!(
                "{} problem(s) in {}:\n{}",
                errors.len(),
                path.display(),
                lines.join("\n")
            )
        }
    }
}

/// The shared key, refused if it is missing, short or readable by others.
pub fn read_key(config: &Config) -> Result<Vec<u8>> {
    if let Some(problem) = key_file_problems(config).into_iter().next() {
        bail!("{problem}");
    }
    std::fs::read(&config.key_file)
        .with_context(|| format!("cannot read {}", config.key_file.display()))
}

/// Problems with the key file that do not stop `check-config` (the file may live only on
/// the nodes) but that `run` refuses.
fn key_file_problems(config: &Config) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let path = &config.key_file;
    match std::fs::metadata(path) {
        Err(e) => vec![format!(
            "auth.key_file {}: {e} (takeover run needs it)",
            path.display()
        )],
        Ok(m) if m.len() < MIN_KEY_BYTES => {
            vec![format!(
                "auth.key_file {} holds {} bytes; use at least {MIN_KEY_BYTES} random bytes",
                path.display(),
                m.len()
            )]
        }
        Ok(m) if m.permissions().mode() & 0o077 != 0 => {
            vec![format!(
                "auth.key_file {} is readable by others (mode {:o}); chmod 600 it",
                path.display(),
                m.permissions().mode() & 0o777
            )]
        }
        Ok(_) => vec![],
    }
}
