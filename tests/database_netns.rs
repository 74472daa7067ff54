//! A real database taken over and given back (issue 12; patent fig. 4, 0039, 0042):
//! PostgreSQL 15 from Debian, its data on an ext4 file system on a shared disk (a loop device
//! per host over one file), run cold by the agents of `a` and `b` (each in mount and IPC
//! namespaces of its own) behind the logical address; client `cli` writes numbered rows,
//! one transaction each, and notes each acknowledged one. Checked from outside: the rows
//! through the logical address, the epoch the database was started in, the agents' logs.
use anyhow::{ensure, Result};
use takeover_lab::{
    agents::{Timing, LOGICAL},
    database::{rows, DbCluster},
    Takeover,
};

fn takeover() -> Takeover {
    Takeover::new(env!("CARGO_BIN_EXE_takeover"))
}

#[test]
fn a_crashed_database_host_is_taken_over_with_every_acknowledged_row_and_given_back() -> Result<()>
{
    let mut s = DbCluster::new(&takeover(), Timing::default())?;
    let r = s.crash_and_failback()?;
    eprintln!(
        "{} rows acknowledged ({} before the crash); longest wait: takeover {:?}, failback {:?}",
        r.acked.len(),
        r.before,
        r.takeover_gap,
        r.failback_gap
    );
    ensure!(
        r.takeover_lost.is_empty(),
        "lost at the takeover: {:?}",
        r.takeover_lost
    );
    ensure!(
        r.failback_lost.is_empty(),
        "lost at the failback: {:?}",
        r.failback_lost
    );
    // The same data, recovered: the first row, from long before the crash, is there.
    ensure!(
        rows(&s.cli().ns, LOGICAL)?.contains(&1),
        "the database b started is not the one a served"
    );
    // Started on a in epoch 1, on b told it is a takeover in epoch 2, on a handed over in
    // epoch 3, and never anywhere else.
    ensure!(
        s.starts() == vec!["a 1 takeover", "b 2 takeover", "a 3 handover"],
        "{:?}",
        s.starts()
    );
    let (a, b) = (&s.agents[0], &s.agents[1]);
    ensure!(
        b.logged("fenced", &[("peer", "a")]),
        "b took a's database without a fence"
    );
    ensure!(b.logged("takeover", &[("resource", LOGICAL), ("epoch", "2")]));
    ensure!(b.logged("releasing", &[("resource", LOGICAL)]));
    ensure!(a.logged("takeover", &[("resource", LOGICAL), ("epoch", "3")]));
    // Each agent's status says where the address's steps are: served on a, idle on b.
    for (host, step) in [("a", "serving"), ("b", "idle")] {
        let st: serde_json::Value =
            serde_json::from_str(&takeover().ok(&s.lan.host(host).ns, "status --json")?)?;
        ensure!(
            st["addresses"][0]["step"] == step,
            "{host}: {}",
            st["addresses"][0]
        );
    }
    Ok(())
}
