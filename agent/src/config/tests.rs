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
fn missing_fence_is_refused_with_the_reason_when_the_leases_are_off() {
    let errors = errors_with(
        "[fence]\ncommand = [\"/bin/true\"]\n",
        "[lease]\nenabled = false\n",
    );
    assert!(errors
        .iter()
        .any(|e| e.key == "fence.command" && e.message.contains("two hosts serving one address")));
}

#[test]
fn leases_are_on_by_default_and_need_no_fence_command() {
    let c = parse(&MINIMAL.replacen("[fence]\ncommand = [\"/bin/true\"]\n", "", 1)).unwrap();
    assert!(c.lease.enabled);
    assert!(c.fence.command.is_empty());
    assert!(parse(MINIMAL).unwrap().lease.enabled);
    let off = parse(&MINIMAL.replacen("[auth]", "[lease]\nenabled = false\n\n[auth]", 1)).unwrap();
    assert!(!off.lease.enabled);
    let errors = errors_with("[auth]", "[lease]\nenable = true\n\n[auth]");
    assert!(
        errors.iter().any(|e| e.message.contains("enable")),
        "{errors:#?}"
    );
}

#[test]
fn a_storage_area_is_optional_with_defaults_and_bad_settings_are_named() {
    assert_eq!(parse(MINIMAL).unwrap().storage, None);
    let c = parse(&with_section("storage", "device = \"/dev/sdb\"")).unwrap();
    let st = c.storage.unwrap();
    assert_eq!(st.device, PathBuf::from("/dev/sdb"));
    assert_eq!(
        (st.interval, st.timeout, st.on_lost),
        (
            Duration::from_millis(50),
            Duration::from_millis(500),
            super::OnStorageLost::Stay
        )
    );
    let c = parse(&with_section(
        "storage",
        "device = \"/dev/sdb\"\ninterval = \"10ms\"\ntimeout = \"30ms\"\non_lost = \"hand_over\"",
    ))
    .unwrap();
    let st = c.storage.unwrap();
    assert_eq!(
        (st.timeout, st.on_lost),
        (Duration::from_millis(30), super::OnStorageLost::HandOver)
    );
    for (lines, key, says) in [
        ("device = \"sdb\"", "storage.device", "absolute"),
        (
            "device = \"/dev/sdb\"\ninterval = \"100ms\"\ntimeout = \"200ms\"",
            "storage.timeout",
            "3 intervals",
        ),
        (
            "device = \"/dev/sdb\"\non_lost = \"panic\"",
            "storage.on_lost",
            "stay or hand_over",
        ),
        (
            "device = \"/dev/sdb\"\ninterval = \"0ms\"",
            "storage.interval",
            "",
        ),
        ("interval = \"10ms\"", "", "missing field `device`"),
    ] {
        let errors = parse(&with_section("storage", lines)).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.key.starts_with(key) && e.message.contains(says)),
            "{lines}: {errors:#?}"
        );
    }
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

/// MINIMAL with `services` (TOML text) inserted before `[fence]`.
fn with_services(services: &str) -> String {
    MINIMAL.replacen("[fence]", &format!("{services}\n[fence]"), 1)
}

/// The line of `needle`'s first occurrence in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    let at = text.find(needle).unwrap_or_else(|| panic!("{needle}"));
    text[..at].matches('\n').count() + 1
}

#[test]
fn services_are_read_with_their_checks_and_recovery() {
    use service::*;
    let text = with_services(
        r#"
[[service]]
name = "web"
address = "10.0.0.100"
protocol = "tcp"
port = 80
run = { command = ["/usr/sbin/nginx", "-g", "daemon off;"], env = { LANG = "C" }, user = "www-data", dir = "/var/www" }

[[service.check]]
type = "http"
path = "/health"
status = 204
body = "ok"
interval = "10ms"
timeout = "5ms"
fall = 2
rise = 3

[[service.check]]
type = "tcp"

[service.recovery]
restarts = 5
backoff = "50ms"
escalate = true

[[service]]
name = "dns"
addresses = ["10.0.0.100"]
protocol = "udp"
ports = "53-54"
watch = { pid_file = "/run/dnsmasq/dnsmasq.pid" }
critical = true

[[service.check]]
type = "dns"
query = "www.example.lan"
record = "aaaa"

[[service]]
name = "ocf-web"
address = "10.0.0.100"
protocol = "tcp"
port = 8080
ocf = { agent = "heartbeat:nginx", params = { configfile = "/etc/nginx/nginx.conf" } }
"#,
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.services.len(), 3);
    let web = &c.services[0];
    assert_eq!(web.name, "web");
    assert_eq!(web.addresses, vec!["10.0.0.100".parse::<IpAddr>().unwrap()]);
    assert_eq!((web.proto, web.ports), (Proto::Tcp, (80, 80)));
    let Supervision::Run(run) = &web.how else {
        panic!("{:?}", web.how)
    };
    assert_eq!(run.command[0], "/usr/sbin/nginx");
    assert_eq!(run.env["LANG"], "C");
    assert_eq!(run.user.as_deref(), Some("www-data"));
    assert_eq!(run.stop_timeout, DEFAULT_STOP_TIMEOUT);
    assert_eq!(
        web.checks[0],
        HealthCheck {
            kind: CheckKind::Http {
                port: 80,
                path: "/health".into(),
                host: None,
                status: 204,
                body: Some("ok".into()),
            },
            interval: Duration::from_millis(10),
            timeout: Duration::from_millis(5),
            fall: 2,
            rise: 3,
        }
    );
    // Left out: the service's port, the defaults.
    assert_eq!(web.checks[1].kind, CheckKind::Tcp { port: 80 });
    assert_eq!(
        (
            web.checks[1].interval,
            web.checks[1].fall,
            web.checks[1].rise
        ),
        (DEFAULT_CHECK_INTERVAL, DEFAULT_FALL, DEFAULT_RISE)
    );
    assert_eq!(
        (
            web.recovery.restarts,
            web.recovery.backoff,
            web.recovery.escalate
        ),
        (5, Duration::from_millis(50), true)
    );
    assert!(!web.critical);

    let dns = &c.services[1];
    assert_eq!((dns.proto, dns.ports), (Proto::Udp, (53, 54)));
    assert_eq!(
        dns.how,
        Supervision::PidFile("/run/dnsmasq/dnsmasq.pid".into())
    );
    assert_eq!(
        dns.checks[0].kind,
        CheckKind::Dns {
            port: 53,
            proto: Proto::Udp,
            name: "www.example.lan".into(),
            record: DnsRecord::Aaaa,
        }
    );
    // Whoever runs a watched service restarts it.
    assert_eq!(dns.recovery.restarts, 0);
    assert!(dns.critical);

    let ocf = &c.services[2];
    let Supervision::Ocf(agent) = &ocf.how else {
        panic!("{:?}", ocf.how)
    };
    assert_eq!(
        agent.script(),
        std::path::Path::new("/usr/lib/ocf/resource.d/heartbeat/nginx")
    );
    assert_eq!(agent.params["configfile"], "/etc/nginx/nginx.conf");
    // No check given: the OCF agent's monitor action.
    assert_eq!(ocf.checks[0].kind, CheckKind::OcfMonitor);
    assert_eq!(ocf.recovery.restarts, DEFAULT_RESTARTS);
}

#[test]
fn a_config_without_services_has_none() {
    assert!(parse(MINIMAL).unwrap().services.is_empty());
}

#[test]
fn service_errors_name_their_key_and_line() {
    let cases: &[(&str, &str, &str, &str)] = &[
        // (service text, line marker, key, message part)
        (
            "name = \"a b\"\naddress = \"10.0.0.100\"\nprotocol = \"tcp\"\nport = 80\nrun = { command = [\"/bin/x\"] }",
            "name = \"a b\"",
            "service[0].name",
            "is not a service name",
        ),
        (
            "name = \"s\"\naddress = \"10.0.0.9\"\nprotocol = \"tcp\"\nport = 80\nrun = { command = [\"/bin/x\"] }",
            "address = \"10.0.0.9\"",
            "service[0].address",
            "is not the ip of an [[address]]",
        ),
        (
            "name = \"s\"\naddress = \"10.0.0.100\"\nprotocol = \"sctp\"\nport = 80\nrun = { command = [\"/bin/x\"] }",
            "protocol = \"sctp\"",
            "service[0].protocol",
            "is not tcp or udp",
        ),
        (
            "name = \"s\"\naddress = \"10.0.0.100\"\nprotocol = \"tcp\"\nport = 70000\nrun = { command = [\"/bin/x\"] }",
            "port = 70000",
            "service[0].port",
            "must be a port",
        ),
        (
            "name = \"s\"\naddress = \"10.0.0.100\"\nprotocol = \"tcp\"\nports = \"90-80\"\nrun = { command = [\"/bin/x\"] }",
            "ports = \"90-80\"",
            "service[0].ports",
            "is not a port range",
        ),
        (
            "name = \"s\"\naddress = \"10.0.0.100\"\nprotocol = \"tcp\"\nports = \"1-5000\"\nrun = { command = [\"/bin/x\"] }",
            "ports = \"1-5000\"",
            "service[0].ports",
            "spans 5000 ports",
        ),
        (
            "name = \"s\"\naddress = \"10.0.0.100\"\nprotocol = \"tcp\"\nport = 80",
            "[[service]]",
            "service[0].run",
            "give exactly one of run",
        ),
        (
            "name = \"s\"\naddress = \"10.0.0.100\"\nprotocol = \"tcp\"\nport = 80\nrun = { command = [] }",
            "run = ",
            "service[0].run.command",
            "must name a program",
        ),
        (
            "name = \"s\"\naddress = \"10.0.0.100\"\nprotocol = \"tcp\"\nport = 80\nwatch = { pid_file = \"run/x.pid\" }",
            "watch = ",
            "service[0].watch.pid_file",
            "not an absolute path",
        ),
        (
            "name = \"s\"\naddress = \"10.0.0.100\"\nprotocol = \"tcp\"\nport = 80\nocf = { agent = \"nginx\" }",
            "ocf = ",
            "service[0].ocf.agent",
            "is not provider:type",
        ),
        (
            "name = \"s\"\naddress = \"10.0.0.100\"\nprotocol = \"tcp\"\nport = 80\nrun = { command = [\"/bin/x\"] }\n[[service.check]]\ntype = \"icmp\"",
            "type = \"icmp\"",
            "service[0].check[0].type",
            "is not a check type: process, tcp, udp, http, dns, exec, ocf",
        ),
        (
            "name = \"s\"\naddress = \"10.0.0.100\"\nprotocol = \"tcp\"\nport = 80\nrun = { command = [\"/bin/x\"] }\n[[service.check]]\ntype = \"tcp\"\nbody = \"ok\"",
            "body = \"ok\"",
            "service[0].check[0].body",
            "a tcp check takes no body (it is for type = http)",
        ),
        (
            "name = \"s\"\naddress = \"10.0.0.100\"\nprotocol = \"tcp\"\nport = 80\nrun = { command = [\"/bin/x\"] }\n[[service.check]]\ntype = \"tcp\"\ninterval = \"10ms\"\ntimeout = \"20ms\"",
            "timeout = \"20ms\"",
            "service[0].check[0].timeout",
            "longer than the interval",
        ),
        (
            "name = \"s\"\naddress = \"10.0.0.100\"\nprotocol = \"tcp\"\nport = 80\nrun = { command = [\"/bin/x\"] }\n[[service.check]]\ntype = \"tcp\"\nfall = 0",
            "fall = 0",
            "service[0].check[0].fall",
            "between 1 and 1000",
        ),
        (
            "name = \"s\"\naddress = \"10.0.0.100\"\nprotocol = \"udp\"\nport = 53\nrun = { command = [\"/bin/x\"] }\n[[service.check]]\ntype = \"dns\"\nquery = \"a..b\"",
            "query = \"a..b\"",
            "service[0].check[0].query",
            "is not a domain name",
        ),
        (
            "name = \"s\"\naddress = \"10.0.0.100\"\nprotocol = \"tcp\"\nport = 80\nrun = { command = [\"/bin/x\"] }\n[[service.check]]\ntype = \"http\"\nstatus = 99",
            "status = 99",
            "service[0].check[0].status",
            "must be an HTTP status",
        ),
        (
            "name = \"s\"\naddress = \"10.0.0.100\"\nprotocol = \"tcp\"\nport = 80\nrun = { command = [\"/bin/x\"] }\n[[service.check]]\ntype = \"ocf\"",
            "type = \"ocf\"",
            "service[0].check[0].type",
            "give the service an ocf agent",
        ),
        (
            "name = \"s\"\naddress = \"10.0.0.100\"\nprotocol = \"tcp\"\nport = 80\nwatch = { systemd_unit = \"nginx.service\" }\n[service.recovery]\nrestarts = 2",
            "restarts = 2",
            "service[0].recovery.restarts",
            "a watched service is restarted by whoever runs it",
        ),
        (
            "name = \"s\"\naddress = \"10.0.0.100\"\nprotocol = \"tcp\"\nport = 80\nrun = { command = [\"/bin/x\"] }\n[service.recovery]\nbackoff = \"1\"",
            "backoff = \"1\"",
            "service[0].recovery.backoff",
            "unit",
        ),        (
            "name = \"s\"\naddress = \"10.0.0.100\"\nprotocol = \"tcp\"\nport = 80\nstandby = \"warm\"\nrun = { command = [\"/bin/x\"] }",
            "standby = \"warm\"",
            "service[0].standby",
            "is not hot",
        ),
        (
            "name = \"s\"\naddress = \"10.0.0.100\"\nprotocol = \"tcp\"\nport = 80\nstandby = \"cold\"\nwatch = { systemd_unit = \"x.service\" }\n[service.recovery]\nrestarts = 0",
            "standby = \"cold\"",
            "service[0].standby",
            "a cold service is started and stopped by the agent",
        ),
        (
            "name = \"s\"\naddress = \"10.0.0.100\"\nprotocol = \"tcp\"\nport = 80\nrun = { command = [\"/bin/x\"] }\nfilesystem = { device = \"/dev/sdb1\", mount = \"/srv/db\" }",
            "filesystem = {",
            "service[0].filesystem",
            "set standby = \"cold\"",
        ),
        (
            "name = \"s\"\naddress = \"10.0.0.100\"\nprotocol = \"tcp\"\nport = 80\nstandby = \"cold\"\nrun = { command = [\"/bin/x\"] }\nfilesystem = { device = \"sdb1\", mount = \"/srv/db\" }",
            "filesystem = {",
            "service[0].filesystem.device",
            "is not an absolute path",
        ),
        (
            "name = \"s\"\naddress = \"10.0.0.100\"\nprotocol = \"tcp\"\nport = 80\nrun = { command = [\"/bin/x\"], stop_signal = \"SIGKILL\" }",
            "stop_signal",
            "service[0].run.stop_signal",
            "is not one of SIGTERM, SIGINT",
        ),
    ];
    for (body, marker, key, says) in cases {
        let text = with_services(&format!("[[service]]\n{body}\n"));
        let errors = parse(&text).unwrap_err();
        assert_error(&errors, line_of(&text, marker), key, says);
    }
}

#[test]
fn two_services_on_one_port_or_name_are_refused() {
    let svc = |name: &str, ports: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\naddress = \"10.0.0.100\"\nprotocol = \"tcp\"\nports = \"{ports}\"\nrun = {{ command = [\"/bin/x\"] }}\n"
        )
    };
    let text = with_services(&format!("{}{}", svc("web", "80-90"), svc("alt", "85")));
    let errors = parse(&text).unwrap_err();
    assert_error(
        &errors,
        line_of(&text, "name = \"alt\"") + 2,
        "service[1].port",
        "overlaps service \"web\"",
    );
    // Another protocol on the same port is another service.
    let udp = svc("alt", "85").replace("\"tcp\"", "\"udp\"");
    assert!(parse(&with_services(&format!("{}{udp}", svc("web", "80-90")))).is_ok());
    let text = with_services(&format!("{}{}", svc("web", "80"), svc("web", "81")));
    assert_error(
        &parse(&text).unwrap_err(),
        line_of(
            &text,
            "name = \"web\"\naddress = \"10.0.0.100\"\nprotocol = \"tcp\"\nports = \"81\"",
        ),
        "service[1].name",
        "is already service[0]",
    );
}

#[test]
fn a_cold_service_with_its_file_system_is_read_and_makes_its_address_stateful() {
    let service = r#"
[[service]]
name = "db"
address = "10.0.0.100"
protocol = "tcp"
port = 5432
standby = "cold"
filesystem = { device = "/dev/disk/by-label/db", mount = "/srv/db", options = "noatime" }
run = { command = ["/usr/lib/postgresql/15/bin/postgres", "-D", "/srv/db/data"], user = "postgres", stop_signal = "INT" }
"#;
    let cfg = parse(&with_services(service)).unwrap();
    let db = &cfg.services[0];
    assert!(db.cold);
    assert_eq!(
        db.filesystem,
        Some(service::Filesystem {
            device: "/dev/disk/by-label/db".into(),
            mount: "/srv/db".into(),
            kind: "ext4".into(),
            options: "noatime".into(),
        })
    );
    match &db.how {
        service::Supervision::Run(r) => assert_eq!(r.stop_signal, libc::SIGINT),
        other => panic!("{other:?}"),
    }
    let (core, _) = crate::io::agent::core_config(&cfg, vec![0; 32]);
    assert!(core.resources[0].stateful && core.components[0].cold);
    // The same service hot: not stateful, and the digests differ (a node configured one way
    // and its peer the other do not agree).
    let hot: String = service
        .lines()
        .filter(|l| !l.starts_with("standby") && !l.starts_with("filesystem"))
        .map(|l| format!("{l}\n"))
        .collect();
    let hot = parse(&with_services(&hot)).unwrap();
    let (hot_core, _) = crate::io::agent::core_config(&hot, vec![0; 32]);
    assert!(!hot_core.resources[0].stateful);
    assert_ne!(core.digest_of(), hot_core.digest_of());
}
