//! OCF resource agents (Debian's `resource-agents`, as Pacemaker runs them): an action is the
//! agent's script run with the action's name, the OCF environment and the resource's
//! parameters as `OCF_RESKEY_<name>`; its exit status is an OCF return code.
use std::time::Duration;

use crate::config::service::{Ocf, OCF_ROOT};

/// The OCF actions the agent uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Monitor,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Monitor => "monitor",
        }
    }
}

pub const OCF_SUCCESS: i32 = 0;
pub const OCF_NOT_RUNNING: i32 = 7;

/// What an OCF return code means (the resource agent API's names).
pub fn meaning(rc: i32) -> &'static str {
    match rc {
        0 => "OCF_SUCCESS",
        1 => "OCF_ERR_GENERIC",
        2 => "OCF_ERR_ARGS",
        3 => "OCF_ERR_UNIMPLEMENTED",
        4 => "OCF_ERR_PERM",
        5 => "OCF_ERR_INSTALLED",
        6 => "OCF_ERR_CONFIGURED",
        7 => "OCF_NOT_RUNNING",
        8 => "OCF_RUNNING_PROMOTED",
        9 => "OCF_FAILED_PROMOTED",
        _ => "an unknown OCF code",
    }
}

/// The command for `action` of `agent`, for the resource instance `instance`.
pub fn command(agent: &Ocf, instance: &str, action: Action) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(agent.script());
    c.arg(action.name())
        .env("OCF_ROOT", OCF_ROOT)
        .env("OCF_FUNCTIONS_DIR", format!("{OCF_ROOT}/lib/heartbeat"))
        .env("OCF_RESOURCE_INSTANCE", instance)
        .env("OCF_RESOURCE_TYPE", &agent.kind)
        .env("OCF_RESOURCE_PROVIDER", &agent.provider)
        .env(
            "OCF_RESKEY_CRM_meta_timeout",
            agent.timeout.as_millis().to_string(),
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in &agent.params {
        c.env(format!("OCF_RESKEY_{k}"), v);
    }
    c.envs(&agent.env);
    c
}

/// Runs `action` within the agent's timeout: its OCF return code, or why there is none.
pub async fn run(agent: &Ocf, instance: &str, action: Action) -> Result<i32, String> {
    let script = agent.script();
    let child = command(agent, instance, action)
        .spawn()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    let out = tokio::time::timeout(agent.timeout, child.wait_with_output())
        .await
        .map_err(|_| {
            format!(
                "{} {} took longer than {:?}",
                script.display(),
                action.name(),
                agent.timeout
            )
        })?
        .map_err(|e| format!("waiting for {}: {e}", script.display()))?;
    out.status.code().ok_or_else(|| {
        format!(
            "{} {} was killed by a signal",
            script.display(),
            action.name()
        )
    })
}

/// A monitor's verdict for the check table.
pub async fn monitor(agent: &Ocf, instance: &str, timeout: Duration) -> Result<(), String> {
    let agent = Ocf {
        timeout: timeout.min(agent.timeout),
        ..agent.clone()
    };
    match run(&agent, instance, Action::Monitor).await? {
        OCF_SUCCESS => Ok(()),
        rc => Err(format!("monitor returned {rc} ({})", meaning(rc))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_environment_is_the_ocf_one() {
        let agent = Ocf {
            provider: "heartbeat".into(),
            kind: "nginx".into(),
            params: BTreeMap::from([(
                "configfile".to_string(),
                "/etc/nginx/nginx.conf".to_string(),
            )]),
            timeout: Duration::from_secs(20),
            env: BTreeMap::new(),
        };
        let c = command(&agent, "web", Action::Monitor);
        let c = c.as_std();
        assert_eq!(
            c.get_program(),
            std::ffi::OsStr::new("/usr/lib/ocf/resource.d/heartbeat/nginx")
        );
        assert_eq!(c.get_args().collect::<Vec<_>>(), vec!["monitor"]);
        let env: BTreeMap<_, _> = c
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_str().unwrap().to_string(),
                    v.unwrap().to_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(env["OCF_ROOT"], "/usr/lib/ocf");
        assert_eq!(env["OCF_RESOURCE_INSTANCE"], "web");
        assert_eq!(env["OCF_RESOURCE_TYPE"], "nginx");
        assert_eq!(env["OCF_RESKEY_configfile"], "/etc/nginx/nginx.conf");
        assert_eq!(env["OCF_RESKEY_CRM_meta_timeout"], "20000");
        assert_eq!(meaning(7), "OCF_NOT_RUNNING");
    }
}
