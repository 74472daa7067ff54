//! `takeover handoff put | get | list`: a service's handoff record, through the agent.
use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde_json::Value;
use takeover::io::control::{self, Handoff, HandoffOp};

pub fn put(resource: String, pairs: &[String], json: bool) -> Result<()> {
    let mut values = BTreeMap::new();
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else {
            bail!("{p:?} is not KEY=VALUE");
        };
        values.insert(k.to_string(), v.to_string());
    }
    let answer = control::handoff(&Handoff {
        handoff: HandoffOp::Put,
        resource: Some(resource.clone()),
        key: None,
        values,
    })?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&answer)?)?;
    } else {
        outln!(
            "{resource}: handoff written (epoch {})",
            answer["epoch"].as_u64().unwrap_or(0)
        )?;
    }
    Ok(())
}

pub fn get(resource: String, key: Option<String>, json: bool) -> Result<()> {
    let answer = control::handoff(&Handoff {
        handoff: HandoffOp::Get,
        resource: Some(resource.clone()),
        key: key.clone(),
        values: BTreeMap::new(),
    })?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&answer)?)?;
        return Ok(());
    }
    if key.is_some() {
        outln!("{}", answer["value"].as_str().unwrap_or(""))?;
        return Ok(());
    }
    match answer["resources"].get(&resource) {
        Some(record) => out!("{}", render(&resource, record))?,
        None => outln!("{resource}: no handoff record")?,
    }
    Ok(())
}

pub fn list(json: bool) -> Result<()> {
    let answer = control::handoff(&Handoff {
        handoff: HandoffOp::List,
        resource: None,
        key: None,
        values: BTreeMap::new(),
    })?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&answer)?)?;
        return Ok(());
    }
    let records = answer["resources"].as_object().cloned().unwrap_or_default();
    if records.is_empty() {
        outln!("no handoff record")?;
    }
    for (resource, record) in &records {
        out!("{}", render(resource, record))?;
    }
    Ok(())
}

/// `RESOURCE (epoch N, written by NODE)` and one `  KEY=VALUE` line per key.
fn render(resource: &str, record: &Value) -> String {
    let mut out = format!(
        "{resource} (epoch {}, written by {})\n",
        record["epoch"].as_u64().unwrap_or(0),
        record["node"].as_str().unwrap_or("?")
    );
    for (k, v) in record["values"].as_object().into_iter().flatten() {
        out += &format!("  {k}={}\n", v.as_str().unwrap_or(""));
    }
    out
}
