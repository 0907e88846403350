//! Property tests of the configuration parser: whatever the environment holds, parsing never
//! panics, and every problem names its variable and quotes its value.

use std::collections::BTreeMap;

use colorproxy::config::{Config, parse_upstream};
use proptest::prelude::*;

/// Names colorproxy reads, names near them, and names of other software.
fn var_name() -> impl Strategy<Value = String> {
    let fixed = prop::sample::select(vec![
        "COLORS",
        "LISTEN",
        "ADMIN_LISTEN",
        "CONNECT_TIMEOUT",
        "REQUEST_TIMEOUT",
        "DRAIN_TIMEOUT",
        "DNS_REFRESH",
        "RESOLVER",
        "STICKY",
        "STICKY_COOKIE",
        "OVERRIDE_HEADER",
        "ACCESS_LOG",
        "RESPONSE_HEADERS",
        "LOG_FORMAT",
        "RUST_LOG",
        "BLUE",
        "GREEN",
        "CANARY",
        "NPM_CONFIG_PREFIX",
    ])
    .prop_map(str::to_string);
    let per_color = (
        prop::sample::select(vec!["BLUE", "GREEN", "CANARY", "GREN", "X"]),
        prop::sample::select(vec!["_WEIGHT", "_PREFIX", "_DISCOVERY", "_WIEGHT", ""]),
    )
        .prop_map(|(c, s)| format!("{c}{s}"));
    prop_oneof![fixed, per_color, "[A-Z_]{1,12}", any::<String>()]
}

/// Values that are nearly right as well as anything at all.
fn var_value() -> impl Strategy<Value = String> {
    prop_oneof![
        url(),
        "[0-9]{0,12}",
        "-?[0-9]{1,3}(\\.[0-9])?(ms|s|m|h|x| )?",
        "(127\\.0\\.0\\.1|0\\.0\\.0\\.0|\\[::\\]|::1|x)?(:[0-9]{0,6})?",
        "(blue|green|canary|red|,| |BLUE|x_weight){0,5}",
        "(on|off|cookie|header:|json|text|auto|tasks|dns|/|/films|info|\\[)",
        any::<String>(),
    ]
}

fn url() -> impl Strategy<Value = String> {
    " ?(http|https|ftp|HTTP)?(:|://)?(u:p@)?(myapp|10\\.0\\.0\\.7|\\[::1\\]|\\[|-|)(:[0-9a-z]{0,6})?(/[a-z/?#%. ]{0,8})? ?"
}

fn env() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((var_name(), var_value()), 0..12)
}

proptest! {
    #[test]
    fn every_problem_names_a_variable_it_was_given(vars in env()) {
        let given: BTreeMap<String, String> = vars.iter().cloned().collect();
        let Err(e) = Config::from_vars(vars) else { return Ok(()) };
        prop_assert!(!e.0.is_empty());
        let text = e.to_string();
        for p in &e.0 {
            prop_assert!(text.contains(&p.var), "{} missing from {}", p.var, text);
            prop_assert!(!p.expected.is_empty());
            // ADMIN_LISTEN may clash with LISTEN at its default, unset.
            if p.var == "ADMIN_LISTEN" && !given.contains_key("ADMIN_LISTEN") {
                continue;
            }
            // Several variables at once (every weight of a route is 0) are comma-joined.
            for var in p.var.split(',') {
                let value = given.get(var);
                prop_assert!(value.is_some(), "{} was not given: {:?}", var, given);
                if !p.var.contains(',') && p.var != "ADMIN_LISTEN" {
                    let value = value.unwrap();
                    prop_assert!(
                        value.contains(p.value.as_str()),
                        "{}: {:?} is not from {:?}", p.var, p.value, value
                    );
                }
            }
        }
    }

    #[test]
    fn any_upstream_url_is_parsed_or_refused_naming_its_variable(raw in prop_oneof![url(), any::<String>()]) {
        match parse_upstream(&raw) {
            Ok(u) => {
                prop_assert!(!u.host.is_empty());
                prop_assert!(u.port != 0);
                prop_assert_eq!(u.url.as_str(), raw.trim());
                let port = format!(":{}", u.port);
                prop_assert!(u.authority.as_str().ends_with(&port), "{}", u.authority);
                prop_assert!(!u.base_path.ends_with('/'));
            }
            Err(why) => {
                prop_assert!(why.starts_with("expected"), "{}", why);
                let e = Config::from_vars([("BLUE", raw.as_str())]).expect_err("BLUE is refused");
                prop_assert_eq!(e.0.len(), 1);
                prop_assert_eq!(e.0[0].var.as_str(), "BLUE");
                prop_assert_eq!(e.0[0].value.as_str(), raw.as_str());
                prop_assert_eq!(&e.0[0].expected, &why);
            }
        }
    }
}
