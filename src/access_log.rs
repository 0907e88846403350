//! The access line: one per request, written by hand into a per-thread buffer and queued whole
//! on the log writer ([`crate::log_writer`]), byte for byte what tracing-subscriber's
//! formatter writes for the same `colorproxy::access` event (text with or without colors, or
//! JSON), without the event machinery.
//!
//! Why not a tracing event: dispatching the event, filtering it, visiting its ten fields
//! through `dyn` formatters and writing everything through `fmt` cost a third of the proxy's
//! instructions per request (callgrind: 16.2k of 48.7k; 1.7k this way). Here the
//! timestamp's date and time are computed once a second per thread, numbers go through
//! `itoa`, and strings that need no escaping (all of them, in practice) are copied as they
//! are. The other log lines, rare, stay tracing events on the same writer, so that ordering,
//! the bounded queue, the dropped-line counter and its warning are shared.
//!
//! `RUST_LOG` still decides: the access line is written only if the filter lets an `INFO`
//! event of target `colorproxy::access` through (`RUST_LOG=warn` or
//! `RUST_LOG=info,colorproxy::access=off` silence it), asked once at startup.

use std::cell::RefCell;
use std::io::Write;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::log_writer::LogWriter;

/// The target users filter on (`RUST_LOG`) and see in every access line.
pub const TARGET: &str = "colorproxy::access";

/// How the lines look, as configured by `LOG_FORMAT` (and for text, whether stdout is a
/// terminal, as tracing-subscriber decides colors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Text { ansi: bool },
    Json,
}

/// What one access line says.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub color: &'a str,
    pub upstream: &'a str,
    pub duration_ms: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// `ip:port` as `SocketAddr` displays it, formatted once per connection.
    pub client: &'a str,
}

struct Sink {
    writer: LogWriter,
    style: Style,
}

/// Set once by [`install`]; without it (the library used without `logging::init`, or the
/// filter says no), access lines go nowhere, as tracing events without a subscriber do.
static SINK: OnceLock<Sink> = OnceLock::new();

/// Sends access lines to `writer` from now on. Called once, by `logging::init`, after the
/// global subscriber is in place, so that its filter can be asked.
pub fn install(writer: LogWriter, style: Style) {
    if tracing::enabled!(target: TARGET, tracing::Level::INFO) {
        let _ = SINK.set(Sink { writer, style });
    }
}

/// Whether access lines are written at all: when not, an exchange keeps nothing for them.
pub fn enabled() -> bool {
    SINK.get().is_some()
}

thread_local! {
    static LINE: RefCell<Line> = const {
        RefCell::new(Line {
            buf: Vec::new(),
            clock: Clock { second: i64::MIN, text: [0; 32], len: 0 },
        })
    };
}

struct Line {
    buf: Vec<u8>,
    clock: Clock,
}

/// Writes the access line of one exchange that ended now.
pub fn log(entry: &Entry<'_>) {
    let Some(sink) = SINK.get() else { return };
    let now = SystemTime::now();
    let written = LINE.try_with(|line| {
        let Ok(mut line) = line.try_borrow_mut() else {
            return false;
        };
        let Line { buf, clock } = &mut *line;
        buf.clear();
        format(buf, clock, now, entry, sink.style);
        sink.writer.push(buf);
        // A path of a megabyte must not stay resident in every thread that logged one.
        if buf.capacity() > 16 * 1024 {
            *buf = Vec::new();
        }
        true
    });
    if written != Ok(true) {
        // A thread being torn down: no reusable buffer, but the line is not lost.
        let mut buf = Vec::new();
        format(&mut buf, &mut Clock::new(), now, entry, sink.style);
        sink.writer.push(&buf);
    }
}

/// Appends the line (with its newline) to `buf`.
pub fn format(buf: &mut Vec<u8>, clock: &mut Clock, now: SystemTime, e: &Entry<'_>, style: Style) {
    match style {
        // One copy per style: every fixed piece then has a length known at compile time, and
        // is copied inline instead of through `memcpy`.
        Style::Text { ansi: false } => text::<false>(buf, clock, now, e),
        Style::Text { ansi: true } => text::<true>(buf, clock, now, e),
        Style::Json => json(buf, clock, now, e),
    }
}

/// What comes before each field's value in text: ` name=`, with colors the name italic and
/// the `=` dimmed, as tracing-subscriber writes them.
macro_rules! fields {
    ($($name:literal),*) => {
        (
            [$(concat!(" ", $name, "=")),*],
            [$(concat!(" \x1b[3m", $name, "\x1b[0m\x1b[2m=\x1b[0m")),*],
        )
    };
}
const FIELDS: ([&str; 9], [&str; 9]) = fields!(
    "method",
    "path",
    "status",
    "color",
    "upstream",
    "duration_ms",
    "bytes_in",
    "bytes_out",
    "client"
);

/// tracing-subscriber's `Full` format with its default fields: `%` values as they are, `&str`
/// values quoted as `Debug` does, numbers as `Debug` does; with colors, the timestamp and the
/// target dimmed, the level green, field names italic.
fn text<const ANSI: bool>(buf: &mut Vec<u8>, clock: &mut Clock, now: SystemTime, e: &Entry<'_>) {
    let [
        method,
        path,
        status,
        color,
        upstream,
        duration_ms,
        bytes_in,
        bytes_out,
        client,
    ] = if ANSI { FIELDS.1 } else { FIELDS.0 }.map(str::as_bytes);
    if ANSI {
        buf.extend_from_slice(b"\x1b[2m");
        clock.write(buf, now);
        buf.extend_from_slice(
            b"\x1b[0m \x1b[32m INFO\x1b[0m \x1b[2mcolorproxy::access\x1b[0m\x1b[2m:\x1b[0m request",
        );
    } else {
        clock.write(buf, now);
        buf.extend_from_slice(b"  INFO colorproxy::access: request");
    }
    buf.extend_from_slice(method);
    buf.extend_from_slice(e.method.as_bytes());
    buf.extend_from_slice(path);
    buf.extend_from_slice(e.path.as_bytes());
    buf.extend_from_slice(status);
    integer(buf, e.status.into());
    buf.extend_from_slice(color);
    debug_str(buf, e.color);
    buf.extend_from_slice(upstream);
    debug_str(buf, e.upstream);
    buf.extend_from_slice(duration_ms);
    let ms = e.duration_ms.abs();
    if (1e-4..1e16).contains(&ms) {
        // Where `Debug` writes no exponent, zmij writes the same shortest digits, faster.
        buf.extend_from_slice(zmij::Buffer::new().format_finite(e.duration_ms).as_bytes());
    } else {
        let _ = write!(buf, "{:?}", e.duration_ms);
    }
    buf.extend_from_slice(bytes_in);
    integer(buf, e.bytes_in);
    buf.extend_from_slice(bytes_out);
    integer(buf, e.bytes_out);
    buf.extend_from_slice(client);
    buf.extend_from_slice(e.client.as_bytes());
    buf.push(b'\n');
}

/// tracing-subscriber's JSON format with `flatten_event(true)`: timestamp, level, then the
/// event's fields in order (message first), then the target.
fn json(buf: &mut Vec<u8>, clock: &mut Clock, now: SystemTime, e: &Entry<'_>) {
    buf.extend_from_slice(b"{\"timestamp\":\"");
    clock.write(buf, now);
    buf.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"method\":");
    json_str(buf, e.method);
    buf.extend_from_slice(b",\"path\":");
    json_str(buf, e.path);
    buf.extend_from_slice(b",\"status\":");
    integer(buf, e.status.into());
    buf.extend_from_slice(b",\"color\":");
    json_str(buf, e.color);
    buf.extend_from_slice(b",\"upstream\":");
    json_str(buf, e.upstream);
    buf.extend_from_slice(b",\"duration_ms\":");
    // As serde_json writes an f64 (through zmij), null when not finite.
    if e.duration_ms.is_finite() {
        buf.extend_from_slice(zmij::Buffer::new().format_finite(e.duration_ms).as_bytes());
    } else {
        buf.extend_from_slice(b"null");
    }
    buf.extend_from_slice(b",\"bytes_in\":");
    integer(buf, e.bytes_in);
    buf.extend_from_slice(b",\"bytes_out\":");
    integer(buf, e.bytes_out);
    buf.extend_from_slice(b",\"client\":");
    json_str(buf, e.client);
    buf.extend_from_slice(b",\"target\":\"colorproxy::access\"}\n");
}

fn integer(buf: &mut Vec<u8>, n: u64) {
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `{:?}` of a `&str`: quoted, and escaped only where needed (never, for color names and
/// `host:port`).
fn debug_str(buf: &mut Vec<u8>, s: &str) {
    // A fold, not `all`: no early exit, so that it runs over 16 or 32 bytes at a time.
    let plain = s.bytes().fold(true, |ok, b| {
        ok & (b.wrapping_sub(b' ') < 95) & (b != b'"') & (b != b'\\')
    });
    if plain {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        let _ = write!(buf, "{s:?}");
    }
}

/// A JSON string as serde_json writes it: only `"`, `\` and control characters are escaped.
fn json_str(buf: &mut Vec<u8>, s: &str) {
    let plain = s
        .bytes()
        .fold(true, |ok, b| ok & (b >= b' ') & (b != b'"') & (b != b'\\'));
    if plain {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *buf, s);
    }
}

/// RFC 3339 UTC with microseconds, as tracing-subscriber's default timer writes it
/// (`2026-12-01T21:45:03.112406Z`); the part up to the seconds is kept for the second it is in.
pub struct Clock {
    second: i64,
    /// `YYYY-MM-DDTHH:MM:SS.` (longer for years beyond 9999 or before 0).
    text: [u8; 32],
    len: usize,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            second: i64::MIN,
            text: [0; 32],
            len: 0,
        }
    }

    pub fn write(&mut self, buf: &mut Vec<u8>, now: SystemTime) {
        let (second, nanos) = match now.duration_since(UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => {
                // Before 1970, as tracing-subscriber counts it.
                let d = e.duration();
                let (s, n) = (d.as_secs() as i64, d.subsec_nanos());
                if n == 0 {
                    (-s, 0)
                } else {
                    (-s - 1, 1_000_000_000 - n)
                }
            }
        };
        if second != self.second {
            self.second = second;
            let mut text = Vec::with_capacity(32);
            date_time(&mut text, second);
            self.len = text.len().min(self.text.len());
            self.text[..self.len].copy_from_slice(&text[..self.len]);
        }
        buf.extend_from_slice(&self.text[..self.len]);
        let mut micros = nanos / 1_000;
        let mut digits = [b'0'; 6];
        for d in digits.iter_mut().rev() {
            *d = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        buf.extend_from_slice(&digits);
        buf.push(b'Z');
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}

/// `YYYY-MM-DDTHH:MM:SS.` of a Unix time in seconds (days to a civil date after Howard
/// Hinnant's `civil_from_days`).
fn date_time(out: &mut Vec<u8>, t: i64) {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = if year > 9999 {
        write!(out, "+{year}")
    } else if year < 0 {
        write!(out, "{year:05}")
    } else {
        write!(out, "{year:04}")
    };
    let _ = write!(
        out,
        "-{month:02}-{day:02}T{:02}:{:02}:{:02}.",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::time::FormatTime;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    /// tracing-subscriber's default timer, at a time of the test's choosing.
    struct At(SystemTime);

    impl FormatTime for At {
        fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
            write!(w, "{}", humantime::format_rfc3339_micros(self.0))
        }
    }

    /// The access line as it was written before this module: the tracing event through the
    /// subscriber `logging::init` builds.
    fn through_tracing(e: &Entry<'_>, at: SystemTime, style: Style, ansi: bool) -> String {
        let out = Capture::default();
        let builder = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_timer(At(at))
            .with_ansi(ansi);
        let emit = || {
            tracing::info!(
                target: "colorproxy::access",
                method = %e.method,
                path = %e.path,
                status = e.status,
                color = e.color,
                upstream = e.upstream,
                duration_ms = e.duration_ms,
                bytes_in = e.bytes_in,
                bytes_out = e.bytes_out,
                client = %e.client,
                "request"
            )
        };
        match style {
            Style::Text { .. } => tracing::subscriber::with_default(builder.finish(), emit),
            Style::Json => {
                tracing::subscriber::with_default(builder.json().flatten_event(true).finish(), emit)
            }
        }
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    fn by_hand(e: &Entry<'_>, at: SystemTime, style: Style) -> String {
        let mut buf = Vec::new();
        format(&mut buf, &mut Clock::new(), at, e, style);
        String::from_utf8(buf).unwrap()
    }

    fn assert_same(e: &Entry<'_>, at: SystemTime) {
        for ansi in [false, true] {
            let style = Style::Text { ansi };
            assert_eq!(by_hand(e, at, style), through_tracing(e, at, style, ansi));
            assert_eq!(
                by_hand(e, at, Style::Json),
                through_tracing(e, at, Style::Json, ansi)
            );
        }
    }

    fn typical() -> Entry<'static> {
        Entry {
            method: "GET",
            path: "/orders?id=7",
            status: 200,
            color: "blue",
            upstream: "10.0.1.7:8080",
            duration_ms: 0.734512,
            bytes_in: 0,
            bytes_out: 1234,
            client: "127.0.0.1:53412",
        }
    }

    #[test]
    fn a_typical_line_is_what_tracing_wrote() {
        let at = UNIX_EPOCH + Duration::new(1_796_161_503, 112_406_789);
        assert_same(&typical(), at);
        assert_eq!(
            by_hand(&typical(), at, Style::Text { ansi: false }),
            "2026-12-01T21:45:03.112406Z  INFO colorproxy::access: request method=GET \
             path=/orders?id=7 status=200 color=\"blue\" upstream=\"10.0.1.7:8080\" \
             duration_ms=0.734512 bytes_in=0 bytes_out=1234 client=127.0.0.1:53412\n"
        );
    }

    #[test]
    fn odd_values_are_written_as_tracing_wrote_them() {
        let at = UNIX_EPOCH + Duration::new(951_782_400, 999_999_999); // 2000-02-29
        let client = "[::1]:8080";
        for (path, color, upstream, ms) in [
            ("/a b\"c\\d\u{1}é\u{7f}\u{9b}", "none", "-", 1.0),
            ("/", "gr\"een", "host\\x:1", 1e-7),
            ("/q?x=\t", "ünï\u{301}", "\u{0}", 1e20),
            ("/", "", "", f64::NAN),
            ("/", "b", "u", f64::INFINITY),
            ("/", "b", "u", -0.0),
            ("/", "b", "u", 0.1 + 0.2),
        ] {
            let e = Entry {
                path,
                color,
                upstream,
                duration_ms: ms,
                status: 499,
                bytes_in: u64::MAX,
                client,
                ..typical()
            };
            assert_same(&e, at);
        }
    }

    proptest! {
        #[test]
        fn any_line_is_what_tracing_wrote(
            method in "[A-Z]{1,8}",
            path in any::<String>(),
            status in any::<u16>(),
            color in any::<String>(),
            upstream in any::<String>(),
            duration_ms in prop_oneof![any::<f64>(), 0.0f64..1e7],
            bytes_in in any::<u64>(),
            bytes_out in any::<u64>(),
            client in any::<std::net::SocketAddr>(),
            secs in 0u64..253_402_300_800,
            nanos in 0u32..1_000_000_000,
        ) {
            let client = client.to_string();
            let e = Entry {
                method: &method,
                path: &path,
                status,
                color: &color,
                upstream: &upstream,
                duration_ms,
                bytes_in,
                bytes_out,
                client: &client,
            };
            assert_same(&e, UNIX_EPOCH + Duration::new(secs, nanos));
        }
    }

    #[test]
    fn the_clock_agrees_with_humantime_across_the_calendar() {
        let mut clock = Clock::new();
        // Every day boundary from 1970 to 9999 seen at a stride, then seconds in a row (the
        // cached part changes, or not).
        let mut t = 0u64;
        while t < 253_402_300_800 {
            for at in [t, t + 1, t + 86_399] {
                let now = UNIX_EPOCH + Duration::new(at, 123_456_789);
                let mut buf = Vec::new();
                clock.write(&mut buf, now);
                assert_eq!(
                    String::from_utf8(buf).unwrap(),
                    humantime::format_rfc3339_micros(now).to_string()
                );
            }
            t += 86_400 * 97 + 3_601;
        }
        for leap in [951_782_400, 4_107_456_000, 1_709_164_800] {
            let now = UNIX_EPOCH + Duration::new(leap, 5_000);
            let mut buf = Vec::new();
            clock.write(&mut buf, now);
            assert_eq!(
                String::from_utf8(buf).unwrap(),
                humantime::format_rfc3339_micros(now).to_string()
            );
        }
    }
}
