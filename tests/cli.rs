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

/// Runs `takeover ARGS` with its stdout a pipe whose reader has gone (`| head -0`).
fn into_closed_pipe(t: &Takeover, ns: &Netns, args: &[&str]) -> Result<std::process::Output> {
    let (reader, writer) = std::io::pipe()?;
    drop(reader);
    Ok(t.cmd(ns).args(args).stdout(writer).output()?)
}

#[test]
fn output_into_a_closed_pipe_is_no_panic() -> Result<()> {
    let t = takeover();
    let ns = setup(&t)?;
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/takeover.toml");
    for args in [
        &["map", "show", "--json"][..],
        &["map", "show"],
        &["gate", "close", "192.0.2.10", "--iface", "v0"],
        &["attach", "--iface", "v0"],
        &["check-config", sample],
        &["--help"],
        &["map", "show", "--help"],
    ] {
        let out = into_closed_pipe(&t, &ns, args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
    }
    Ok(())
}

/// `takeover ARGS --help`.
fn help(t: &Takeover, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(&t.bin)
        .args(args)
        .arg("--help")
        .output()?;
    assert!(out.status.success(), "{args:?} --help failed");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The lines of a help section ("Options:") up to the next blank line.
fn section<'a>(text: &'a str, title: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|l| *l != title)
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect()
}

/// Every option and argument of a help text, with what it says of itself (on its line,
/// or on the next, more indented, as clap puts long help).
fn described(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for title in ["Arguments:", "Options:"] {
        let lines = section(text, title);
        for (i, line) in lines.iter().enumerate() {
            let item = line.trim_start();
            if !(item.starts_with('-') || item.starts_with('<')) {
                continue;
            }
            let (name, rest) = item.split_once("  ").unwrap_or((item, ""));
            let indent = line.len() - item.len();
            let next = lines.get(i + 1).filter(|n| {
                let t = n.trim_start();
                n.len() - t.len() > indent && !t.starts_with('-') && !t.starts_with('<')
            });
            let says = match rest.trim() {
                "" => next.map_or("", |n| n.trim()),
                s => s,
            };
            out.push((name.to_string(), says.to_string()));
        }
    }
    out
}

#[test]
fn every_subcommand_describes_each_of_its_options_and_has_examples() -> Result<()> {
    let t = takeover();
    let mut todo = vec![Vec::<String>::new()];
    let mut leaves = 0;
    while let Some(path) = todo.pop() {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let text = help(&t, &args)?;
        for (name, says) in described(&text) {
            assert!(
                !says.is_empty(),
                "`takeover {args:?} --help`: {name} is not described:\n{text}"
            );
        }
        let subcommands: Vec<String> = section(&text, "Commands:")
            .iter()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| *c != "help")
            .map(String::from)
            .collect();
        if subcommands.is_empty() {
            leaves += 1;
            assert!(
                text.contains("Example"),
                "{args:?} --help has no examples:\n{text}"
            );
        }
        for c in subcommands {
            todo.push(path.iter().cloned().chain([c]).collect());
        }
    }
    assert!(leaves >= 12, "only {leaves} commands found");
    Ok(())
}
