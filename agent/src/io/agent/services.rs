//! The services' instances on this node, on the runtime's thread: each is started (or
//! found) at agent start, watched for its exit (the kernel tells at once, by a pidfd) and
//! checked on its own timers; what happens goes to the heartbeat loop, where the core's
//! components decide. Restarts are the core's `Restart` actions, done here.
//!
//! A check result the component cannot learn from (the same as the last `fall.max(rise)`
//! ones since the last restart) is not sent: three services checked every 10 ms would
//! otherwise wake the heartbeat loop 300 times a second for nothing.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::sync::{mpsc, oneshot};

use super::Input;
use crate::{
    config::service::{CheckKind, Service, Supervision},
    io::{
        inbox::Mailbox,
        service::{check, ocf, supervise::Instance},
        status::InstanceNotes as Notes,
    },
};

/// What an instance's task tells the heartbeat loop.
#[derive(Debug)]
pub enum Report {
    /// Check `check` of component `component` passed (or failed, and why).
    Check {
        component: usize,
        check: usize,
        result: Result<(), String>,
    },
    /// Its process exited.
    Exited { component: usize },
    /// The first start at agent start failed (the reason is in the notes).
    StartFailed { component: usize },
    /// A restart the core asked for finished.
    Restarted {
        component: usize,
        result: Result<(), String>,
    },
}

/// What the heartbeat loop (or a stateful resource's steps) asks of an instance's task.
pub enum Command {
    /// The core's `Restart`.
    Restart,
    /// Start a cold service, with this environment added (its takeover's epoch and
    /// handoff); answer once it runs.
    Start {
        env: BTreeMap<String, String>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Stop a cold service; answer once it is gone.
    Stop {
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// The heartbeat loop's handle on the instances.
pub struct Services {
    commands: Vec<Option<mpsc::UnboundedSender<Command>>>,
    notes: Vec<Arc<Mutex<Notes>>>,
}

impl Services {
    /// Starts a task per service this node runs (`here[c]`); a cold one's instance only if
    /// it runs here already (`active[c]`: its address was found open), else at `Start`.
    pub fn start(
        services: &[Service],
        here: &[bool],
        active: &[bool],
        state_dir: PathBuf,
        mailbox: Mailbox<Input>,
    ) -> Self {
        let mut commands = Vec::new();
        let mut notes = Vec::new();
        for (c, svc) in services.iter().enumerate() {
            let n = Arc::new(Mutex::new(Notes {
                checks: vec![None; svc.checks.len()],
                ..Notes::default()
            }));
            notes.push(n.clone());
            if !here[c] {
                commands.push(None);
                continue;
            }
            let (tx, rx) = mpsc::unbounded_channel();
            commands.push(Some(tx));
            let task = Task {
                component: c,
                svc: svc.clone(),
                state_dir: state_dir.clone(),
                mailbox: mailbox.clone(),
                notes: n,
                pid: Arc::new(AtomicU32::new(0)),
                generation: Arc::new(AtomicU64::new(0)),
                active: Arc::new(AtomicBool::new(active[c])),
                env: BTreeMap::new(),
            };
            tokio::spawn(task.run(rx));
        }
        Self { commands, notes }
    }

    /// The channel to component `c`'s task, if it runs here (for a stateful resource's
    /// steps).
    pub fn commands(&self, c: usize) -> Option<mpsc::UnboundedSender<Command>> {
        self.commands.get(c).cloned().flatten()
    }

    /// What the status table shows of each.
    pub fn notes(&self) -> Vec<Notes> {
        self.notes
            .iter()
            .map(|n| n.lock().unwrap().clone())
            .collect()
    }

    /// The pid of component `c`'s instance here, if it runs and is known.
    pub fn pid(&self, c: usize) -> Option<u32> {
        self.notes.get(c)?.lock().unwrap().pid
    }

    /// The core's `Restart` of component `c`.
    pub fn restart(&self, c: usize) {
        match self.commands.get(c) {
            Some(Some(tx)) => {
                let _ = tx.send(Command::Restart);
            }
            _ => log::warn!("restart of a service not run here (component {c}): ignored"),
        }
    }
}

struct Task {
    component: usize,
    svc: Service,
    state_dir: PathBuf,
    mailbox: Mailbox<Input>,
    notes: Arc<Mutex<Notes>>,
    /// The instance's pid (0: none), for the process check.
    pid: Arc<AtomicU32>,
    /// Bumped at each restart: the checks' counts of equal results start again.
    generation: Arc<AtomicU64>,
    /// It should run (a hot service always; a cold one between `Start` and `Stop`): its
    /// checks report only then, and its exit is a fault only then.
    active: Arc<AtomicBool>,
    /// What the last `Start` added to a cold service's environment (its restarts get it
    /// too).
    env: BTreeMap<String, String>,
}

impl Task {
    fn report(&self, r: Report) -> bool {
        self.mailbox.send(Input::Service(r))
    }

    fn set_pid(&self, instance: Option<&Instance>) {
        let pid = instance.and_then(Instance::pid);
        self.pid.store(pid.unwrap_or(0), Ordering::Relaxed);
        self.notes.lock().unwrap().pid = pid;
    }

    /// The service as started now: a cold one with its takeover's environment.
    fn with_env(&self) -> Service {
        let mut svc = self.svc.clone();
        match &mut svc.how {
            Supervision::Run(run) => run.env.extend(self.env.clone()),
            Supervision::Ocf(agent) => agent.env.extend(self.env.clone()),
            _ => {}
        }
        svc
    }

    async fn run(self, mut restarts: mpsc::UnboundedReceiver<Command>) {
        let c = self.component;
        for (n, hc) in self.svc.checks.iter().enumerate() {
            tokio::spawn(check_loop(
                c,
                n,
                hc.kind.clone(),
                hc.interval,
                hc.timeout,
                hc.fall.max(hc.rise),
                self.svc.clone(),
                self.pid.clone(),
                self.generation.clone(),
                self.active.clone(),
                self.mailbox.clone(),
                self.notes.clone(),
            ));
        }
        if !self.active.load(Ordering::Acquire) {
            // A cold service not running here: started by its address's acquire.
            return self.supervise(None, restarts).await;
        }
        let instance = match Instance::start(&self.with_env(), &self.state_dir).await {
            Ok(i) => {
                log::info!(
                    "service {}: {}",
                    self.svc.name,
                    i.pid()
                        .map_or("started".to_string(), |p| format!("running as pid {p}"))
                );
                Some(i)
            }
            Err(why) => {
                log::error!("service {}: {why}", self.svc.name);
                self.notes.lock().unwrap().error = Some(why);
                if !self.report(Report::StartFailed { component: c }) {
                    return;
                }
                if self.watched() {
                    // Someone else's, not running yet: found once it runs.
                    self.find_again(&mut restarts).await
                } else {
                    None
                }
            }
        };
        self.set_pid(instance.as_ref());
        self.supervise(instance, restarts).await
    }

    /// Watches the instance for its exit and does what the commands say, until the agent
    /// stops.
    async fn supervise(
        mut self,
        mut instance: Option<Instance>,
        mut restarts: mpsc::UnboundedReceiver<Command>,
    ) {
        let c = self.component;
        loop {
            let exited = async {
                match instance.as_mut() {
                    Some(i) => i.exited().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = exited => {
                    self.set_pid(None);
                    if !self.report(Report::Exited { component: c }) {
                        return;
                    }
                    log::warn!("service {}: its process exited", self.svc.name);
                    // What it left behind (an nginx worker outlives its master, and goes on
                    // answering on the port) goes now, not at the restart.
                    if let Some(old) = instance.take() {
                        old.kill_remains();
                        if let Err(e) = old.stop().await {
                            log::info!("service {}: the rest of it: {e}", self.svc.name);
                        }
                    }
                    if self.watched() {
                        // Someone else's: found again once it runs again (its checks bring
                        // it back to Normal).
                        instance = self.find_again(&mut restarts).await;
                        self.set_pid(instance.as_ref());
                    }
                }
                got = restarts.recv() => {
                    let Some(cmd) = got else {
                        return;
                    };
                    let idle = !self.active.load(Ordering::Acquire);
                    if !matches!(cmd, Command::Restart) || idle {
                        if !self.command(cmd, &mut instance).await {
                            return;
                        }
                        continue;
                    }
                    if let Some(old) = instance.take() {
                        if let Err(e) = old.stop().await {
                            log::warn!("service {}: stopping before the restart: {e}", self.svc.name);
                        }
                    }
                    let result = Instance::start(&self.with_env(), &self.state_dir).await;
                    let result = match result {
                        Ok(i) => {
                            log::info!("service {}: restarted", self.svc.name);
                            instance = Some(i);
                            Ok(())
                        }
                        Err(why) => {
                            log::error!("service {}: restart failed: {why}", self.svc.name);
                            Err(why)
                        }
                    };
                    self.set_pid(instance.as_ref());
                    {
                        let mut n = self.notes.lock().unwrap();
                        n.restarts += 1;
                        n.error = result.as_ref().err().cloned();
                    }
                    if !self.report(Report::Restarted { component: c, result }) {
                        return;
                    }
                    // After the report (the component counts afresh from it): every check's
                    // next results are news again.
                    self.generation.fetch_add(1, Ordering::Release);
                }
            }
        }
    }
}

impl Task {
    /// A cold service's `Start` or `Stop` (a `Restart` of one not running is refused).
    /// False once the heartbeat loop is gone.
    async fn command(&mut self, cmd: Command, instance: &mut Option<Instance>) -> bool {
        match cmd {
            Command::Restart => {
                let result = Err("not running here (its address is served elsewhere)".into());
                self.report(Report::Restarted {
                    component: self.component,
                    result,
                })
            }
            Command::Start { env, reply } => {
                self.env = env;
                let result = match instance {
                    Some(_) => Ok(()),
                    None => match Instance::start(&self.with_env(), &self.state_dir).await {
                        Ok(i) => {
                            log::info!(
                                "service {}: {}",
                                self.svc.name,
                                i.pid().map_or("started".to_string(), |p| format!(
                                    "started as pid {p}"
                                ))
                            );
                            *instance = Some(i);
                            Ok(())
                        }
                        Err(why) => Err(why),
                    },
                };
                self.set_pid(instance.as_ref());
                self.notes.lock().unwrap().error = result.as_ref().err().cloned();
                // Its checks' results are news again, and count.
                self.generation.fetch_add(1, Ordering::Release);
                self.active.store(result.is_ok(), Ordering::Release);
                let _ = reply.send(result);
                true
            }
            Command::Stop { reply } => {
                self.active.store(false, Ordering::Release);
                // Not started by this agent: an earlier one's may run on (an OCF agent is
                // asked first: some refuse a stop where their configuration is not mounted).
                let mut found = instance.take();
                if found.is_none() && self.ocf_running().await {
                    found = Instance::leftover(&self.svc, &self.state_dir);
                }
                let result = match found {
                    Some(i) => {
                        let r = i.stop().await;
                        if r.is_ok() {
                            log::info!("service {}: stopped", self.svc.name);
                        }
                        r
                    }
                    None => Ok(()),
                };
                self.set_pid(instance.as_ref());
                let _ = reply.send(result);
                true
            }
        }
    }

    /// Whether the leftover of a service not started by this agent may run: for an OCF one,
    /// its `monitor` does not say `OCF_NOT_RUNNING`; any other kind is looked for by its pid
    /// file.
    async fn ocf_running(&self) -> bool {
        let Supervision::Ocf(agent) = &self.svc.how else {
            return true;
        };
        !matches!(
            ocf::run(agent, &self.svc.name, ocf::Action::Monitor).await,
            Ok(ocf::OCF_NOT_RUNNING)
        )
    }

    /// Run by someone else (a pid file, a systemd unit): never started nor stopped here.
    fn watched(&self) -> bool {
        !matches!(self.svc.how, Supervision::Run(_) | Supervision::Ocf(_))
    }

    /// Looks for a watched instance until it runs again (a restart order meanwhile only
    /// looks at once).
    async fn find_again(
        &self,
        restarts: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Option<Instance> {
        loop {
            if let Ok(i) = Instance::start(&self.svc, &self.state_dir).await {
                log::info!(
                    "service {}: running again{}",
                    self.svc.name,
                    i.pid().map_or(String::new(), |p| format!(" as pid {p}"))
                );
                return Some(i);
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                got = restarts.recv() => {
                    got?;
                    let result = Err("a watched service is restarted by whoever runs it".to_string());
                    if !self.report(Report::Restarted { component: self.component, result }) {
                        return None;
                    }
                }
            }
        }
    }
}

/// Runs one check at its interval for as long as the agent runs.
#[allow(clippy::too_many_arguments)]
async fn check_loop(
    component: usize,
    n: usize,
    kind: CheckKind,
    interval: Duration,
    timeout: Duration,
    news: u32,
    svc: Service,
    pid: Arc<AtomicU32>,
    generation: Arc<AtomicU64>,
    active: Arc<AtomicBool>,
    mailbox: Mailbox<Input>,
    notes: Arc<Mutex<Notes>>,
) {
    let ip: IpAddr = svc.addresses[0];
    let mut every = tokio::time::interval(interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut last, mut same, mut seen_gen) = (None::<bool>, 0u32, 0u64);
    loop {
        every.tick().await;
        if !active.load(Ordering::Acquire) {
            // A cold service not running here: nothing to check.
            continue;
        }
        let p = Some(pid.load(Ordering::Relaxed)).filter(|&p| p != 0);
        let result = match (&kind, &svc.how) {
            (CheckKind::OcfMonitor, Supervision::Ocf(agent)) => {
                ocf::monitor(agent, &svc.name, timeout).await
            }
            _ => check::run(&kind, ip, timeout, p).await,
        };
        let pass = result.is_ok();
        let g = generation.load(Ordering::Acquire);
        if g != seen_gen || last != Some(pass) {
            (seen_gen, last, same) = (g, Some(pass), 0);
        }
        same = same.saturating_add(1);
        notes.lock().unwrap().checks[n] = Some(result.clone());
        if same <= news
            && !mailbox.send(Input::Service(Report::Check {
                component,
                check: n,
                result,
            }))
        {
            return;
        }
    }
}
