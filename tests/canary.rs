//! Canary controls through the real binary: sticky buckets, forced colors, path-prefix routes.

mod common;

use common::*;
use http_body_util::Full;
use hyper::Request;

/// The color an echo backend saw in the request.
fn color_of(r: &Reply) -> String {
    let (_, headers) = parse_echo(&r.body);
    header_values(&headers, "color").join(",")
}

async fn get_with(client: &HttpClient, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(client, req.body(Full::default()).unwrap()).await
}

fn set_cookie(r: &Reply) -> Option<String> {
    r.headers
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_string())
}

fn bucket_from(cookie: &str) -> u32 {
    cookie
        .strip_prefix("colorproxy_bucket=")
        .and_then(|rest| rest.split(';').next())
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("no bucket in {cookie:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_is_issued_and_kept() {
    let blue = Backend::echo("blue").await;
    let green = Backend::echo("green").await;
    let proxy = ProxyProcess::start(&[
        ("BLUE", &blue.url()),
        ("GREEN", &green.url()),
        ("STICKY", "cookie"),
    ]);
    let client = client();
    let first = get(&client, &proxy.url("/")).await;
    let cookie = set_cookie(&first).expect("a new client gets a bucket");
    let bucket = bucket_from(&cookie);
    assert!(bucket < 10_000);
    for attr in ["Path=/", "Max-Age=", "HttpOnly", "SameSite=Lax"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "{cookie}");
    // Equal weights: buckets 0..5000 are blue, 5000..10000 green.
    let expected = if bucket < 5000 { "blue" } else { "green" };
    assert_eq!(color_of(&first), expected);

    let jar = format!("colorproxy_bucket={bucket}");
    for _ in 0..50 {
        let r = get_with(&client, &proxy.url("/"), &[("cookie", &jar)]).await;
        assert_eq!(color_of(&r), expected);
        assert!(set_cookie(&r).is_none(), "a known client keeps its bucket");
    }

    let https = get_with(&client, &proxy.url("/"), &[("x-forwarded-proto", "https")]).await;
    assert!(set_cookie(&https).unwrap().ends_with("; Secure"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_cookies_are_replaced_never_an_error() {
    let blue = Backend::echo("blue").await;
    let proxy = ProxyProcess::start(&[("BLUE", &blue.url()), ("STICKY", "cookie")]);
    let client = client();
    for bad in [
        "abc",
        "10000",
        "-3",
        "+7",
        "",
        "1e3",
        "\"\"",
        "99999999999999999999",
    ] {
        let jar = format!("other=1; colorproxy_bucket={bad}");
        let r = get_with(&client, &proxy.url("/"), &[("cookie", &jar)]).await;
        assert_eq!(r.status, 200, "{bad}");
        let fresh = set_cookie(&r).unwrap_or_else(|| panic!("{bad} was not replaced"));
        assert!(bucket_from(&fresh) < 10_000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_map_alike_on_every_replica_and_move_one_way() {
    let blue = Backend::echo("blue").await;
    let green = Backend::echo("green").await;
    let replica = |green_weight: &str| {
        ProxyProcess::start(&[
            ("BLUE", &blue.url()),
            ("GREEN", &green.url()),
            ("BLUE_WEIGHT", "90"),
            ("GREEN_WEIGHT", green_weight),
            ("STICKY", "cookie"),
        ])
    };
    let (a, b) = (replica("10"), replica("10"));
    let raised = replica("20");
    let client = client();
    for bucket in (0..10_000)
        .step_by(37)
        .chain([8999, 9000, 8181, 8182, 9999])
    {
        let jar = format!("colorproxy_bucket={bucket}");
        let on_a = color_of(&get_with(&client, &a.url("/"), &[("cookie", &jar)]).await);
        let on_b = color_of(&get_with(&client, &b.url("/"), &[("cookie", &jar)]).await);
        assert_eq!(on_a, on_b, "bucket {bucket}");
        assert_eq!(
            on_a,
            if bucket < 9000 { "blue" } else { "green" },
            "bucket {bucket}"
        );
        // Green from weight 10 to 20 (10% to 18.2%): blue's slice ends at 10000 * 90 / 110 =
        // 8181; some blue buckets become green, no green one becomes blue.
        let after = color_of(&get_with(&client, &raised.url("/"), &[("cookie", &jar)]).await);
        if on_a == "green" {
            assert_eq!(after, "green", "bucket {bucket} moved back to blue");
        }
        assert_eq!(
            after,
            if bucket < 8181 { "blue" } else { "green" },
            "bucket {bucket}"
        );
    }

    // Green removed: its clients go to blue.
    let no_green = ProxyProcess::start(&[("BLUE", &blue.url()), ("STICKY", "cookie")]);
    let r = get_with(
        &client,
        &no_green.url("/"),
        &[("cookie", "colorproxy_bucket=9500")],
    )
    .await;
    assert_eq!(color_of(&r), "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_header_buckets_by_its_value() {
    let blue = Backend::echo("blue").await;
    let green = Backend::echo("green").await;
    let env = [
        ("BLUE", blue.url()),
        ("GREEN", green.url()),
        ("STICKY", "header:X-User-Id".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (a, b) = (ProxyProcess::start(&env), ProxyProcess::start(&env));
    let client = client();
    let mut colors = std::collections::HashSet::new();
    for user in 0..40 {
        let id = format!("user-{user}");
        let first = color_of(&get_with(&client, &a.url("/"), &[("x-user-id", &id)]).await);
        for _ in 0..3 {
            let again = get_with(&client, &b.url("/"), &[("x-user-id", &id)]).await;
            assert_eq!(color_of(&again), first, "{id}");
            assert!(set_cookie(&again).is_none());
        }
        colors.insert(first);
    }
    assert_eq!(colors.len(), 2, "40 users all landed on one color");
    // Without the header: a random pick for each request.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..100 {
        seen.insert(color_of(&get(&client, &a.url("/")).await));
    }
    assert_eq!(seen.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_header_forces_a_color_even_at_weight_zero() {
    let blue = Backend::echo("blue").await;
    let green = Backend::echo("green").await;
    let proxy = ProxyProcess::start(&[
        ("BLUE", &blue.url()),
        ("GREEN", &green.url()),
        ("GREEN_WEIGHT", "0"),
        ("OVERRIDE_HEADER", "X-Color"),
    ]);
    let client = client();
    for _ in 0..20 {
        let r = get_with(&client, &proxy.url("/"), &[("x-color", "GREEN")]).await;
        assert_eq!(color_of(&r), "green");
        let r = get_with(&client, &proxy.url("/"), &[("x-color", "purple")]).await;
        assert_eq!((r.status, color_of(&r).as_str()), (200, "blue"));
        assert_eq!(color_of(&get(&client, &proxy.url("/")).await), "blue");
    }

    // Off by default: the header is just a header.
    let plain = ProxyProcess::start(&[
        ("BLUE", &blue.url()),
        ("GREEN", &green.url()),
        ("GREEN_WEIGHT", "0"),
    ]);
    let r = get_with(&client, &plain.url("/"), &[("x-color", "green")]).await;
    assert_eq!(color_of(&r), "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_color_that_is_down_is_not_replaced_by_another() {
    let blue = Backend::echo("blue").await;
    let dead = dead_address().await;
    let proxy = ProxyProcess::start(&[
        ("BLUE", &blue.url()),
        ("GREEN", &dead),
        ("GREEN_WEIGHT", "0"),
        ("OVERRIDE_HEADER", "X-Color"),
    ]);
    let r = get_with(&client(), &proxy.url("/"), &[("x-color", "green")]).await;
    assert_eq!(
        r.status, 502,
        "QA asked for green and must not silently get blue"
    );
    assert!(r.body.contains("upstream green"), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_prefix_routes_with_blue_green_per_service() {
    let films_blue = Backend::echo("films_blue").await;
    let films_green = Backend::echo("films_green").await;
    let ratings = Backend::echo("ratings").await;
    let env = [
        ("COLORS", "films_blue,films_green,ratings".to_string()),
        ("FILMS_BLUE", films_blue.url()),
        ("FILMS_GREEN", films_green.url()),
        ("RATINGS", ratings.url()),
        ("FILMS_BLUE_PREFIX", "/films".to_string()),
        ("FILMS_GREEN_PREFIX", "/films/".to_string()),
        ("RATINGS_PREFIX", "/ratings".to_string()),
        ("FILMS_BLUE_WEIGHT", "3".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let proxy = ProxyProcess::start(&env);
    let client = client();
    let mut films = std::collections::HashMap::<String, usize>::new();
    for i in 0..400 {
        let path = if i % 2 == 0 {
            "/films"
        } else {
            "/films/7?full=1"
        };
        let r = get(&client, &proxy.url(path)).await;
        let (line, _) = parse_echo(&r.body);
        assert_eq!(line, format!("GET {path}"), "the prefix is not stripped");
        *films.entry(color_of(&r)).or_default() += 1;
    }
    // 3:1 inside the films route: 300 expected for blue, sigma ≈ 8.7.
    assert_eq!(films.len(), 2, "{films:?}");
    assert!((256..=344).contains(&films["films_blue"]), "{films:?}");
    for path in ["/ratings", "/ratings/5"] {
        assert_eq!(color_of(&get(&client, &proxy.url(path)).await), "ratings");
    }
    for path in ["/filmsx", "/", "/rating"] {
        let r = get(&client, &proxy.url(path)).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.body, format!("colorproxy: no route for {path}\n"));
    }

    let (status, stdout, _) = run(&["check"], &env);
    assert!(status.success());
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[1][..2], ["/films", "films_blue"]);
    assert_eq!(rows[1][4], "75.0%");
    assert_eq!(rows[2][..2], ["/films", "films_green"]);
    assert_eq!(rows[2][4], "25.0%");
    assert_eq!(rows[3][..2], ["/ratings", "ratings"]);
    assert_eq!(rows[3][4], "100.0%");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_matching_prefix_wins() {
    let v1 = Backend::echo("v1").await;
    let v2 = Backend::echo("v2").await;
    let default = Backend::echo("web").await;
    let proxy = ProxyProcess::start(&[
        ("COLORS", "web,api,api_v2"),
        ("WEB", &default.url()),
        ("API", &v1.url()),
        ("API_V2", &v2.url()),
        ("API_PREFIX", "/api"),
        ("API_V2_PREFIX", "/api/v2"),
    ]);
    let client = client();
    for (path, color) in [
        ("/api/v2/users", "api_v2"),
        ("/api/v2", "api_v2"),
        ("/api/v2x", "api"),
        ("/api/v1", "api"),
        ("/apiary", "web"),
        ("/", "web"),
    ] {
        assert_eq!(
            color_of(&get(&client, &proxy.url(path)).await),
            color,
            "{path}"
        );
    }
}

#[test]
fn canary_settings_are_validated() {
    for (env, needles) in [
        (
            vec![("BLUE", "http://a"), ("BLUE_PREFIX", "films")],
            vec!["BLUE_PREFIX=\"films\"", "starting with /"],
        ),
        (
            vec![("STICKY", "sometimes")],
            vec!["STICKY=\"sometimes\"", "header:<Name>"],
        ),
        (vec![("STICKY", "header:")], vec!["STICKY=\"header:\""]),
        (
            vec![("STICKY_COOKIE", "a b")],
            vec!["STICKY_COOKIE=\"a b\""],
        ),
        (
            vec![("OVERRIDE_HEADER", "X Color")],
            vec!["OVERRIDE_HEADER=\"X Color\""],
        ),
        (
            vec![
                ("BLUE", "http://a"),
                ("GREEN", "http://b"),
                ("GREEN_PREFIX", "/films"),
                ("GREEN_WEIGHT", "0"),
            ],
            vec!["GREEN_WEIGHT=\"0\"", "route /films"],
        ),
    ] {
        let (status, _, stderr) = run(&["check"], &env);
        assert_eq!(status.code(), Some(1), "{env:?}");
        for needle in needles {
            assert!(stderr.contains(needle), "{needle} not in {stderr}");
        }
    }
}
