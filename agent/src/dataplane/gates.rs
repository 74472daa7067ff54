//! Reading and writing one interface's gate table, its counters and its redirect targets.
//! Only the agent writes these maps (the data plane only reads the table and bumps counters).
use anyhow::{bail, Context, Result};
use aya::{
    maps::{DevMapHash, HashMap, Map, MapData, MapError, PerCpuHashMap},
    Ebpf,
};
use takeover_common::{
    Action, Counters, GateKey, GateValue, COUNTERS_MAP, GATES_MAP, REDIRECT_MAP,
};

use super::{pins::PinDir, target::Target};

/// One gate entry as the operator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub target: Target,
    /// `None` if the table holds a byte this `takeover` does not know (written by another).
    pub action: Option<Action>,
    pub value: GateValue,
    /// Summed over all CPUs.
    pub counters: Counters,
}

/// Handles on the maps of one attached gate.
pub struct Gates {
    gates: HashMap<MapData, GateKey, GateValue>,
    counters: PerCpuHashMap<MapData, GateKey, Counters>,
    redirect: DevMapHash<MapData>,
}

fn pinned(pins: &PinDir, name: &str) -> Result<Map> {
    let path = pins.map(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Map::from_map_data(data)?)
}

impl Gates {
    /// Opens the pinned maps of an attached interface.
    pub fn open(pins: &PinDir) -> Result<Self> {
        if !pins.is_attached() {
            bail!(
                "no gate is attached to {} in this network namespace; run `takeover attach --iface {}` first",
                pins.iface,
                pins.iface
            );
        }
        Ok(Self {
            gates: pinned(pins, GATES_MAP)?.try_into()?,
            counters: pinned(pins, COUNTERS_MAP)?.try_into()?,
            redirect: pinned(pins, REDIRECT_MAP)?.try_into()?,
        })
    }

    /// Takes the maps out of a loaded object (tests that run the programs unattached).
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("no map {name} in the object"))
        };
        Ok(Self {
            gates: take(GATES_MAP)?.try_into()?,
            counters: take(COUNTERS_MAP)?.try_into()?,
            redirect: take(REDIRECT_MAP)?.try_into()?,
        })
    }

    /// Sets the gate of `target`. Counters of an existing entry are kept.
    pub fn set(&mut self, target: &Target, value: GateValue) -> Result<()> {
        self.gates
            .insert(target.key(), value, 0)
            .with_context(|| format!("cannot write the gate of {target} (table full?)"))
    }

    /// Removes the gate of `target` and its counters; `false` if there was none.
    pub fn remove(&mut self, target: &Target) -> Result<bool> {
        let key = target.key();
        if self.get(target)?.is_none() {
            return Ok(false);
        }
        self.gates
            .remove(&key)
            .with_context(|| format!("cannot remove the gate of {target}"))?;
        // The data plane may not have counted anything yet: no counters entry is fine.
        if self.counters.get(&key, 0).is_ok() {
            self.counters
                .remove(&key)
                .with_context(|| format!("cannot remove the counters of {target}"))?;
        }
        Ok(true)
    }

    /// Lets `Forward` entries leave through interface `ifindex` (XDP_REDIRECT needs it in
    /// the device map).
    pub fn allow_redirect(&mut self, ifindex: u32) -> Result<()> {
        self.redirect
            .insert(ifindex, ifindex, None, 0)
            .with_context(|| format!("cannot add interface {ifindex} to the redirect map"))
    }

    /// Interfaces `Forward` entries may redirect to.
    pub fn redirect_targets(&self) -> Result<Vec<u32>> {
        let mut out = self.redirect.keys().collect::<Result<Vec<_>, _>>()?;
        out.sort_unstable();
        Ok(out)
    }

    pub fn get(&self, target: &Target) -> Result<Option<Entry>> {
        let key = target.key();
        match self.gates.get(&key, 0) {
            Ok(value) => Ok(Some(self.entry(*target, value)?)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub fn counters(&self, target: &Target) -> Result<Counters> {
        let mut sum = Counters::default();
        match self.counters.get(&target.key(), 0) {
            Ok(per_cpu) => per_cpu.iter().for_each(|c| sum.add(c)),
            Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(sum)
    }

    fn entry(&self, target: Target, value: GateValue) -> Result<Entry> {
        Ok(Entry {
            target,
            action: Action::from_u8(value.action),
            value,
            counters: self.counters(&target)?,
        })
    }

    /// Every entry, sorted by address then service (the address-wide entry first).
    pub fn entries(&self) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for item in self.gates.iter() {
            let (key, value) = item?;
            // Keys no takeover writes are skipped rather than shown wrongly.
            if let Some(target) = Target::from_key(&key) {
                out.push(self.entry(target, value)?);
            }
        }
        out.sort_by_key(|e| e.target);
        Ok(out)
    }
}
