//! Configuration errors stop the binary before it binds, naming every culprit; `check`
//! validates the same way without binding.

mod common;

use std::net::TcpListener;

use common::*;

#[test]
fn every_configuration_error_is_reported_with_exit_code_1() {
    // A valid configuration would serve and never exit; `run` fails the test if it does not.
    type Env<'a> = &'a [(&'a str, &'a str)];
    let cases: &[(Env, &[&str])] = &[
        (
            &[("BLUE", "ftp://myapp-v1:8080")],
            &["BLUE=\"ftp://myapp-v1:8080\"", "http://"],
        ),
        (
            &[("BLUE", "myapp-v1:8080")],
            &["BLUE=", "scheme http:// is missing"],
        ),
        (&[("BLUE", "http://:8080")], &["BLUE=", "host"]),
        (&[("BLUE", "")], &["BLUE=\"\"", "empty"]),
        (
            &[("BLUE", "http://a"), ("BLUE_WEIGHT", "heavy")],
            &["BLUE_WEIGHT=\"heavy\"", "non-negative integer"],
        ),
        (
            &[("BLUE", "http://a"), ("BLUE_WEIGHT", "-1")],
            &["BLUE_WEIGHT=\"-1\""],
        ),
        (
            &[("CONNECT_TIMEOUT", "5")],
            &["CONNECT_TIMEOUT=\"5\"", "duration"],
        ),
        (
            &[("REQUEST_TIMEOUT", "forever")],
            &["REQUEST_TIMEOUT=\"forever\""],
        ),
        (&[("DRAIN_TIMEOUT", "1 fortnight")], &["DRAIN_TIMEOUT="]),
        (
            &[("LISTEN", "localhost")],
            &["LISTEN=\"localhost\"", "ip:port"],
        ),
        (
            &[("LOG_FORMAT", "yaml")],
            &["LOG_FORMAT=\"yaml\"", "text or json"],
        ),
        (
            &[("COLORS", "blue,re d")],
            &["COLORS=\"blue,re d\"", "letters, digits"],
        ),
        (&[("RUST_LOG", "[[")], &["RUST_LOG="]),
        (&[("DNS_REFRESH", "often")], &["DNS_REFRESH=\"often\""]),
        (
            &[("RESOLVER", "dns.example:53")],
            &["RESOLVER=\"dns.example:53\"", "ip[:port]"],
        ),
        (
            &[("BLUE", "http://a"), ("BLUE_DISCOVERY", "k8s")],
            &["BLUE_DISCOVERY=\"k8s\"", "auto, tasks, dns or off"],
        ),
        (&[("ADMIN_LISTEN", "9901")], &["ADMIN_LISTEN=\"9901\""]),
        (
            &[("ACCESS_LOG", "verbose")],
            &["ACCESS_LOG=\"verbose\"", "on or off"],
        ),
        (
            &[("RESPONSE_HEADERS", "yes please")],
            &["RESPONSE_HEADERS="],
        ),
        (
            &[
                ("BLUE", "http://a"),
                ("GREEN", "http://b"),
                ("BLUE_WEIGHT", "0"),
                ("GREEN_WEIGHT", "0"),
            ],
            &["BLUE_WEIGHT,GREEN_WEIGHT", "weight above 0"],
        ),
    ];
    for (env, needles) in cases {
        for args in [&[][..], &["check"][..]] {
            let (status, stdout, stderr) = run(args, env);
            assert_eq!(status.code(), Some(1), "{args:?} {env:?}: {stdout}{stderr}");
            assert!(
                stdout.is_empty(),
                "{env:?}: nothing on stdout, got {stdout}"
            );
            assert!(!stderr.contains("listening"), "{env:?} bound: {stderr}");
            for needle in *needles {
                assert!(
                    stderr.contains(needle),
                    "{env:?}: {needle:?} not in {stderr}"
                );
            }
        }
    }
}

#[test]
fn all_problems_are_reported_at_once_one_line_each() {
    let (status, _, stderr) = run(
        &[],
        &[
            ("BLUE", "https://a"),
            ("GREEN_WEIGHT", "x"),
            ("CONNECT_TIMEOUT", "1"),
            ("LISTEN", "nope"),
        ],
    );
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("4 problems"), "{stderr}");
    for var in ["BLUE=", "GREEN_WEIGHT=", "CONNECT_TIMEOUT=", "LISTEN="] {
        let lines = stderr
            .lines()
            .filter(|l| l.trim_start().starts_with(var))
            .count();
        assert_eq!(lines, 1, "{var} in {stderr}");
    }
}

#[test]
fn invalid_configuration_never_binds() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let (status, _, stderr) = run(&[], &[("LISTEN", &addr), ("BLUE", "nope")]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("BLUE=\"nope\""), "{stderr}");
    assert!(!stderr.contains("cannot listen"), "{stderr}");
}

#[test]
fn check_prints_the_effective_table() {
    let (status, stdout, stderr) = run(
        &["check"],
        &[
            ("BLUE", "http://myapp-v1:8080"),
            ("GREEN", "http://myapp-v2:8080/"),
            ("BLUE_WEIGHT", "4"),
            ("GREEN_WEIGHT", "1"),
        ],
    );
    assert!(status.success(), "{stderr}");
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["ROUTE", "COLOR", "UPSTREAM", "WEIGHT", "SHARE"]);
    assert_eq!(rows[1], ["/", "blue", "http://myapp-v1:8080", "4", "80.0%"]);
    assert_eq!(
        rows[2],
        ["/", "green", "http://myapp-v2:8080/", "1", "20.0%"]
    );
    assert!(stdout.contains("listen 0.0.0.0:8080"), "{stdout}");
}

#[test]
fn check_with_no_color_is_valid_and_says_so() {
    let (status, stdout, _) = run(&["check"], &[]);
    assert!(status.success());
    assert!(stdout.contains("no color is configured"), "{stdout}");
}

#[test]
fn check_warns_about_stray_weights() {
    let (status, _, stderr) = run(&["check"], &[("BLUE", "http://a"), ("GREN_WEIGHT", "2")]);
    assert!(status.success());
    assert!(stderr.contains("warning: GREN_WEIGHT"), "{stderr}");
    assert!(stderr.contains("Did you mean GREEN_WEIGHT?"), "{stderr}");
    // Other software's variables in the same environment are not warned about.
    let (status, _, stderr) = run(
        &["check"],
        &[
            ("BLUE", "http://a"),
            ("_PYENV_INSTALL_PREFIX", "/root/.pyenv"),
            ("NPM_CONFIG_PREFIX", "/usr/local"),
        ],
    );
    assert!(status.success());
    assert!(!stderr.contains("warning"), "{stderr}");
}

#[test]
fn unknown_arguments_are_usage_errors() {
    let (status, _, stderr) = run(&["chek"], &[]);
    assert_eq!(status.code(), Some(2));
    assert!(
        stderr.contains("chek") && stderr.contains("usage"),
        "{stderr}"
    );
    let (status, stdout, _) = run(&["--help"], &[]);
    assert!(status.success());
    assert!(stdout.contains("check"));
}

#[test]
fn listen_failure_names_the_address() {
    // 192.0.2.1 (TEST-NET-1) is not an address of this machine, so binding to it fails.
    let (status, stdout, _) = run(&[], &[("LISTEN", "192.0.2.1:8080")]);
    assert_eq!(status.code(), Some(1));
    assert!(
        stdout.contains("cannot listen on LISTEN=192.0.2.1:8080"),
        "{stdout}"
    );
}
