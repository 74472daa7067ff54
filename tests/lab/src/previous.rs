//! The previous release of `takeover`, built from this repository's history, for the tests
//! that mix it with this one (a rolling upgrade: one node on the previous wire format, one on
//! this).
//!
//! Built once per checkout into `target/previous/<commit>/` (its own sources and target
//! directory, so nothing of this build is touched) and reused; a file lock keeps two test
//! processes from building it at once.
use std::{
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{run, Takeover};

/// The last release before wire v3 and namespace cookies (it writes wire v2 and keys its pins
/// by the namespace's inode).
pub const COMMIT: &str = "6a6eb9e";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tests/lab is two levels below the workspace")
        .to_path_buf()
}

/// The previous release's `takeover` binary, built on first use.
pub fn takeover() -> Result<Takeover> {
    let root = workspace();
    let dir = root.join("target/previous").join(COMMIT);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let lock = File::create(dir.join("lock"))?;
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).context("locking the previous build");
    }
    let src = dir.join("src");
    let bin = src.join("target/debug/takeover");
    let done = dir.join("built");
    if done.exists() && bin.is_file() {
        return Ok(Takeover::new(bin));
    }
    if src.exists() {
        std::fs::remove_dir_all(&src)?;
    }
    std::fs::create_dir_all(&src)?;
    // The sources as committed (a full clone has them; a shallow one fails here, loudly).
    let archive = dir.join("src.tar");
    run(Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["archive", "--format=tar", "-o"])
        .arg(&archive)
        .arg(COMMIT))
    .with_context(|| format!("the previous release ({COMMIT}) is not in this clone's history"))?;
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&src))?;
    std::fs::remove_file(&archive)?;
    let mut build = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    build
        .args(["build", "--locked", "-p", "takeover"])
        .current_dir(&src);
    // This test run's settings are not the old build's.
    for (k, _) in std::env::vars() {
        if k.starts_with("CARGO_") || k == "RUSTFLAGS" || k == "RUSTUP_TOOLCHAIN" {
            build.env_remove(k);
        }
    }
    run(&mut build).context("building the previous release")?;
    if !bin.is_file() {
        bail!("building the previous release made no {}", bin.display());
    }
    File::create(&done)?;
    Ok(Takeover::new(bin))
}
