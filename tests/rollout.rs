//! `scripts/rollout` against a fake `docker`: a shell script first on PATH that logs each call
//! (one line per call, arguments separated by tabs), answers `service inspect` with a canned
//! environment per service, and fails like Docker for a service it does not know.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rollout");
const TIMEOUT: Duration = Duration::from_secs(20);
const INSPECT_FORMAT: &str = "{{range .Spec.TaskTemplate.ContainerSpec.Env}}{{println .}}{{end}}";

const FAKE_DOCKER: &str = r#"#!/bin/sh
# Fake docker for tests/rollout.rs.
dir=$(dirname "$0")
tab=$(printf '\t')
(IFS=$tab; printf '%s\n' "$*") >>"$dir/calls.log"
if [ "$1" = service ] && [ "$2" = inspect ]; then
  for service; do :; done
  case $4 in
    *Replicas*)
      if [ -f "$dir/spec-$service" ]; then cat "$dir/spec-$service"; else echo "1 1 0s 5s"; fi
      exit 0
      ;;
  esac
  if [ -f "$dir/env-$service" ]; then
    cat "$dir/env-$service"
    exit 0
  fi
  echo "Error: No such service: $service" >&2
  exit 1
fi
if [ "$1" = service ]; then
  for service; do :; done
  echo "$service"
fi
"#;

/// A temp dir holding the fake docker, its call log and the canned environments.
struct Fake {
    dir: PathBuf,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Fake {
    /// `services`: (name, environment lines as `docker service inspect` prints them).
    fn new(services: &[(&str, &str)]) -> Fake {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "colorproxy-rollout-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let docker = dir.join("docker");
        std::fs::write(&docker, FAKE_DOCKER).expect("write fake docker");
        make_executable(&docker);
        for (name, env) in services {
            std::fs::write(dir.join(format!("env-{name}")), env).expect("write canned env");
        }
        Fake { dir }
    }

    /// Runs scripts/rollout with the fake docker first on PATH, waiting at most TIMEOUT.
    fn run(&self, args: &[&str]) -> Run {
        let path = match std::env::var_os("PATH") {
            Some(p) => {
                let mut dirs = vec![self.dir.clone()];
                dirs.extend(std::env::split_paths(&p));
                std::env::join_paths(dirs).expect("PATH")
            }
            None => self.dir.clone().into_os_string(),
        };
        let mut child = Command::new(SCRIPT)
            .args(args)
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn scripts/rollout");
        let stdout = reader(child.stdout.take().unwrap());
        let stderr = reader(child.stderr.take().unwrap());
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for scripts/rollout") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("scripts/rollout {args:?} did not finish within {TIMEOUT:?}");
            }
            thread::sleep(Duration::from_millis(5));
        };
        Run {
            // A signal has no exit code; -1 fails every assertion below.
            code: status.code().unwrap_or(-1),
            stdout: stdout.join().expect("stdout reader"),
            stderr: stderr.join().expect("stderr reader"),
        }
    }

    /// Every docker call so far, each as its list of arguments.
    fn calls(&self) -> Vec<Vec<String>> {
        match std::fs::read_to_string(self.dir.join("calls.log")) {
            Ok(log) => log
                .lines()
                .map(|l| l.split('\t').map(str::to_owned).collect())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The calls other than `service inspect`: what would have changed something.
    fn changes(&self) -> Vec<Vec<String>> {
        self.calls()
            .into_iter()
            .filter(|c| c.get(1).map(String::as_str) != Some("inspect"))
            .collect()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(unix)]
fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[cfg(not(unix))]
fn make_executable(_path: &Path) {}

/// Reads a pipe to the end on its own thread, so a full pipe never blocks the child.
fn reader(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    })
}

fn args(line: &str) -> Vec<String> {
    line.split(' ').map(str::to_owned).collect()
}

fn inspect(service: &str) -> Vec<String> {
    ["service", "inspect", "--format", INSPECT_FORMAT, service]
        .map(str::to_owned)
        .to_vec()
}

const BLUE_ONLY: &str = "PATH=/usr/local/sbin:/usr/bin\nBLUE=http://myapp-v1:8080\n";
const CANARIED: &str =
    "BLUE=http://myapp-v1:8080\nGREEN=http://myapp-v2:8080\nGREEN_WEIGHT=20\nBLUE_WEIGHT=80\n";
const ALL_GREEN: &str = "GREEN=http://myapp-v2:8080\n";
const THREE: &str = "COLORS=Blue, green,red\nBLUE=http://a:1\nGREEN=http://b:2/base\nBLUE_WEIGHT=1\nGREEN_WEIGHT=2\nRED_WEIGHT=5\n";

#[test]
fn canary_runs_the_walkthrough_command() {
    let fake = Fake::new(&[("proxy", BLUE_ONLY)]);
    let r = fake.run(&["canary", "proxy", "green", "http://myapp-v2:8080", "20"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let update = "service update --env-add GREEN=http://myapp-v2:8080 --env-add GREEN_WEIGHT=20 --env-add BLUE_WEIGHT=80 proxy";
    assert_eq!(fake.calls(), vec![inspect("proxy"), args(update)]);
    assert!(
        r.stdout.contains(&format!("+ docker {update}\n")),
        "{}",
        r.stdout
    );
}

#[test]
fn canary_splits_the_rest_in_proportion_to_the_other_weights() {
    let fake = Fake::new(&[("proxy", THREE)]);
    // blue:green = 1:2 share 75%; red's leftover weight is replaced.
    let r = fake.run(&["canary", "proxy", "RED", "http://c:3", "25"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        fake.changes(),
        vec![args(
            "service update --env-add RED=http://c:3 --env-add RED_WEIGHT=25 --env-add BLUE_WEIGHT=25 --env-add GREEN_WEIGHT=50 proxy"
        )]
    );

    // 80% cannot be split 1:2 in whole percents.
    let r = fake.run(&["canary", "proxy", "red", "http://c:3", "20"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("80%") && r.stderr.contains("multiple of 3"),
        "{}",
        r.stderr
    );
    assert_eq!(fake.changes().len(), 1, "the refused canary ran docker");
}

#[test]
fn canary_with_no_other_color_is_refused() {
    let fake = Fake::new(&[("proxy", ALL_GREEN)]);
    let r = fake.run(&["canary", "proxy", "green", "http://myapp-v2:8080", "20"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("promote"), "{}", r.stderr);
    assert!(fake.changes().is_empty());
}

#[test]
fn promote_removes_every_other_color() {
    let fake = Fake::new(&[("proxy", CANARIED)]);
    let r = fake.run(&["promote", "proxy", "green"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let update = "service update --env-rm GREEN_WEIGHT --env-rm BLUE_WEIGHT --env-rm BLUE proxy";
    assert_eq!(fake.calls(), vec![inspect("proxy"), args(update)]);
    assert!(
        r.stdout.contains(&format!("+ docker {update}")),
        "{}",
        r.stdout
    );
}

#[test]
fn promote_refuses_a_color_that_is_not_configured() {
    let fake = Fake::new(&[("proxy", BLUE_ONLY)]);
    let r = fake.run(&["promote", "proxy", "green"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("GREEN is unset"), "{}", r.stderr);
    assert!(fake.changes().is_empty());
}

#[test]
fn rollback_to_the_previous_spec() {
    let fake = Fake::new(&[("proxy", ALL_GREEN)]);
    let r = fake.run(&["rollback", "proxy"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        fake.calls(),
        vec![inspect("proxy"), args("service rollback proxy")]
    );
    assert!(r.stdout.contains("+ docker service rollback proxy\n"));
}

#[test]
fn rollback_to_an_explicit_color() {
    // After promote: the walkthrough's rollback.
    let fake = Fake::new(&[("proxy", ALL_GREEN), ("canaried", CANARIED)]);
    let r = fake.run(&["rollback", "proxy", "blue", "http://myapp-v1:8080"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        fake.changes(),
        vec![args(
            "service update --env-rm GREEN --env-add BLUE=http://myapp-v1:8080 proxy"
        )]
    );

    // In the middle of a canary: the weights go too.
    let r = fake.run(&["rollback", "canaried", "blue", "http://myapp-v1:8080"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        fake.changes()[1],
        args(
            "service update --env-rm GREEN_WEIGHT --env-rm GREEN --env-add BLUE=http://myapp-v1:8080 --env-rm BLUE_WEIGHT canaried"
        )
    );
}

/// The table row of a color (route, color, upstream, weight, share), split into its columns.
fn row<'a>(out: &'a str, color: &str) -> Vec<&'a str> {
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.get(1) == Some(&color))
        .unwrap_or_else(|| panic!("no row for {color} in:\n{out}"))
}

#[test]
fn status_prints_weights_and_shares() {
    let fake = Fake::new(&[("proxy", CANARIED), ("three", THREE), ("blue", BLUE_ONLY)]);
    let r = fake.run(&["status", "proxy"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        row(&r.stdout, "blue"),
        ["/", "blue", "http://myapp-v1:8080", "80", "80.0%"]
    );
    assert_eq!(
        row(&r.stdout, "green"),
        ["/", "green", "http://myapp-v2:8080", "20", "20.0%"]
    );
    assert!(r.stdout.contains("ROUTE  COLOR  UPSTREAM"), "{}", r.stdout);

    // COLORS from the service, case-insensitive; red has a weight but no URL, so it is absent.
    let r = fake.run(&["status", "three"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        row(&r.stdout, "blue"),
        ["/", "blue", "http://a:1", "1", "33.3%"]
    );
    assert_eq!(
        row(&r.stdout, "green"),
        ["/", "green", "http://b:2/base", "2", "66.7%"]
    );
    assert!(
        !r.stdout
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("red")),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("RED_WEIGHT is set but RED is not"));

    // Default weight 1 and default COLORS.
    let r = fake.run(&["status", "blue"]);
    assert_eq!(
        row(&r.stdout, "blue"),
        ["/", "blue", "http://myapp-v1:8080", "1", "100.0%"]
    );
    assert!(r.stdout.contains("COLORS=blue,green"), "{}", r.stdout);
    assert!(fake.changes().is_empty());
}

/// blue and green share /, films has /films to itself (COLOR_PREFIX routes).
const ROUTES: &str = "COLORS=blue,green,films\nBLUE=http://v1:8080\nGREEN=http://v2:8080\nGREEN_WEIGHT=20\nBLUE_WEIGHT=80\nGREEN_DISCOVERY=dns\nFILMS=http://films:80\nFILMS_PREFIX=/films/\n";

#[test]
fn shares_and_splits_are_per_route() {
    let fake = Fake::new(&[("proxy", ROUTES)]);
    let r = fake.run(&["status", "proxy"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        row(&r.stdout, "green"),
        ["/", "green", "http://v2:8080", "20", "20.0%"]
    );
    assert_eq!(
        row(&r.stdout, "films"),
        ["/films", "films", "http://films:80", "1", "100.0%"]
    );

    // The canary splits / only; films is on another route and keeps its traffic.
    let r = fake.run(&["canary", "proxy", "green", "http://v2b:8080", "30"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        fake.changes(),
        vec![args(
            "service update --env-add GREEN=http://v2b:8080 --env-add GREEN_WEIGHT=30 --env-add BLUE_WEIGHT=70 proxy"
        )]
    );
    // Nothing shares /films with films.
    let r = fake.run(&["canary", "proxy", "films", "http://films2", "10"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("route /films"), "{}", r.stderr);

    // All traffic to films: every other color's variables go, and films' own prefix.
    let r = fake.run(&["promote", "proxy", "films"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        fake.changes()[1],
        args(
            "service update --env-rm FILMS_PREFIX --env-rm BLUE_WEIGHT --env-rm BLUE --env-rm GREEN_WEIGHT --env-rm GREEN_DISCOVERY --env-rm GREEN proxy"
        )
    );
    let r = fake.run(&["rollback", "proxy", "blue", "http://v1:8080"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        fake.changes()[2],
        args(
            "service update --env-rm GREEN_WEIGHT --env-rm GREEN_DISCOVERY --env-rm GREEN --env-rm FILMS_PREFIX --env-rm FILMS --env-add BLUE=http://v1:8080 --env-rm BLUE_WEIGHT proxy"
        )
    );
}

#[test]
fn dry_run_only_reads_the_service() {
    let fake = Fake::new(&[("proxy", BLUE_ONLY), ("canaried", CANARIED)]);
    for a in [
        &[
            "--dry-run",
            "canary",
            "proxy",
            "green",
            "http://myapp-v2:8080",
            "20",
        ][..],
        &["promote", "canaried", "green", "--dry-run"],
        &["--dry-run", "rollback", "proxy"],
        &[
            "--dry-run",
            "rollback",
            "canaried",
            "blue",
            "http://myapp-v1:8080",
        ],
    ] {
        let r = fake.run(a);
        assert_eq!(r.code, 0, "{a:?}: {}{}", r.stdout, r.stderr);
        assert!(
            r.stdout.contains("+ docker service "),
            "{a:?}: {}",
            r.stdout
        );
        assert!(r.stdout.contains("dry run"), "{a:?}: {}", r.stdout);
    }
    assert_eq!(fake.calls().len(), 4);
    assert!(fake.changes().is_empty(), "{:?}", fake.changes());
}

/// Runs a refused invocation: exit 2, the culprit named on stderr with the usage, and no
/// docker call that changes anything.
fn refused(fake: &Fake, a: &[&str], culprit: &str) -> Run {
    let r = fake.run(a);
    assert_eq!(r.code, 2, "{a:?}: {}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(culprit),
        "{a:?} should name {culprit:?}: {}",
        r.stderr
    );
    assert!(r.stderr.contains("usage:"), "{a:?}: {}", r.stderr);
    assert!(fake.changes().is_empty(), "{a:?} ran {:?}", fake.changes());
    r
}

#[test]
fn bad_arguments_are_refused() {
    let fake = Fake::new(&[("proxy", BLUE_ONLY), ("three", THREE)]);
    let canary = |service, color, url, percent| ["canary", service, color, url, percent];
    let url = "http://myapp-v2:8080";

    refused(&fake, &canary("proxy", "purple", url, "20"), "'purple'");
    // red is a color of "three" but not of "proxy" (default COLORS).
    refused(&fake, &canary("proxy", "red", url, "20"), "'red'");
    refused(&fake, &["promote", "proxy", "purple"], "'purple'");
    refused(&fake, &canary("proxy", "gre en", url, "20"), "'gre en'");
    refused(&fake, &canary("pro xy", "green", url, "20"), "'pro xy'");
    for percent in ["101", "-1", "abc", "", "2.5"] {
        refused(
            &fake,
            &canary("proxy", "green", url, percent),
            &format!("'{percent}'"),
        );
    }
    for bad in [
        "myapp-v2:8080",
        "https://myapp-v2",
        "http://",
        "http://x:0",
        "http://x?q",
    ] {
        refused(
            &fake,
            &canary("proxy", "green", bad, "20"),
            &format!("'{bad}'"),
        );
        refused(
            &fake,
            &["rollback", "proxy", "blue", bad],
            &format!("'{bad}'"),
        );
    }
    refused(&fake, &[], "missing COMMAND");
    refused(&fake, &["deploy"], "'deploy'");
    refused(&fake, &["canary", "proxy", "green", url], "got 3 argument");
    refused(&fake, &["status"], "got 0 argument");
    refused(&fake, &["rollback", "proxy", "blue"], "got 2 argument");
    refused(&fake, &["status", "proxy", "--force"], "'--force'");
    // Only the refusals that passed the argument checks asked docker about the service.
    assert_eq!(fake.calls().len(), 3, "{:?}", fake.calls());
}

#[test]
fn a_missing_service_is_refused_with_dockers_error() {
    let fake = Fake::new(&[("proxy", BLUE_ONLY)]);
    for a in [
        &["canary", "nosuch", "green", "http://myapp-v2:8080", "20"][..],
        &["promote", "nosuch", "green"],
        &["rollback", "nosuch"],
        &["status", "nosuch"],
    ] {
        let r = refused(&fake, a, "'nosuch'");
        assert!(
            r.stderr.contains("Error: No such service: nosuch"),
            "{}",
            r.stderr
        );
    }
    assert_eq!(fake.calls(), vec![inspect("nosuch"); 4]);
}

#[test]
fn help_prints_the_usage() {
    let fake = Fake::new(&[]);
    for a in [&["help"][..], &["--help"], &["canary", "-h"]] {
        let r = fake.run(a);
        assert_eq!(r.code, 0, "{a:?}: {}", r.stderr);
        assert!(r.stdout.starts_with("usage: "), "{}", r.stdout);
        assert!(r.stdout.contains("canary SERVICE COLOR URL PERCENT"));
    }
    assert!(fake.calls().is_empty());
}

fn ramp_start(update: &[String]) -> std::time::SystemTime {
    let start = update
        .iter()
        .find_map(|a| a.strip_prefix("GREEN_RAMP_START="))
        .expect("GREEN_RAMP_START is set");
    colorproxy::ramp::parse_rfc3339(start).expect("an RFC 3339 START")
}

fn about(t: std::time::SystemTime, from_now: Duration) {
    let want = std::time::SystemTime::now() + from_now;
    let off = t.duration_since(want).unwrap_or_else(|e| e.duration());
    assert!(
        off <= Duration::from_secs(5),
        "START {t:?} is not about {from_now:?} from now"
    );
}

#[test]
fn ramp_sets_the_four_variables_in_one_update() {
    let fake = Fake::new(&[("proxy", BLUE_ONLY)]);
    let r = fake.run(&[
        "ramp",
        "proxy",
        "green",
        "http://myapp-v2:8080",
        "--steps",
        "1,5,25,50,100",
        "--every",
        "5m",
        "--lead",
        "2m",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let changes = fake.changes();
    assert_eq!(changes.len(), 1, "{changes:?}");
    let update = &changes[0];
    let expected = [
        "service",
        "update",
        "--env-add",
        "GREEN=http://myapp-v2:8080",
        "--env-add",
        "GREEN_RAMP=1,5,25,50,100",
        "--env-add",
        "GREEN_RAMP_INTERVAL=5m",
        "--env-add",
    ];
    assert_eq!(&update[..expected.len()], expected, "{update:?}");
    assert_eq!(update.last().map(String::as_str), Some("proxy"));
    about(ramp_start(update), Duration::from_secs(120));
    assert!(r.stdout.contains("in 2m"), "{}", r.stdout);
}

#[test]
fn ramp_leads_by_the_rolling_update_by_default() {
    let fake = Fake::new(&[("proxy", CANARIED)]);
    // 3 replicas one at a time, 10 s delay, 15 s monitor: 3 x (30 + 10 + 15) s.
    std::fs::write(fake.dir.join("spec-proxy"), "3 1 10s 15s\n").unwrap();
    let r = fake.run(&[
        "ramp",
        "proxy",
        "green",
        "http://myapp-v2:8080",
        "--steps=10,50,100",
        "--every=1m",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let update = fake.changes().remove(0);
    about(ramp_start(&update), Duration::from_secs(165));
    // The weight a ramp makes unused goes.
    assert!(
        update.windows(2).any(|w| w == ["--env-rm", "GREEN_WEIGHT"]),
        "{update:?}"
    );
}

#[test]
fn ramp_refuses_what_colorproxy_would() {
    let fake = Fake::new(&[
        ("proxy", BLUE_ONLY),
        ("alone", ALL_GREEN),
        (
            "ramped",
            "BLUE=http://a:1\nGREEN=http://b:2\nRED=http://c:3\nCOLORS=blue,green,red\nRED_RAMP=5\n",
        ),
    ]);
    for (args, needle) in [
        (vec!["--steps", "5,1", "--every", "5m"], "not increasing"),
        (vec!["--steps", "5,150", "--every", "5m"], "above 100"),
        (vec!["--steps", "a", "--every", "5m"], "bad --steps"),
        (vec!["--every", "5m"], "--steps is required"),
        (vec!["--steps", "5"], "--every is required"),
        (vec!["--steps", "5", "--every", "0s"], "at least 1s"),
        (vec!["--steps", "5", "--every", "soon"], "bad --every"),
        (
            vec!["--steps", "5", "--every", "1m", "--lead", "x"],
            "bad --lead",
        ),
    ] {
        let mut all = vec!["ramp", "proxy", "green", "http://b:2"];
        all.extend(args.iter().copied());
        let r = fake.run(&all);
        assert_eq!(r.code, 2, "{all:?}: {}{}", r.stdout, r.stderr);
        assert!(r.stderr.contains(needle), "{all:?}: {}", r.stderr);
    }
    let r = fake.run(&[
        "ramp",
        "alone",
        "green",
        "http://b:2",
        "--steps",
        "5",
        "--every",
        "1m",
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("to take the rest"), "{}", r.stderr);
    let r = fake.run(&[
        "ramp",
        "ramped",
        "green",
        "http://b:2",
        "--steps",
        "5",
        "--every",
        "1m",
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("red is already ramped"), "{}", r.stderr);
    assert!(fake.changes().is_empty(), "{:?}", fake.changes());
}

#[test]
fn status_shows_the_step_in_force_and_the_next() {
    let start =
        colorproxy::ramp::format_time(std::time::SystemTime::now() - Duration::from_secs(7 * 60));
    let start = start
        .split('.')
        .next()
        .unwrap()
        .trim_end_matches('Z')
        .to_string()
        + "Z";
    let env = format!(
        "BLUE=http://myapp-v1:8080\nGREEN=http://myapp-v2:8080\nGREEN_RAMP=1,5,25,50,100\nGREEN_RAMP_INTERVAL=5m\nGREEN_RAMP_START={start}\n"
    );
    let fake = Fake::new(&[("proxy", env.as_str())]);
    let r = fake.run(&["status", "proxy"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("/      blue   http://myapp-v1:8080       1   95.0%"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("/      green  http://myapp-v2:8080    ramp    5.0%"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("ramp green: step 2/5 (5%) since "),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("; next: step 3 (25%) at "),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("(in 3m)") || r.stdout.contains("(in 2m5"),
        "{}",
        r.stdout
    );

    // Promote at the end removes the ramp.
    let r = fake.run(&["promote", "proxy", "green"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        fake.changes(),
        vec![args(
            "service update --env-rm GREEN_RAMP --env-rm GREEN_RAMP_INTERVAL --env-rm GREEN_RAMP_START --env-rm BLUE proxy"
        )]
    );
}
