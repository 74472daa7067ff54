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
            "gate close 169.254.0.1 --iface v0",
            "not link-local (169.254.0.0/16, fe80::/10",
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

const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/takeover.toml");

/// A directory for one test's files, removed when dropped (also on failure).
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Result<Self> {
        let d = std::env::temp_dir().join(format!("takeover-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d)?;
        Ok(Self(d))
    }

    /// The sample with its `from` strings replaced, as a file in this directory.
    fn sample(&self, name: &str, edits: &[(&str, &str)]) -> Result<std::path::PathBuf> {
        let mut text = std::fs::read_to_string(SAMPLE)?;
        for (from, to) in edits {
            assert!(text.contains(from), "the sample has no {from:?}");
            text = text.replace(from, to);
        }
        let p = self.0.join(name);
        std::fs::write(&p, text)?;
        Ok(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The sample's fence program does not exist here; one that does.
const FENCE: (&str, &str) = ("/usr/local/sbin/fence-node", "/bin/true");

/// `takeover ARGS`, killed (and the test failed) if it takes more than 20 s: a read that
/// blocks must fail the test, not hang it.
fn bounded(cmd: &mut std::process::Command) -> Result<std::process::Output> {
    use std::process::Stdio;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait()?.is_none() {
        if std::time::Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            anyhow::bail!("{cmd:?} still ran after 20 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(child.wait_with_output()?)
}

fn check_config(t: &Takeover, file: &std::path::Path) -> Result<std::process::Output> {
    bounded(
        std::process::Command::new(&t.bin)
            .arg("check-config")
            .arg(file),
    )
}

#[test]
fn check_config_accepts_the_sample_and_lists_every_problem() -> Result<()> {
    let t = takeover();
    let dir = Scratch::new("check-sample")?;
    let sample = dir.sample("takeover.toml", &[FENCE])?;
    let out = check_config(&t, &sample)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("valid"), "{stdout}");

    let bad = std::env::temp_dir().join(format!("takeover-bad-{}.toml", std::process::id()));
    let good = std::fs::read_to_string(SAMPLE)?;
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
    let dir = Scratch::new("closed-pipe")?;
    let sample = dir.sample("takeover.toml", &[FENCE])?;
    let sample = sample.to_str().unwrap();
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

/// One line on stderr, exit status 1, and it says `says`.
fn refused_with(out: &std::process::Output, says: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(says), "said {stderr:?}, expected {says:?}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr:?}");
}

#[test]
fn check_config_reads_only_a_regular_file_of_bounded_size() -> Result<()> {
    let t = takeover();
    let dir = Scratch::new("check-kinds")?;
    // A FIFO with no writer: the read must neither block nor wait for one.
    let fifo = dir.0.join("fifo.toml");
    takeover_lab::run(std::process::Command::new("mkfifo").arg(&fifo))?;
    refused_with(
        &check_config(&t, &fifo)?,
        "it is a named pipe (FIFO), not a regular file",
    );
    refused_with(
        &check_config(&t, "/dev/zero".as_ref())?,
        "cannot read /dev/zero: it is a character device, not a regular file",
    );
    refused_with(
        &check_config(&t, &dir.0)?,
        "it is a directory, not a regular file",
    );
    // Over the bound: refused however valid its start (the sample, then comments).
    let big = dir.sample("big.toml", &[FENCE])?;
    let mut text = std::fs::read_to_string(&big)?;
    text.push_str(&"# padding\n".repeat(120_000));
    std::fs::write(&big, text)?;
    refused_with(&check_config(&t, &big)?, "larger than the limit of 1 MiB");
    Ok(())
}

#[test]
fn check_config_refuses_a_missing_fence_program_and_a_directory_key_file() -> Result<()> {
    let t = takeover();
    let dir = Scratch::new("check-files")?;
    let key_dir = dir.0.join("key.d");
    std::fs::create_dir(&key_dir)?;
    let missing = dir.0.join("no-such-fence");
    let both = dir.sample(
        "both.toml",
        &[
            ("/usr/local/sbin/fence-node", missing.to_str().unwrap()),
            ("/etc/takeover/key", key_dir.to_str().unwrap()),
        ],
    )?;
    let out = check_config(&t, &both)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("2 problem(s)"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "fence.command: {} does not exist",
            missing.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "auth.key_file {} is a directory, not a regular file",
            key_dir.display()
        )),
        "{stderr}"
    );

    // A bare name is looked up in PATH, as the agent will run it.
    let bare = dir.sample("bare.toml", &[("/usr/local/sbin/fence-node", "true")])?;
    let found = bounded(
        std::process::Command::new(&t.bin)
            .env("PATH", "/usr/bin:/bin")
            .arg("check-config")
            .arg(&bare),
    )?;
    assert!(
        found.status.success(),
        "{}",
        String::from_utf8_lossy(&found.stderr)
    );
    let lost = bounded(
        std::process::Command::new(&t.bin)
            .env("PATH", &dir.0)
            .arg("check-config")
            .arg(&bare),
    )?;
    let stderr = String::from_utf8_lossy(&lost.stderr);
    assert_eq!(lost.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("fence.command: \"true\" is not in PATH"),
        "{stderr}"
    );

    // A missing key file is only a warning here: it may live only on the nodes.
    let out = check_config(&t, &dir.sample("nokey.toml", &[FENCE])?)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("warning: auth.key_file"), "{stdout}");
    Ok(())
}

#[test]
fn run_refuses_a_directory_key_file_and_a_missing_fence_program() -> Result<()> {
    let t = takeover();
    let ns = Netns::new("cli-run")?;
    let dir = Scratch::new("run-files")?;
    let key_dir = dir.0.join("key.d");
    std::fs::create_dir(&key_dir)?;
    let key_is_dir = dir.sample(
        "key.toml",
        &[FENCE, ("/etc/takeover/key", key_dir.to_str().unwrap())],
    )?;
    let no_fence = dir.sample(
        "fence.toml",
        &[("/usr/local/sbin/fence-node", "/nonexistent/fence-node")],
    )?;
    for (config, says) in [
        (&key_is_dir, "is a directory, not a regular file"),
        (
            &no_fence,
            "fence.command: /nonexistent/fence-node does not exist",
        ),
    ] {
        let out = bounded(
            t.cmd(&ns)
                .args(["run", "--no-realtime", "--config"])
                .arg(config),
        )?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
    // It stopped before touching anything: no gate attached.
    assert!(!ns.pin_dir()?.exists());
    Ok(())
}

#[test]
fn check_config_names_every_problem_of_a_service_with_its_key_and_line() -> Result<()> {
    let t = takeover();
    let dir = Scratch::new("check-services")?;
    let sample = dir.sample("takeover.toml", &[FENCE])?;
    let base = std::fs::read_to_string(&sample)?;
    let ip = base
        .lines()
        .find_map(|l| l.strip_prefix("ip = \""))
        .and_then(|l| l.split(['/', '"']).next())
        .expect("the sample has an [[address]]")
        .to_string();
    let good = format!(
        "{base}\n[[service]]\nname = \"api\"\naddress = \"{ip}\"\nprotocol = \"tcp\"\nport = 8080\n\
         run = {{ command = [\"/usr/sbin/nginx\", \"-g\", \"daemon off;\"] }}\n\n\
         [[service.check]]\ntype = \"http\"\ninterval = \"50ms\"\ntimeout = \"50ms\"\n"
    );
    let file = dir.0.join("good.toml");
    std::fs::write(&file, &good)?;
    let out = check_config(&t, &file)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = format!(
        "{base}\n[[service]]\nname = \"bad\"\naddress = \"192.0.2.250\"\nprotocol = \"sctp\"\nport = 0\n\
         run = {{ command = [\"/usr/sbin/nginx\"] }}\nwatch = {{ pid_file = \"/run/nginx.pid\" }}\n\n\
         [[service.check]]\ntype = \"ping\"\n\n\
         [[service.check]]\ntype = \"tcp\"\ninterval = \"10ms\"\ntimeout = \"1s\"\n"
    );
    let file = dir.0.join("bad.toml");
    std::fs::write(&file, &bad)?;
    let before = std::fs::read(&file)?;
    let out = check_config(&t, &file)?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line_of = |needle: &str| {
        bad.lines()
            .enumerate()
            .filter(|(_, l)| l.contains(needle))
            .map(|(i, _)| i + 1)
            .last()
            .unwrap()
    };
    // The sample's own services come first.
    let n = base.matches("\n[[service]]").count();
    for (key, needle) in [
        ("address", "192.0.2.250"),
        ("protocol", "sctp"),
        ("port", "port = 0"),
        ("check[0].type", "\"ping\""),
        ("check[1].timeout", "timeout = \"1s\""),
    ] {
        let key = format!("service[{n}].{key}");
        let line = line_of(needle);
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(&format!("line {line},")) && l.contains(&key)),
            "{key} at line {line}:\n{stderr}"
        );
    }
    assert!(
        stderr.contains("watch"),
        "run and watch both given:\n{stderr}"
    );
    assert_eq!(
        std::fs::read(&file)?,
        before,
        "check-config changes nothing"
    );
    Ok(())
}

/// The storage area is checked where check-config runs: formatted for this node, it is
/// described; missing or formatted for other nodes, a warning says why `run` would refuse.
/// `storage init` and `show` work on a plain file too (one host; direct I/O if the file
/// system has it), and a second init is refused without `--force`.
#[test]
fn check_config_describes_the_storage_area_and_warns_of_one_it_cannot_use() -> Result<()> {
    let t = takeover();
    let dir = Scratch::new("check-storage")?;
    let area = dir.0.join("area.img");
    std::fs::File::create(&area)?.set_len(8 << 20)?;
    let with = |device: &std::path::Path| {
        let section = format!(
            "\n[storage]\ndevice = \"{}\"\n\n[fence]\n",
            device.display()
        );
        dir.sample("storage.toml", &[FENCE, ("\n[fence]\n", section.as_str())])
    };
    let config = with(&area)?;
    // Not formatted yet: a warning, still valid.
    let out = check_config(&t, &config)?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("warning: storage.device") && text.contains("storage init"),
        "{text}"
    );
    t.ok_plain(&format!(
        "storage init {} --config {}",
        area.display(),
        config.display()
    ))?;
    let out = check_config(&t, &config)?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("storage area") && text.contains("nodes a, b"),
        "{text}"
    );
    let again = std::process::Command::new(&t.bin)
        .args(["storage", "init"])
        .arg(&area)
        .args(["--nodes", "a,b"])
        .output()?;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let shown: serde_json::Value =
        serde_json::from_str(&t.ok_plain(&format!("storage show {} --json", area.display()))?)?;
    assert_eq!(shown["nodes"].as_array().map(Vec::len), Some(2), "{shown}");
    assert_eq!(shown["damaged"], 0, "{shown}");
    // Formatted for other nodes: the warning names them.
    t.ok_plain(&format!(
        "storage init {} --nodes x,y --force",
        area.display()
    ))?;
    let out = check_config(&t, &config)?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("node a is not in the storage area"), "{text}");
    Ok(())
}
