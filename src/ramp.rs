//! A color's ramp: its share of its route, step by step, on the wall clock.
//!
//! `<COLOR>_RAMP=1,5,25,50,100`, `<COLOR>_RAMP_INTERVAL=5m`, `<COLOR>_RAMP_START=<RFC 3339>`:
//! step k holds from START + (k−1)×INTERVAL. The schedule is a pure function of the environment
//! and the time, so every replica with the same environment (and a synchronized clock) gives the
//! same share at the same instant with no shared state. Time is always passed in, never read
//! here, so the arithmetic is tested at every boundary without waiting.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Shorter steps could not be observed by a guard, nor followed by a person.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Longer steps are a typo; the bound also keeps every step's start a representable time.
pub const MAX_INTERVAL: Duration = Duration::from_secs(30 * 86_400);
/// START must come before this (2200-01-01T00:00:00Z), for the same reason.
const LATEST_START_SECS: u64 = 7_258_118_400;
/// Per-color variables of a ramp, after the color's name.
pub const SUFFIXES: &[&str] = &["_RAMP", "_RAMP_INTERVAL", "_RAMP_START"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ramp {
    /// The share of each step in percent, strictly increasing, 0–100.
    pub steps: Vec<u32>,
    pub interval: Duration,
    /// When step 1 begins.
    pub start: SystemTime,
}

impl Ramp {
    /// The step in force at `now`: 0 before START, then 1..=steps.len(); after the last step
    /// its share is kept.
    pub fn step_at(&self, now: SystemTime) -> usize {
        let Ok(since) = now.duration_since(self.start) else {
            return 0;
        };
        let passed = since.as_nanos() / self.interval.as_nanos().max(1);
        (passed.min(self.steps.len() as u128 - 1) as usize) + 1
    }

    /// When step `k` (1-based) begins.
    pub fn step_start(&self, k: usize) -> SystemTime {
        self.start + self.interval * (k.saturating_sub(1) as u32)
    }

    /// The share of step `k` in percent; 0 for step 0 (before START).
    pub fn step_share(&self, k: usize) -> u32 {
        match k {
            0 => 0,
            k => self.steps[k.min(self.steps.len()) - 1],
        }
    }

    /// When the step after `k` begins; `None` once the last step is reached.
    pub fn next_start(&self, k: usize) -> Option<SystemTime> {
        (k < self.steps.len()).then(|| self.step_start(k + 1))
    }

    /// The share in percent at `now`, by the schedule alone.
    pub fn share_at(&self, now: SystemTime) -> u32 {
        self.step_share(self.step_at(now))
    }

    /// One line: `1,5,25,50,100 every 5m from 2026-12-01T20:00:00Z`.
    pub fn describe(&self) -> String {
        let steps: Vec<String> = self.steps.iter().map(u32::to_string).collect();
        format!(
            "{} every {} from {}",
            steps.join(","),
            humantime::format_duration(self.interval),
            format_time(self.start)
        )
    }

    /// The schedule as `colorproxy check` prints it: each step's start and share, and which one
    /// is in force at `now`.
    pub fn schedule(&self, now: SystemTime) -> String {
        let current = self.step_at(now);
        let mut out = String::new();
        let _ = writeln!(out, "  {:<6}  {:<20}  {:>5}", "STEP", "STARTS", "SHARE");
        let mark = |k: usize| if k == current { "  <- now" } else { "" };
        let _ = writeln!(out, "  {:<6}  {:<20}  {:>4}%{}", "-", "before", 0, mark(0));
        for (i, share) in self.steps.iter().enumerate() {
            let k = i + 1;
            let _ = writeln!(
                out,
                "  {:<6}  {:<20}  {:>4}%{}",
                format!("{k}/{}", self.steps.len()),
                format_time(self.step_start(k)),
                share,
                mark(k)
            );
        }
        out
    }

    pub fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "steps": self.steps,
            "interval": humantime::format_duration(self.interval).to_string(),
            "start": format_time(self.start),
        })
    }
}

/// RFC 3339 in UTC, to the second (or finer when the time has a fraction).
pub fn format_time(t: SystemTime) -> String {
    let mut out = String::new();
    // humantime cannot write years past 9999; validated ramps never get there.
    if write!(out, "{}", humantime::format_rfc3339(t)).is_err() {
        out = "after 9999".into();
    }
    out
}

/// Reads the ramp of the color whose variable is `var` (e.g. `GREEN`). `problem(var, value,
/// expected)` is told of each invalid value; `warn` of ramp variables set without `_RAMP`.
/// Returns `None` when there is no ramp, or it is invalid.
pub fn parse(
    env: &BTreeMap<String, String>,
    var: &str,
    problem: &mut dyn FnMut(&str, &str, &str),
    warnings: &mut Vec<String>,
) -> Option<Ramp> {
    let ramp_var = format!("{var}_RAMP");
    let interval_var = format!("{var}_RAMP_INTERVAL");
    let start_var = format!("{var}_RAMP_START");
    let Some(raw) = env.get(&ramp_var) else {
        for v in [&interval_var, &start_var] {
            if env.contains_key(v) {
                warnings.push(format!("{v} is set but {ramp_var} is not; it is ignored"));
            }
        }
        return None;
    };
    let steps = steps(raw).map_err(|why| problem(&ramp_var, raw, &why)).ok();
    let interval = match env.get(&interval_var) {
        None => Some(DEFAULT_INTERVAL),
        Some(v) => match humantime::parse_duration(v.trim()) {
            Ok(d) if (MIN_INTERVAL..=MAX_INTERVAL).contains(&d) => Some(d),
            Ok(_) => {
                problem(
                    &interval_var,
                    v,
                    "expected a step duration of at least 1s and at most 30 days, e.g. 5m",
                );
                None
            }
            Err(e) => {
                problem(
                    &interval_var,
                    v,
                    &format!("expected a step duration such as 30s, 5m or 1h ({e})"),
                );
                None
            }
        },
    };
    let start = match env.get(&start_var) {
        None => {
            problem(
                &start_var,
                "",
                &format!(
                    "expected the time step 1 of {ramp_var} begins, in RFC 3339 (e.g. 2026-12-01T20:00:00Z): \
                     it is required and has no default, because replicas start at different moments \
                     and must all follow the same schedule"
                ),
            );
            None
        }
        Some(v) => parse_rfc3339(v)
            .map_err(|why| problem(&start_var, v, &why))
            .ok(),
    };
    Some(Ramp {
        steps: steps?,
        interval: interval?,
        start: start?,
    })
}

fn steps(raw: &str) -> Result<Vec<u32>, String> {
    const SHAPE: &str = "expected increasing percentages from 0 to 100, e.g. 1,5,25,50,100";
    let mut steps: Vec<u32> = Vec::new();
    for part in raw.split(',') {
        let part = part.trim();
        let Ok(share) = part.trim_end_matches('%').parse::<u32>() else {
            return Err(format!("{SHAPE}; {part:?} is not a whole number"));
        };
        if share > 100 {
            return Err(format!("{SHAPE}; {share} is above 100"));
        }
        if let Some(&last) = steps.last()
            && share <= last
        {
            return Err(format!("{SHAPE}; {share} after {last} is not increasing"));
        }
        steps.push(share);
    }
    Ok(steps)
}

/// Parses an RFC 3339 date-time: `2026-12-01T20:00:00Z`, with an optional fraction and a `Z` or
/// `±hh:mm` offset (required: a time without one would mean something different on each host).
pub fn parse_rfc3339(raw: &str) -> Result<SystemTime, String> {
    const SHAPE: &str = "expected an RFC 3339 time such as 2026-12-01T20:00:00Z";
    let v = raw.trim();
    let bad = |why: &str| format!("{SHAPE} ({why})");
    if v.len() < 20 || !v.is_char_boundary(19) || !matches!(v.as_bytes()[10], b'T' | b't') {
        return Err(bad("date, T, time and offset"));
    }
    let (local, offset_secs) = if let Some(local) = v.strip_suffix(['Z', 'z']) {
        (local, 0i64)
    } else {
        let split = v.len().checked_sub(6).filter(|&i| v.is_char_boundary(i));
        let Some(i) = split else {
            return Err(bad("the offset Z or ±hh:mm is missing"));
        };
        let (local, offset) = v.split_at(i);
        if !offset.is_ascii() {
            return Err(bad("the offset must be Z or ±hh:mm"));
        }
        let b = offset.as_bytes();
        let sign = match b[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return Err(bad("the offset Z or ±hh:mm is missing")),
        };
        let digits = |s: &str| s.parse::<i64>().ok().filter(|_| s.len() == 2);
        match (digits(&offset[1..3]), &offset[3..4], digits(&offset[4..6])) {
            (Some(h), ":", Some(m)) if h < 24 && m < 60 => (local, sign * (h * 3600 + m * 60)),
            _ => return Err(bad("the offset must be Z or ±hh:mm")),
        }
    };
    if local.len() > 19 && !local[19..].starts_with('.') {
        return Err(bad("unexpected text after the seconds"));
    }
    // humantime wants an upper-case T (RFC 3339 allows either).
    let local = format!("{}T{}", &local[..10], &local[11..]);
    let utc = humantime::parse_rfc3339_weak(&local).map_err(|e| bad(&e.to_string()))?;
    let shifted = if offset_secs >= 0 {
        utc.checked_sub(Duration::from_secs(offset_secs as u64))
    } else {
        utc.checked_add(Duration::from_secs(offset_secs.unsigned_abs()))
    };
    shifted
        .filter(|t| *t >= UNIX_EPOCH && *t < UNIX_EPOCH + Duration::from_secs(LATEST_START_SECS))
        .ok_or_else(|| bad("out of range: from 1970 to 2199"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        parse_rfc3339(s).unwrap()
    }

    fn ramp(steps: &[u32], interval_secs: u64, start: &str) -> Ramp {
        Ramp {
            steps: steps.to_vec(),
            interval: Duration::from_secs(interval_secs),
            start: at(start),
        }
    }

    fn parse_env(vars: &[(&str, &str)]) -> (Option<Ramp>, Vec<(String, String)>, Vec<String>) {
        let env: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let r = parse(
            &env,
            "GREEN",
            &mut |var, value, expected| {
                problems.push((var.to_string(), format!("{value:?}: {expected}")))
            },
            &mut warnings,
        );
        (r, problems, warnings)
    }

    #[test]
    fn every_boundary_of_the_schedule() {
        let r = ramp(&[1, 5, 25, 50, 100], 300, "2026-12-01T20:00:00Z");
        let t0 = r.start;
        let ms = Duration::from_millis(1);
        let step = Duration::from_secs(300);
        assert_eq!(r.step_at(t0 - Duration::from_secs(3600)), 0);
        assert_eq!(r.step_at(t0 - ms), 0);
        assert_eq!(r.share_at(t0 - ms), 0);
        assert_eq!(r.step_at(t0), 1);
        assert_eq!(r.share_at(t0), 1);
        for k in 1..5u32 {
            let boundary = t0 + step * k;
            assert_eq!(
                r.step_at(boundary - ms),
                k as usize,
                "just before step {}",
                k + 1
            );
            assert_eq!(r.step_at(boundary), k as usize + 1, "at step {}", k + 1);
            assert_eq!(r.step_start(k as usize + 1), boundary);
        }
        assert_eq!(r.share_at(t0 + step * 2), 25);
        assert_eq!(r.share_at(t0 + step * 4 - ms), 50);
        assert_eq!(r.share_at(t0 + step * 4), 100);
        // After the last step its share is kept, forever.
        assert_eq!(r.step_at(t0 + step * 5), 5);
        assert_eq!(r.share_at(t0 + step * 5000), 100);
        assert_eq!(r.next_start(0), Some(t0));
        assert_eq!(r.next_start(4), Some(t0 + step * 4));
        assert_eq!(r.next_start(5), None);
    }

    #[test]
    fn a_ramp_that_stops_short_of_100_keeps_its_last_share() {
        let r = ramp(&[0, 10], 1, "2026-01-01T00:00:00Z");
        assert_eq!(r.share_at(r.start), 0);
        assert_eq!(r.share_at(r.start + Duration::from_secs(1)), 10);
        assert_eq!(r.share_at(r.start + Duration::from_secs(86_400)), 10);
    }

    #[test]
    fn schedule_marks_the_current_step() {
        let r = ramp(&[10, 50, 100], 60, "2026-12-01T20:00:00Z");
        let s = r.schedule(r.start + Duration::from_secs(61));
        let now: Vec<&str> = s.lines().filter(|l| l.ends_with("<- now")).collect();
        assert_eq!(now.len(), 1, "{s}");
        assert!(
            now[0].contains("2/3") && now[0].contains("2026-12-01T20:01:00Z"),
            "{s}"
        );
        assert!(s.contains("3/3     2026-12-01T20:02:00Z   100%"), "{s}");
        let before = r.schedule(r.start - Duration::from_secs(1));
        assert!(
            before.lines().nth(1).unwrap().ends_with("<- now"),
            "{before}"
        );
        assert_eq!(r.describe(), "10,50,100 every 1m from 2026-12-01T20:00:00Z");
    }

    #[test]
    fn rfc3339_with_offsets_and_fractions() {
        let z = at("2026-12-01T20:00:00Z");
        assert_eq!(at("2026-12-01T21:30:00+01:30"), z);
        assert_eq!(at("2026-12-01T15:00:00-05:00"), z);
        assert_eq!(at("2026-12-01t20:00:00z"), z);
        assert_eq!(
            at("2026-12-01T20:00:00.250Z"),
            z + Duration::from_millis(250)
        );
        for bad in [
            "",
            "2026-12-01",
            "2026-12-01T20:00:00",
            "2026-12-01 20:00:00Z",
            "2026-12-01T20:00Z",
            "2026-13-01T20:00:00Z",
            "2026-12-01T25:00:00Z",
            "2026-12-01T20:00:00+1:00",
            "2026-12-01T20:00:00+01:00x",
            "2026-12-01T20:00:00x01:00",
            "2026-12-01T20:00:00 UTC",
            "now",
            "1969-12-31T23:59:59Z",
            "2026-12-01T20:00:00ééZ",
            "2200-01-01T00:00:00Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_valid_ramp_with_and_without_interval() {
        let (r, p, _) = parse_env(&[
            ("GREEN_RAMP", "1, 5,25,50,100"),
            ("GREEN_RAMP_START", "2026-12-01T20:00:00Z"),
        ]);
        assert!(p.is_empty(), "{p:?}");
        let r = r.unwrap();
        assert_eq!(r.steps, [1, 5, 25, 50, 100]);
        assert_eq!(r.interval, DEFAULT_INTERVAL);
        let (r, p, _) = parse_env(&[
            ("GREEN_RAMP", "10,50,100"),
            ("GREEN_RAMP_INTERVAL", "1s"),
            ("GREEN_RAMP_START", "2026-12-01T20:00:00Z"),
        ]);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(r.unwrap().interval, Duration::from_secs(1));
        assert_eq!(parse_env(&[]).0, None);
    }

    #[test]
    fn each_invalid_ramp_names_its_variable() {
        let start = ("GREEN_RAMP_START", "2026-12-01T20:00:00Z");
        for (vars, var, needle) in [
            (
                vec![("GREEN_RAMP", "5,1"), start],
                "GREEN_RAMP",
                "not increasing",
            ),
            (
                vec![("GREEN_RAMP", "5,5"), start],
                "GREEN_RAMP",
                "not increasing",
            ),
            (
                vec![("GREEN_RAMP", "50,101"), start],
                "GREEN_RAMP",
                "above 100",
            ),
            (
                vec![("GREEN_RAMP", "1,x"), start],
                "GREEN_RAMP",
                "not a whole number",
            ),
            (
                vec![("GREEN_RAMP", ""), start],
                "GREEN_RAMP",
                "not a whole number",
            ),
            (
                vec![("GREEN_RAMP", "-1,5"), start],
                "GREEN_RAMP",
                "not a whole number",
            ),
            (vec![("GREEN_RAMP", "1,5")], "GREEN_RAMP_START", "required"),
            (
                vec![("GREEN_RAMP", "1,5"), ("GREEN_RAMP_START", "tomorrow")],
                "GREEN_RAMP_START",
                "RFC 3339",
            ),
            (
                vec![
                    ("GREEN_RAMP", "1,5"),
                    start,
                    ("GREEN_RAMP_INTERVAL", "500ms"),
                ],
                "GREEN_RAMP_INTERVAL",
                "at least 1s",
            ),
            (
                vec![
                    ("GREEN_RAMP", "1,5"),
                    start,
                    ("GREEN_RAMP_INTERVAL", "31days"),
                ],
                "GREEN_RAMP_INTERVAL",
                "at most 30 days",
            ),
            (
                vec![
                    ("GREEN_RAMP", "1,5"),
                    ("GREEN_RAMP_START", "9999-12-31T23:59:59Z"),
                ],
                "GREEN_RAMP_START",
                "out of range",
            ),
            (
                vec![("GREEN_RAMP", "1,5"), start, ("GREEN_RAMP_INTERVAL", "5")],
                "GREEN_RAMP_INTERVAL",
                "step duration",
            ),
        ] {
            let (r, p, _) = parse_env(&vars);
            assert_eq!(r, None, "{vars:?}");
            assert_eq!(p.len(), 1, "{vars:?}: {p:?}");
            assert_eq!(p[0].0, var, "{vars:?}");
            assert!(p[0].1.contains(needle), "{vars:?}: {}", p[0].1);
        }
        // Every problem at once.
        let (_, p, _) = parse_env(&[("GREEN_RAMP", "9,1"), ("GREEN_RAMP_INTERVAL", "0s")]);
        let vars: Vec<&str> = p.iter().map(|(v, _)| v.as_str()).collect();
        assert_eq!(
            vars,
            ["GREEN_RAMP", "GREEN_RAMP_INTERVAL", "GREEN_RAMP_START"]
        );
        // The missing START says why it has no default.
        assert!(
            p[2].1.contains("replicas start at different moments"),
            "{p:?}"
        );
    }

    #[test]
    fn ramp_settings_without_a_ramp_warn() {
        let (r, p, w) = parse_env(&[("GREEN_RAMP_START", "2026-12-01T20:00:00Z")]);
        assert_eq!((r, p.len()), (None, 0));
        assert_eq!(w.len(), 1);
        assert!(w[0].starts_with("GREEN_RAMP_START is set but GREEN_RAMP is not"));
    }
}
