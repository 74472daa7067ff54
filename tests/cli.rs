//! The command line's promises: bad input gets one clear line and a non-zero exit, and
//! changes nothing; `--help` teaches.
use anyhow::Result;
use takeover_lab::{Netns, Takeover};

fn takeover() -> Takeover {
    Takeover::new(env!("CARGO_BIN_EXE_takeover"))
}

/// A namespace with a veth pair `v0`/`v1`, the gate attached to `v0` with one entry.
fn setup(t: &Takeover) -> Result<Netns> {
    let ns = Netns::new("cli")?;
    ns.ip("link add v0 type veth peer v1")?;
    ns.ip("link set v0 up")?;
    ns.ip("link set v1 up")?;
    t.ok(&ns, "attach --iface v0")?;
    t.ok(&ns, "gate close 192.0.2.10 --iface v0")?;
    Ok(ns)
}

/// Runs a command that must fail; checks the message and that the gate table is unchanged.
fn refused(t: &Takeover, ns: &Netns, args: &str, says: &str) -> Result<()> {
    let before = t.map(ns)?;
    let out = t.output(ns, args)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "`{args}` succeeded");
    assert!(
        stderr.contains(says),
        "`{args}` said {stderr:?}, expected it to mention {says:?}"
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "`{args}` printed more than one line: {stderr:?}"
    );
    assert!(stderr.starts_with("takeover: "), "{stderr:?}");
    assert_eq!(t.map(ns)?, before, "`{args}` changed the gate table");
    Ok(())
}

#[test]
fn bad_input_is_refused_with_one_clear_line_and_changes_nothing() -> Result<()> {
    let t = takeover();
    let ns = setup(&t)?;
    let cases = [
        ("attach --iface nope0", "no interface \"nope0\""),
        ("detach --iface v1", "nothing is attached to v1"),
        (
            "gate close 192.0.2.300 --iface v0",
            "invalid address \"192.0.2.300\"",
        ),
        (
            "gate close 127.0.0.1 --iface v0",
            "must be a unicast, non-loopback address",
        ),
        (
            "gate open 192.0.2.10 --iface nope0",
            "no interface \"nope0\"",
        ),
        (
            "gate open 192.0.2.10 --iface v1",
            "no gate is attached to v1",
        ),
        (
            "gate open 192.0.2.10 --iface v0 --service sctp/80",
            "protocol \"sctp\" is not tcp or udp",
        ),
        (
            "gate open 192.0.2.10 --iface v0 --service tcp/0",
            "port must be 1-65535",
        ),
        (
            "gate open 192.0.2.10 --iface v0 --service tcp/70000",
            "port must be 1-65535",
        ),
        (
            "gate open 192.0.2.10 --iface v0 --service 80",
            "expected PROTO/PORT",
        ),
        (
            "gate forward 192.0.2.10 --iface v0 --to-mac 02:00:00:00:00",
            "invalid MAC address",
        ),
        (
            "gate forward 192.0.2.10 --iface v0 --to-mac ff:ff:ff:ff:ff:ff",
            "must be a unicast address",
        ),
        (
            "gate forward 192.0.2.10 --iface v0 --to-mac 02:00:00:00:00:01 --via nope0",
            "no interface \"nope0\"",
        ),
        (
            "gate remove 192.0.2.11 --iface v0",
            "192.0.2.11 has no gate on v0",
        ),
        ("map show --iface v1", "no gate is attached to v1"),
        ("log --iface v1", "no gate is attached to v1"),
    ];
    for (args, says) in cases {
        refused(&t, &ns, args, says)?;
    }
    Ok(())
}

#[test]
fn unknown_namespace_and_missing_root_are_refused() -> Result<()> {
    let t = takeover();
    let out = std::process::Command::new(&t.bin)
        .args(["--netns", "to-no-such-ns", "map", "show"])
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no network namespace \"to-no-such-ns\""));

    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&t.bin)
        .args(["map", "show"])
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("must run as root"), "{stderr}");
    Ok(())
}

#[test]
fn usage_errors_exit_non_zero_and_help_has_examples() -> Result<()> {
    let t = takeover();
    let out = std::process::Command::new(&t.bin)
        .args(["gate", "open"])
        .output()?;
    assert_eq!(out.status.code(), Some(2), "clap usage errors exit 2");
    for args in [
        &["--help"][..],
        &["gate", "forward", "--help"],
        &["map", "show", "--help"],
        &["attach", "--help"],
        &["cleanup", "--help"],
    ] {
        let out = std::process::Command::new(&t.bin).args(args).output()?;
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Example"),
            "{args:?} --help has no examples:\n{text}"
        );
    }
    Ok(())
}

#[test]
fn map_show_renders_a_table_and_stable_json() -> Result<()> {
    let t = takeover();
    let ns = setup(&t)?;
    t.ok(&ns, "gate open 2001:db8::1 --iface v0 --service tcp/443")?;
    t.ok(
        &ns,
        "gate forward 192.0.2.10 --iface v0 --service udp/53 --to-mac 02:00:00:00:00:0b --via v1",
    )?;
    let table = t.ok(&ns, "map show")?;
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("IFACE") && lines[0].contains("STATE"),
        "{table}"
    );
    assert_eq!(lines.len(), 4, "{table}");
    assert!(table.contains("192.0.2.10") && table.contains("closed"));
    assert!(table.contains("udp/53") && table.contains("02:00:00:00:00:0b via v1"));
    // Columns line up: every row has STATE at the same offset.
    let col = lines[0].find("STATE").unwrap();
    for l in &lines[1..] {
        assert!(
            ["open", "closed", "forward"]
                .iter()
                .any(|s| l[col..].starts_with(s)),
            "misaligned: {l:?}"
        );
    }
    let json = t.map(&ns)?;
    let entries = json["interfaces"][0]["entries"].as_array().unwrap();
    assert_eq!(json["interfaces"][0]["iface"], "v0");
    assert_eq!(entries.len(), 3);
    let fwd = entries.iter().find(|e| e["state"] == "forward").unwrap();
    assert_eq!(fwd["service"]["proto"], "udp");
    assert_eq!(fwd["service"]["port"], 53);
    assert_eq!(fwd["forward"]["to_mac"], "02:00:00:00:00:0b");
    assert_eq!(fwd["forward"]["via"], "v1");
    for key in ["rx_pass", "rx_drop", "rx_forward", "tx_pass", "tx_drop"] {
        assert_eq!(fwd["counters"][key]["packets"], 0, "{key}");
    }
    Ok(())
}

#[test]
fn check_config_accepts_the_sample_and_lists_every_problem() -> Result<()> {
    let t = takeover();
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/takeover.toml");
    let out = std::process::Command::new(&t.bin)
        .args(["check-config", sample])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));

    let bad = std::env::temp_dir().join(format!("takeover-bad-{}.toml", std::process::id()));
    let good = std::fs::read_to_string(sample)?;
    assert!(good.contains("owner = \"a\"") && good.contains("misses = 8"));
    let text = good
        .replace("owner = \"a\"", "owner = \"nobody\"")
        .replace("misses = 8", "misses = 1");
    std::fs::write(&bad, text)?;
    let out = std::process::Command::new(&t.bin)
        .arg("check-config")
        .arg(&bad)
        .output()?;
    std::fs::remove_file(&bad)?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("2 problem(s)"), "{stderr}");
    assert!(
        stderr.contains("address[0].owner: \"nobody\" is neither this node nor a [[peer]]"),
        "{stderr}"
    );
    assert!(
        stderr.contains("heartbeat.misses: must be between 2 and 1000"),
        "{stderr}"
    );
    Ok(())
}
