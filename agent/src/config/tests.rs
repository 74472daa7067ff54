use super::*;

const SAMPLE: &str = include_str!("../../../examples/takeover.toml");

#[test]
fn the_sample_config_is_valid() {
    let c = parse(SAMPLE).unwrap();
    assert_eq!(c.node.name, "a");
    assert_eq!(c.node.listen.len(), 2);
    assert_eq!(c.peers[0].name, "b");
    assert_eq!(c.addresses[0].preference, vec!["a", "b"]);
    assert_eq!(c.addresses[1].prefix, 64);
    assert_eq!(c.heartbeat.dead_after(), Duration::from_millis(8));
    assert_eq!(c.fence.command, vec!["/usr/local/sbin/fence-node"]);
}

const MINIMAL: &str = r#"
[node]
name = "a"
lan = "eth0"
listen = ["10.0.0.1:7400"]

[[peer]]
name = "b"
paths = ["10.0.0.2:7400"]

[[address]]
ip = "10.0.0.100"
owner = "a"
standbys = ["b"]

[fence]
command = ["/bin/true"]

[auth]
key_file = "/etc/takeover/key"
"#;

#[test]
fn defaults_fill_what_is_left_out() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.node.xdp_mode, XdpMode::Auto);
    assert_eq!(
        c.heartbeat,
        Heartbeat {
            interval: DEFAULT_HEARTBEAT_INTERVAL,
            misses: DEFAULT_MISSES,
            lan_every: DEFAULT_LAN_EVERY,
            startup_grace: DEFAULT_STARTUP_GRACE,
            restart_grace: DEFAULT_RESTART_GRACE,
            agent_exit: AgentExit::Takeover,
        }
    );
    assert!(c.node.threaded_napi);
    assert_eq!(
        c.preempt,
        Preempt {
            enabled: true,
            delay: DEFAULT_PREEMPT_DELAY
        }
    );
    assert_eq!(c.announce.count, DEFAULT_ANNOUNCE_COUNT);
    assert_eq!(c.addresses[0].prefix, 32);
}

/// Replaces `from` in MINIMAL (which must contain it) and returns the errors.
fn errors_with(from: &str, to: &str) -> Vec<ConfigError> {
    assert!(MINIMAL.contains(from), "{from}");
    parse(&MINIMAL.replacen(from, to, 1)).unwrap_err()
}

fn assert_error(errors: &[ConfigError], line: usize, key: &str, says: &str) {
    assert!(
        errors
            .iter()
            .any(|e| e.line == line && e.key == key && e.message.contains(says)),
        "expected line {line} {key}: ...{says}..., got {errors:#?}"
    );
}

#[test]
fn agent_exit_and_threaded_napi_are_read_and_checked() {
    let c = parse(&MINIMAL.replacen(
        "[fence]",
        "[heartbeat]\nagent_exit = \"wait\"\n\n[fence]",
        1,
    ))
    .unwrap();
    assert_eq!(c.heartbeat.agent_exit, AgentExit::Wait);
    let c = parse(&MINIMAL.replacen(
        r#"listen = ["10.0.0.1:7400"]"#,
        "listen = [\"10.0.0.1:7400\"]\nthreaded_napi = true",
        1,
    ))
    .unwrap();
    assert!(c.node.threaded_napi);
    let errors = parse(&MINIMAL.replacen(
        "[fence]",
        "[heartbeat]\nagent_exit = \"ignore\"\n\n[fence]",
        1,
    ))
    .unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.key == "heartbeat.agent_exit" && e.message.contains("not takeover or wait")),
        "{errors:?}"
    );
}

#[test]
fn every_error_names_its_key_and_line() {
    assert_error(
        &errors_with(r#"name = "a""#, r#"name = "a b""#),
        3,
        "node.name",
        "is not a node name",
    );
    assert_error(
        &errors_with(r#"owner = "a""#, r#"owner = "c""#),
        13,
        "address[0].owner",
        "neither this node nor a [[peer]]",
    );
    assert_error(
        &errors_with(r#"standbys = ["b"]"#, r#"standbys = ["b", "b"]"#),
        14,
        "address[0].standbys",
        "listed twice",
    );
    assert_error(
        &errors_with(r#"ip = "10.0.0.100""#, r#"ip = "10.0.0.300""#),
        12,
        "address[0].ip",
        "not an IPv4 or IPv6 address",
    );
    assert_error(
        &errors_with(r#"ip = "10.0.0.100""#, r#"ip = "127.0.0.1""#),
        12,
        "address[0].ip",
        "cannot be a logical address",
    );
    assert_error(
        &errors_with(r#"ip = "10.0.0.100""#, r#"ip = "10.0.0.100/33""#),
        12,
        "address[0].ip",
        "prefix /33",
    );
    assert_error(
        &errors_with(r#"paths = ["10.0.0.2:7400"]"#, r#"paths = ["10.0.0.2"]"#),
        9,
        "peer[0].paths",
        "not an address with a port",
    );
    assert_error(
        &errors_with(
            r#"paths = ["10.0.0.2:7400"]"#,
            r#"paths = ["10.0.0.2:7400", "10.1.0.2:7400"]"#,
        ),
        9,
        "peer[0].paths",
        "has 2 paths but node.listen has 1",
    );
    assert_error(
        &errors_with(r#"name = "b""#, r#"name = "a""#),
        8,
        "peer[0].name",
        "already a node",
    );
    assert_error(
        &errors_with(r#"lan = "eth0""#, "lan = \"eth0\"\nxdp_mode = \"fast\""),
        5,
        "node.xdp_mode",
        "not auto, driver or generic",
    );
    assert_error(
        &errors_with(r#"command = ["/bin/true"]"#, "command = []"),
        17,
        "fence.command",
        "must name a program",
    );
    assert_error(
        &errors_with(
            "[fence]\ncommand = [\"/bin/true\"]\n",
            "[heartbeat]\ninterval = \"1x\"\nmisses = 1\n",
        ),
        17,
        "heartbeat.interval",
        "unit \"x\" is not one of us, ms, s, m or h",
    );
    // The LAN must still be heard within the dead time, with two intervals to spare.
    assert_error(
        &errors_with(
            "[fence]\ncommand = [\"/bin/true\"]\n",
            "[heartbeat]\nmisses = 5\nlan_every = 4\n[fence]\ncommand = [\"/bin/true\"]\n",
        ),
        18,
        "heartbeat.lan_every",
        "between 1 and misses - 2 (3)",
    );
}

#[test]
fn all_errors_are_reported_at_once_in_file_order() {
    let text = MINIMAL
        .replacen(r#"owner = "a""#, r#"owner = "z""#, 1)
        .replacen(r#"name = "a""#, r#"name = """#, 1);
    let errors = parse(&text).unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].line < errors[1].line);
}

#[test]
fn missing_fence_is_refused_with_the_reason() {
    let errors = errors_with("[fence]\ncommand = [\"/bin/true\"]\n", "");
    assert!(errors
        .iter()
        .any(|e| e.key == "fence.command" && e.message.contains("two hosts serving one address")));
}

#[test]
fn syntax_errors_and_unknown_keys_point_at_the_line() {
    let errors = errors_with("[auth]", "[auth\n");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].line, 19);
    let errors = errors_with(r#"lan = "eth0""#, "lan = \"eth0\"\nlna = \"eth1\"");
    assert_eq!(
        (errors[0].line, errors[0].message.contains("unknown field")),
        (5, true),
        "{errors:#?}"
    );
    let shown = errors[0].to_string();
    assert!(shown.starts_with("line 5, column 1: "), "{shown}");
}

/// MINIMAL with a [heartbeat]/[preempt] section holding `lines`, inserted before [fence].
fn with_section(section: &str, lines: &str) -> String {
    MINIMAL.replacen("[fence]", &format!("[{section}]\n{lines}\n\n[fence]"), 1)
}

#[test]
fn duration_errors_say_which_units_work() {
    let errors = parse(&with_section("heartbeat", "interval = \"1ns\"")).unwrap_err();
    assert_error(&errors, 17, "heartbeat.interval", "nanoseconds");
    assert_error(&errors, 17, "heartbeat.interval", "us, ms, s, m or h");
    let errors = parse(&with_section("preempt", "delay = \"5\"")).unwrap_err();
    assert_error(&errors, 17, "preempt.delay", "has no unit: write 5s");
    // Hours are accepted where the range allows them, refused by the range elsewhere.
    let c = parse(&with_section("preempt", "delay = \"1h\"")).unwrap();
    assert_eq!(c.preempt.delay, Duration::from_secs(3600));
    let errors = parse(&with_section("preempt", "delay = \"2h\"")).unwrap_err();
    assert_error(
        &errors,
        17,
        "preempt.delay",
        "must be between 0ns and 3600s",
    );
}

#[test]
fn a_duplicate_key_is_named() {
    let errors = errors_with(r#"lan = "eth0""#, "lan = \"eth0\"\nname = \"b\"");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!((errors[0].line, errors[0].column), (5, 1));
    assert!(
        errors[0].message.contains("duplicate key node.name"),
        "{errors:#?}"
    );
    let errors = errors_with(
        r#"paths = ["10.0.0.2:7400"]"#,
        "paths = [\"10.0.0.2:7400\"]\n\n[[peer]]\nname = \"c\"\n\"paths\" = []\npaths = []",
    );
    assert_error(&errors, 14, "", "duplicate key peer[1].paths");
    let errors = errors_with("[auth]", "[node]\n\n[auth]");
    assert_error(&errors, 19, "", "duplicate key node: give each key once");
    let errors = errors_with(r#"lan = "eth0""#, "lan = \"eth0\"\nx.y = 1\nx.y = 2");
    assert_error(&errors, 6, "", "duplicate key node.x.y");
}

#[test]
fn addresses_that_cannot_be_logical_are_refused() {
    for (ip, says) in [
        ("255.255.255.255", "it is the broadcast address"),
        ("10.0.0.255/24", "the broadcast address of its /24"),
        ("10.0.0.103/30", "the broadcast address of its /30"),
        ("169.254.10.1", "link-local"),
        ("fe80::1/64", "link-local"),
        ("224.0.0.18", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("::ffff:10.0.0.100", "IPv4-mapped"),
    ] {
        let errors = errors_with(r#"ip = "10.0.0.100""#, &format!("ip = {ip:?}"));
        assert_error(&errors, 12, "address[0].ip", says);
        assert_error(&errors, 12, "address[0].ip", "cannot be a logical address");
    }
    // No broadcast in /31 and /32, and a .255 is an ordinary address in a wider subnet.
    for ip in [
        "10.0.0.255/31",
        "10.0.0.255/32",
        "10.0.0.255/16",
        "fd00::ffff/64",
    ] {
        let text = MINIMAL.replacen(r#"ip = "10.0.0.100""#, &format!("ip = {ip:?}"), 1);
        assert!(parse(&text).is_ok(), "{ip}: {:?}", parse(&text));
    }
}

#[test]
fn the_config_accepts_no_address_the_cli_refuses() {
    for ip in [
        "10.0.0.100",
        "192.0.2.255",
        "255.255.255.255",
        "169.254.0.1",
        "fe80::1",
        "fd00::1",
        "::ffff:10.0.0.1",
        "224.0.0.1",
        "ff05::2",
        "127.0.0.2",
        "0.0.0.0",
        "::",
        "::1",
    ] {
        let text = MINIMAL.replacen(r#"ip = "10.0.0.100""#, &format!("ip = {ip:?}"), 1);
        let cli = crate::dataplane::Target::parse_addr(ip);
        assert_eq!(
            parse(&text).is_ok(),
            cli.is_ok(),
            "{ip}: config and CLI disagree"
        );
    }
}

#[test]
fn a_logical_address_is_no_path_address() {
    assert_error(
        &errors_with(r#"ip = "10.0.0.100""#, r#"ip = "10.0.0.1/24""#),
        12,
        "address[0].ip",
        "10.0.0.1 is also node.listen[0]",
    );
    assert_error(
        &errors_with(r#"ip = "10.0.0.100""#, r#"ip = "10.0.0.2""#),
        12,
        "address[0].ip",
        "10.0.0.2 is also peer[0].paths[0]",
    );
}

#[test]
fn a_peer_path_is_another_host_in_the_same_family() {
    assert_error(
        &errors_with(
            r#"paths = ["10.0.0.2:7400"]"#,
            r#"paths = ["10.0.0.1:7401"]"#,
        ),
        9,
        "peer[0].paths",
        "10.0.0.1 is this node's own address (node.listen[0])",
    );
    let errors = errors_with(
        r#"paths = ["10.0.0.2:7400"]"#,
        r#"paths = ["[fd00::2]:7400"]"#,
    );
    assert_error(
        &errors,
        9,
        "peer[0].paths",
        "[fd00::2]:7400 is IPv6 but node.listen[0] (10.0.0.1:7400) is IPv4",
    );
    assert_eq!(errors[0].column, 10, "points at the path itself");
}

#[test]
fn address_problems_are_reported_together() {
    let text = MINIMAL
        .replacen(
            r#"paths = ["10.0.0.2:7400"]"#,
            r#"paths = ["[fd00::2]:7400"]"#,
            1,
        )
        .replacen(r#"ip = "10.0.0.100""#, r#"ip = "10.0.0.1""#, 1)
        .replacen(
            "[auth]",
            "[[address]]\nip = \"169.254.0.9\"\nowner = \"b\"\n\n[auth]",
            1,
        );
    let errors = parse(&text).unwrap_err();
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        ["peer[0].paths", "address[0].ip", "address[1].ip"],
        "{errors:#?}"
    );
}
