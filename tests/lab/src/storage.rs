//! Shared storage for the lab: a loop device over a scratch file (what a SAN LUN is to real
//! nodes), detached and removed when dropped, also when a test fails.
use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result};

use crate::run;

pub struct LoopDevice {
    /// `/dev/loopN`.
    pub dev: String,
    file: PathBuf,
    /// This device made the file, and removes it.
    owns_file: bool,
}

impl LoopDevice {
    /// A loop device of `mib` MiB, zeroed, with direct I/O on (as a block device behaves).
    pub fn new(role: &str, mib: u64) -> Result<Self> {
        let file = std::env::temp_dir().join(format!(
            "takeover-{role}-{}-{}.img",
            std::process::id(),
            crate::unique()
        ));
        std::fs::File::create(&file)?
            .set_len(mib << 20)
            .with_context(|| format!("sizing {}", file.display()))?;
        match Self::attach(&file) {
            Ok(dev) => Ok(Self {
                dev,
                file,
                owns_file: true,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&file);
                Err(e)
            }
        }
    }

    /// Another loop device over the same file: what a second host's path to the same LUN is
    /// (one can fail while the other works).
    pub fn another(&self) -> Result<Self> {
        Ok(Self {
            dev: Self::attach(&self.file)?,
            file: self.file.clone(),
            owns_file: false,
        })
    }

    fn attach(file: &std::path::Path) -> Result<String> {
        let dev = run(Command::new("losetup")
            .args(["-f", "--show", "--direct-io=on"])
            .arg(file))?;
        Ok(dev.trim().to_string())
    }

    /// Makes the device refuse writes (`blockdev --setro`: they fail with EPERM) or take
    /// them again: storage lost on one host.
    pub fn set_writable(&self, writable: bool) -> Result<()> {
        let flag = if writable { "--setrw" } else { "--setro" };
        run(Command::new("blockdev").args([flag, &self.dev]))?;
        Ok(())
    }

    /// `storage = ...` lines for an agent's configuration: this device, written every
    /// `interval`, stale after `timeout`.
    pub fn config(&self, interval: &str, timeout: &str) -> String {
        format!(
            "\n[storage]\ndevice = \"{}\"\ninterval = \"{interval}\"\ntimeout = \"{timeout}\"\n",
            self.dev
        )
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("blockdev")
            .args(["--setrw", &self.dev])
            .status();
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        if self.owns_file {
            let _ = std::fs::remove_file(&self.file);
        }
    }
}
