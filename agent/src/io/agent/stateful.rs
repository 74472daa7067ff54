//! The core's `Acquire` and `Release` of a stateful resource, done on the runtime: a task per
//! resource takes them in order (a release asked while an acquire runs follows it).
//!
//! Acquire: each cold service's file system mounted, then each service started, told
//! `TAKEOVER_EPOCH`, `TAKEOVER_REASON` (`takeover`: recovered from a peer that did not hand
//! it over; `handover`), `TAKEOVER_RESOURCE` and, with a storage area, `TAKEOVER_HANDOFF`
//! (the resource's newest handoff record, JSON). A failed step undoes the ones before.
//! Release: each service stopped, then its file system unmounted, in reverse order.
use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use tokio::sync::{mpsc, oneshot};

use super::{disk_worker::Request, services::Command, Input};
use crate::{
    config::service::Service,
    core::node::ResId,
    io::{inbox::Mailbox, service::filesystem},
};

/// The longest a takeover waits for the storage area's journals or handoff.
const STORAGE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What the task of a resource is asked.
enum Op {
    Acquire { epoch: u64, takeover: bool },
    Release,
}

/// The heartbeat loop's handle on the resources' tasks.
#[derive(Default)]
pub struct Stateful {
    ops: Vec<Option<mpsc::UnboundedSender<Op>>>,
}

/// A cold service of a resource, and the channel to its instance's task.
struct Cold {
    svc: Service,
    commands: mpsc::UnboundedSender<Command>,
}

/// One resource's task.
struct Task {
    res: ResId,
    name: String,
    cold: Vec<Cold>,
    handoffs: Option<std::sync::mpsc::Sender<Request>>,
    mailbox: Mailbox<Input>,
    /// An epoch the journals showed taken elsewhere, at or above the one asked (0: none).
    seen: AtomicU64,
}

impl Stateful {
    /// A task per stateful resource: `cold[r]` lists its cold services with their
    /// instances' channels.
    pub(super) fn start(
        cold: Vec<Vec<(Service, mpsc::UnboundedSender<Command>)>>,
        names: Vec<String>,
        handoffs: Option<std::sync::mpsc::Sender<Request>>,
        mailbox: Mailbox<Input>,
    ) -> Self {
        let mut ops = Vec::new();
        for (res, (list, name)) in cold.into_iter().zip(names).enumerate() {
            if list.is_empty() {
                ops.push(None);
                continue;
            }
            let (tx, rx) = mpsc::unbounded_channel();
            ops.push(Some(tx));
            let task = Task {
                res,
                name,
                cold: list
                    .into_iter()
                    .map(|(svc, commands)| Cold { svc, commands })
                    .collect(),
                handoffs: handoffs.clone(),
                mailbox: mailbox.clone(),
                seen: AtomicU64::new(0),
            };
            tokio::spawn(task.run(rx));
        }
        Self { ops }
    }

    pub(super) fn acquire(&self, res: ResId, epoch: u64, takeover: bool) {
        self.send(res, Op::Acquire { epoch, takeover });
    }

    pub(super) fn release(&self, res: ResId) {
        self.send(res, Op::Release);
    }

    fn send(&self, res: ResId, op: Op) {
        match self.ops.get(res) {
            Some(Some(tx)) => {
                let _ = tx.send(op);
            }
            _ => log::error!("resource {res} has no cold service here: step ignored"),
        }
    }
}

impl Task {
    async fn run(self, mut ops: mpsc::UnboundedReceiver<Op>) {
        while let Some(op) = ops.recv().await {
            let began = Instant::now();
            let (input, what) = match op {
                Op::Acquire { epoch, takeover } => {
                    let result = self.acquire(epoch, takeover).await;
                    let seen = self.seen.swap(0, Ordering::Relaxed);
                    (
                        Input::Acquired {
                            res: self.res,
                            result: result.clone(),
                            seen_epoch: (seen > 0).then_some(seen),
                        },
                        ("acquired", result),
                    )
                }
                Op::Release => {
                    let result = self.release(self.cold.len()).await;
                    (
                        Input::Released {
                            res: self.res,
                            result: result.clone(),
                        },
                        ("released", result),
                    )
                }
            };
            match &what.1 {
                Ok(()) => log::info!(
                    "{}: {} in {:.1} ms",
                    self.name,
                    what.0,
                    began.elapsed().as_secs_f64() * 1e3
                ),
                Err(e) => log::error!("{}: not {}: {e}", self.name, what.0),
            }
            if !self.mailbox.send(input) {
                return;
            }
        }
    }

    async fn acquire(&self, epoch: u64, takeover: bool) -> Result<(), String> {
        let journals = self.journal_check(epoch).await?;
        let handoff = self.handoff().await;
        let mut env = BTreeMap::from([
            ("TAKEOVER_EPOCH".to_string(), epoch.to_string()),
            (
                "TAKEOVER_REASON".to_string(),
                if takeover { "takeover" } else { "handover" }.to_string(),
            ),
            ("TAKEOVER_RESOURCE".to_string(), self.name.clone()),
        ]);
        if let Some(h) = handoff {
            env.insert("TAKEOVER_HANDOFF".to_string(), h);
        }
        if let Some(j) = journals {
            env.insert("TAKEOVER_JOURNAL".to_string(), j);
        }
        for (i, cold) in self.cold.iter().enumerate() {
            let step = async {
                if let Some(fs) = &cold.svc.filesystem {
                    let mounted = filesystem::mount(fs).await.map_err(|e| {
                        format!("service {}: {}: {e}", cold.svc.name, fs.mount.display())
                    })?;
                    if mounted {
                        log::info!(
                            "service {}: {} mounted on {}",
                            cold.svc.name,
                            fs.device.display(),
                            fs.mount.display()
                        );
                    }
                }
                let (reply, answer) = oneshot::channel();
                cold.commands
                    .send(Command::Start {
                        env: env.clone(),
                        reply,
                    })
                    .map_err(|_| "the agent is stopping".to_string())?;
                answer
                    .await
                    .map_err(|_| "the agent is stopping".to_string())?
                    .map_err(|e| format!("service {}: {e}", cold.svc.name))
            };
            if let Err(e) = step.await {
                // What was done is undone: the next node must find it as it was.
                if let Err(undo) = self.release(i + 1).await {
                    log::error!("{}: undoing the failed acquire: {undo}", self.name);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Stops the first `n` cold services, last first, each followed by its file system.
    async fn release(&self, n: usize) -> Result<(), String> {
        for cold in self.cold[..n].iter().rev() {
            let (reply, answer) = oneshot::channel();
            cold.commands
                .send(Command::Stop { reply })
                .map_err(|_| "the agent is stopping".to_string())?;
            answer
                .await
                .map_err(|_| "the agent is stopping".to_string())?
                .map_err(|e| format!("service {}: stopping: {e}", cold.svc.name))?;
            if let Some(fs) = &cold.svc.filesystem {
                let unmounted = filesystem::unmount(fs).await.map_err(|e| {
                    format!("service {}: {}: {e}", cold.svc.name, fs.mount.display())
                })?;
                if unmounted {
                    log::info!(
                        "service {}: {} unmounted",
                        cold.svc.name,
                        fs.mount.display()
                    );
                }
            }
        }
        Ok(())
    }

    /// With a storage area, every node's journal replayed (the takeover's consistency
    /// check): an error if another node took the resource in this epoch or later; else the
    /// report (JSON: per node its journal's end, damaged records and last word on the
    /// resource), logged, with what is damaged as a warning.
    async fn journal_check(&self, epoch: u64) -> Result<Option<String>, String> {
        let Some(requests) = self.handoffs.as_ref() else {
            return Ok(None);
        };
        let (reply, answer) = oneshot::channel();
        let asked = requests.send(Request::JournalCheck {
            resource: self.name.clone(),
            reply,
        });
        if asked.is_err() {
            return Err("the storage thread has stopped".into());
        }
        // Slow storage (its thread answers between rounds) does not fail a takeover: the
        // epoch is on record already; the check is skipped, and said so.
        let report = match tokio::time::timeout(STORAGE_WAIT, answer).await {
            Err(_) => {
                log::warn!(
                    "{}: the storage area did not answer within {STORAGE_WAIT:?}: journals not replayed",
                    self.name
                );
                return Ok(None);
            }
            Ok(Err(_)) => return Err("the storage thread has stopped".into()),
            Ok(Ok(Err(e))) => return Err(format!("replaying the journals: {e}")),
            Ok(Ok(Ok(r))) => r,
        };
        let taken = report["taken_elsewhere"]["epoch"].as_u64().unwrap_or(0);
        if taken >= epoch {
            // This node's epoch is stale: the next claim goes above what the journals say.
            self.seen.store(taken, Ordering::Relaxed);
            return Err(format!(
                "the journals refuse this takeover: {} took it in epoch {taken}, not below this one's {epoch}",
                report["taken_elsewhere"]["by"].as_str().unwrap_or("another node")
            ));
        }
        let damaged: Vec<String> = report["journals"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, v)| v["damaged"].as_u64().unwrap_or(0) > 0)
            .map(|(n, v)| format!("{n}: {} damaged", v["damaged"]))
            .collect();
        if damaged.is_empty() {
            log::info!("{}: journals replayed: {report}", self.name);
        } else {
            log::warn!(
                "{}: journals replayed, with damage ({}): {report}",
                self.name,
                damaged.join(", ")
            );
        }
        Ok(Some(report.to_string()))
    }

    /// The resource's newest handoff record as JSON, if there is a storage area and it has
    /// one.
    async fn handoff(&self) -> Option<String> {
        let requests = self.handoffs.as_ref()?;
        let (reply, answer) = oneshot::channel();
        requests
            .send(Request::HandoffRead {
                resource: Some(self.name.clone()),
                key: None,
                reply,
            })
            .ok()?;
        // Without an answer in time the service starts without it (the storage is slow or
        // gone; the journals were read just before).
        let v = tokio::time::timeout(STORAGE_WAIT, answer)
            .await
            .ok()?
            .ok()?;
        if v.get("error").is_some() {
            return None;
        }
        Some(v.to_string())
    }
}
