//! The proxy's promise during a switch: no request lost, no new request on
//! the old color after the swap returns, in-flight requests and WebSockets
//! held by the drain (and cut at its deadline).

mod proxy_support;

use bg_proxy::Color;
use bg_tests::load::Load;
use bg_tests::wait::eventually;
use bg_tests::websample::Websample;
use futures_util::{SinkExt, StreamExt};
use proxy_support::{backend, TestProxy, SECS_5};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_switches_under_keepalive_load_lose_nothing_and_never_look_back() {
    let blue = Websample::new().version("v1").spawn().await;
    let green = Websample::new().version("v2").spawn().await;
    let p = TestProxy::default().await;
    p.route(
        vec![backend("blue-1", blue.addr(), Color::Blue), backend("green-1", green.addr(), Color::Green)],
        Color::Blue,
    );

    let load =
        Load::keepalive(16).target(p.addr).record_requests().max_duration(Duration::from_secs(60)).start();
    eventually("load is flowing", SECS_5, || load.completed() >= 200).await;

    // (called at, returned at, the version of the new color)
    let mut switches: Vec<(Instant, Instant, &str)> = Vec::new();
    for i in 0..50 {
        let (color, version) = if i % 2 == 0 { (Color::Green, "v2") } else { (Color::Blue, "v1") };
        let called = Instant::now();
        p.switch_to(color);
        switches.push((called, Instant::now(), version));
        let seen = load.completed();
        eventually("requests flow after the switch", SECS_5, || load.completed() >= seen + 64).await;
    }
    let report = load.stop().await;

    assert_eq!(report.failed, 0, "failures: {:?}", report.errors);
    assert!(report.ok >= 50 * 64, "only {} requests", report.ok);
    assert!(report.version("v1") > 0 && report.version("v2") > 0);
    // A request started after switch k returned must get switch k's
    // color, unless it was still running when switch k+1 was called (then
    // the later color is right too).
    let first = switches[0].1;
    let mut checked = 0;
    for r in report.records.iter().filter(|r| r.started > first) {
        let idx = switches.partition_point(|(_, returned, _)| *returned < r.started) - 1;
        let (_, returned, want) = switches[idx];
        let got = r.version.as_deref().unwrap_or("none");
        let later_ok = switches[idx + 1..]
            .iter()
            .take_while(|(called, _, _)| *called < r.finished)
            .any(|(_, _, v)| *v == got);
        assert!(
            got == want || later_ok,
            "a request started {:?} after switch #{idx} returned got {got}, not {want}",
            r.started - returned
        );
        if got == want && !later_ok {
            checked += 1;
        }
    }
    assert!(checked >= 50 * 32, "checked only {checked} requests");

    let stats = p.proxy.stats();
    assert_eq!(stats.switches, 51);
    assert_eq!(stats.blue.responses[4] + stats.green.responses[4], 0);
    assert_eq!(
        stats.blue.requests + stats.green.requests,
        report.total(),
        "proxy and client disagree on the number of requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_in_flight_finishes_on_the_old_color_and_the_drain_waits_for_it() {
    let blue = Websample::new().version("v1").spawn().await;
    let green = Websample::new().version("v2").spawn().await;
    let p = TestProxy::default().await;
    p.route(
        vec![backend("blue-1", blue.addr(), Color::Blue), backend("green-1", green.addr(), Color::Green)],
        Color::Blue,
    );
    // Warm a pooled connection to blue so the drain has one to close.
    assert_eq!(p.get("/").await.version(), "v1");

    let addr = p.addr;
    let slow = tokio::spawn(async move { proxy_support::get(addr, "/sleep/2", &[]).await });
    eventually("the slow request is in flight", SECS_5, || {
        p.proxy.inflight(&"blue-1".into()) == 1 && blue.logged("sleep-start")
    })
    .await;

    p.switch_to(Color::Green);
    assert_eq!(p.get("/").await.version(), "v2", "new requests go to green");
    let report = p.proxy.drain(&["blue-1".into()], Duration::from_secs(10)).await;

    assert_eq!(report.cut, 0, "{report:?}");
    assert!(report.finished >= 1, "{report:?}");
    assert!(!report.timed_out, "{report:?}");
    assert!(
        report.elapsed >= Duration::from_millis(1500),
        "the drain returned before the slow request ended: {report:?}"
    );
    let answer = slow.await.expect("slow request task");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "v1\n");
    assert_eq!(p.proxy.inflight(&"blue-1".into()), 0);
    assert_eq!(p.proxy.idle_connections(&"blue-1".into()), 0);
    assert!(blue.logged("sleep-done"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_on_the_old_color_lives_through_the_drain_and_is_cut_at_its_deadline() {
    let blue = Websample::new().version("v1").spawn().await;
    let green = Websample::new().version("v2").spawn().await;
    let p = TestProxy::default().await;
    p.route(
        vec![backend("blue-1", blue.addr(), Color::Blue), backend("green-1", green.addr(), Color::Green)],
        Color::Blue,
    );

    let url = format!("ws://{}/ws", p.addr);
    let (mut old, _) = tokio_tungstenite::connect_async(&url).await.expect("websocket through the proxy");
    assert_eq!(next_text(&mut old).await, "hello v1");
    eventually("the tunnel is counted", SECS_5, || {
        let s = p.proxy.stats();
        s.blue.upgraded == 1 && s.blue.inflight == 1
    })
    .await;

    p.switch_to(Color::Green);
    let proxy = p.proxy.clone();
    let drain_timeout = Duration::from_millis(1500);
    let drain = tokio::spawn(async move { proxy.drain(&["blue-1".into()], drain_timeout).await });

    // During the drain the old socket still echoes.
    old.send(Message::text("during the drain")).await.expect("send on the old socket");
    assert_eq!(next_text(&mut old).await, "during the drain");
    assert!(!drain.is_finished(), "the drain must hold the websocket");

    // A new socket lands on green.
    let (mut new, _) = tokio_tungstenite::connect_async(&url).await.expect("second websocket");
    assert_eq!(next_text(&mut new).await, "hello v2");

    let report = drain.await.expect("drain task");
    assert!(report.timed_out, "{report:?}");
    assert!(report.cut >= 1, "{report:?}");
    assert!(report.elapsed >= Duration::from_millis(1400), "{report:?}");
    let stats = p.proxy.stats();
    assert_eq!((stats.drains_cut, stats.cut), (1, report.cut), "the proxy counts the cut drain");

    // The old socket is closed now: the next read ends, soon.
    let end = tokio::time::timeout(SECS_5, async {
        loop {
            match old.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the old websocket stayed open after the cut");
    eventually("blue has nothing in flight", SECS_5, || {
        p.proxy.inflight(&"blue-1".into()) == 0 && p.proxy.stats().blue.upgraded == 0
    })
    .await;

    // The new one still works.
    new.send(Message::text("after")).await.expect("send");
    assert_eq!(next_text(&mut new).await, "after");
    assert_eq!(p.proxy.stats().green.upgraded, 1);
}

async fn next_text<S>(ws: &mut S) -> String
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let msg = tokio::time::timeout(SECS_5, ws.next())
        .await
        .expect("a message within 5s")
        .expect("the socket is open")
        .expect("a valid message");
    msg.into_text().expect("a text message").to_string()
}
