//! Replies (docs/contract.md §15): a customer's tap in the Intercom or
//! HubSpot stand-in comes back as one `replied` event for the right job,
//! through the worker's webhook receiver, the replies queue, the prompt
//! stream and the matcher — the real broker throughout.

use std::time::{Duration, Instant};

use octopods_sandbox::inbox::{Hubspot, HubspotConfig, Intercom, IntercomConfig, intercom::Tap};
use serde_json::{Value, json};

use crate::helpers::*;

const IC_SECRET: &str = "ic-client-secret";
const HS_SECRET: &str = "hs-client-secret";

/// A worker with two reply-tracking channels: `shop-ic` (Intercom, with
/// status polls, so conversations are known) and `shop-hs` (HubSpot).
struct Inboxes {
    app: TestApp,
    intercom: Intercom,
    hubspot: Hubspot,
    _secrets: tempfile::TempDir,
}

async fn spawn_inboxes(test: &str, window: &str, unmatched_events: bool) -> Inboxes {
    spawn_inboxes_with(test, window, unmatched_events, "").await
}

/// [`spawn_inboxes`] with `extra` TOML appended to the config.
async fn spawn_inboxes_with(
    test: &str,
    window: &str,
    unmatched_events: bool,
    extra: &str,
) -> Inboxes {
    let intercom = Intercom::start(IntercomConfig {
        app_id: "ws-ic".into(),
        client_secret: IC_SECRET.into(),
        token: "ic-token".into(),
        webhook_url: "http://127.0.0.1:9/hooks/intercom".into(),
    })
    .await
    .expect("intercom stand-in");
    let hubspot = Hubspot::start(HubspotConfig {
        portal_id: 62515,
        app_id: 4242,
        client_secret: HS_SECRET.into(),
        token: "hs-token".into(),
        webhook_url: "http://127.0.0.1:9/hooks/hubspot".into(),
    })
    .await
    .expect("hubspot stand-in");
    let secrets = tempfile::tempdir().expect("tempdir");
    let file = |name: &str, value: &str| {
        let path = secrets.path().join(name);
        std::fs::write(&path, value).expect("write secret");
        path.display().to_string()
    };
    let mut ic = TestChannel::new("shop-ic");
    ic.track_status = true;
    ic.replies = Some(format!(
        "platform = \"intercom\"\nworkspace = \"ws-ic\"\nsecret_file = \"{}\"\ntoken_file = \"{}\"\n\
         api_url = \"{}\"\nwindow = \"{window}\"\nunmatched_events = {unmatched_events}\n",
        file("ic-secret", IC_SECRET),
        file("ic-token", "ic-token"),
        intercom.url()
    ));
    let mut hs = TestChannel::new("shop-hs");
    hs.replies = Some(format!(
        "platform = \"hubspot\"\nworkspace = \"62515\"\nsecret_file = \"{}\"\ntoken_file = \"{}\"\n\
         api_url = \"{}\"\nwindow = \"{window}\"\n",
        file("hs-secret", HS_SECRET),
        file("hs-token", "hs-token"),
        hubspot.url()
    ));
    let app = spawn_with(
        test,
        Options {
            channels: vec![ic, hs],
            extra_toml: format!(
                "{TEST_RETRY}[status]\nschedule = [\"100ms\", \"200ms\"]\nhorizon = \"1m\"\n\
                 [replies]\nlisten = \"127.0.0.1:0\"\nlookup_timeout = \"30s\"\n{extra}"
            ),
            sandbox_status_after: (Duration::from_secs(3600), Duration::from_secs(7200)),
            ..Options::default()
        },
    )
    .await;
    app.sandbox.open_conversations_in(&intercom);
    let inboxes = Inboxes {
        app,
        intercom,
        hubspot,
        _secrets: secrets,
    };
    inboxes.point_webhooks();
    inboxes
}

impl Inboxes {
    fn hooks(&self, platform: &str) -> String {
        let addr = self.app.replies.expect("the worker receives replies");
        format!("http://{addr}/hooks/{platform}")
    }

    /// Points both stand-ins at the worker (again, after a restart).
    fn point_webhooks(&self) {
        self.intercom.set_webhook_url(&self.hooks("intercom"));
        self.hubspot.set_webhook_url(&self.hooks("hubspot"));
    }

    /// Publishes a delivery confirmation to `phone` on `channel` and waits
    /// for its `sent` event.
    async fn prompt(&self, channel: &str, job_id: &str, phone: &str) {
        let mut job = button_job(job_id);
        job["destination_phone"] = json!(phone);
        job["metadata"] = json!({"order_id": job_id});
        let body = serde_json::to_vec(&job).expect("json");
        self.app
            .publish_bytes(channel, &body, Default::default())
            .await;
        let sent = self.next("sent").await;
        assert_eq!(sent["job_id"], job_id);
    }

    /// The next event of `kind`, skipping the others (status events). A
    /// wait that fails says how far the worker got (webhooks answered,
    /// lookups, outcomes): once, on RabbitMQ 4.0.5 in CI, a tap's `replied`
    /// never came, and nothing said where it stopped.
    async fn next(&self, kind: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(e) = self.app.try_next_event().await {
                if e["event"] == kind {
                    return e;
                }
                continue;
            }
            if Instant::now() > deadline {
                let metrics = self.app.metrics().await;
                let seen: Vec<&str> = metrics
                    .lines()
                    .filter(|l| {
                        (l.starts_with("octopods_repl") && !l.contains("_bucket"))
                            || l.starts_with("octopods_jobs_completed_total")
                    })
                    .filter(|l| !l.ends_with(" 0"))
                    .collect();
                panic!(
                    "no {kind} event within 15 s; the worker's reply series:\n{}",
                    seen.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the status poll has put `job`'s conversation in the
    /// prompt stream (the `conversation` record, read straight off it).
    async fn conversation_recorded(&self) {
        let stream = self.app.queue("prompts");
        eventually(Duration::from_secs(15), "a conversation record", || async {
            let records = read_stream(&stream).await;
            records
                .iter()
                .any(|r| r["record"] == "conversation")
                .then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn an_intercom_tap_comes_back_as_one_replied_event_for_the_right_job() {
    let t = spawn_inboxes("reply-intercom", "7d", false).await;
    t.prompt("shop-ic", "order-1", "+15550001111").await;
    t.prompt("shop-ic", "order-2", "+15550002222").await;
    t.conversation_recorded().await;
    // Delivered twice, as Intercom may: one event.
    let (delivered, part) = t
        .intercom
        .tap(
            "+15550001111",
            "Not yet",
            Tap {
                twice: true,
                ..Tap::default()
            },
        )
        .await;
    assert!(delivered.ok(), "{delivered:?}");
    let replied = t.next("replied").await;
    assert_eq!(replied["job_id"], "order-1");
    assert_eq!(replied["channel"], "shop-ic");
    assert_eq!(
        replied["option"],
        json!({"id": "not-yet", "title": "Not yet"})
    );
    assert_eq!(replied["matched_by"], "conversation");
    assert_eq!(replied["reply"]["platform"], "intercom");
    assert_eq!(replied["reply"]["id"], format!("intercom:{part}"));
    assert_eq!(replied["metadata"], json!({"order_id": "order-1"}));
    assert!(
        replied["message_id"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    // The other customer answers, in a new conversation, in plain text and
    // another case: matched by phone. The matcher takes messages in order,
    // so had the duplicate above published, it would come first.
    t.intercom
        .tap(
            "+15550002222",
            "YES,  received",
            Tap {
                new_conversation: true,
                plain: true,
                ..Tap::default()
            },
        )
        .await;
    let second = t.next("replied").await;
    assert_eq!(second["job_id"], "order-2");
    assert_eq!(second["option"]["id"], "yes");
    assert_eq!(second["matched_by"], "phone");
    // A second tap on another option is a second event; the shop takes the latest.
    t.intercom
        .tap("+15550001111", "There's a problem", Tap::default())
        .await;
    let third = t.next("replied").await;
    assert_eq!(
        (third["job_id"].as_str(), third["option"]["id"].as_str()),
        (Some("order-1"), Some("problem"))
    );
    assert_eq!(
        t.app
            .metric("octopods_replies_total{channel=\"shop-ic\",outcome=\"matched\"}")
            .await,
        3.0
    );
    t.app.shutdown().await;
}

#[tokio::test]
async fn a_hubspot_tap_is_looked_up_through_failures_and_the_shops_own_message_is_not_a_reply() {
    let t = spawn_inboxes("reply-hubspot", "7d", false).await;
    t.prompt("shop-hs", "order-9", "+15550009999").await;
    // The prompt as HubSpot's inbox shows it: an outgoing message, whose
    // webhook fires too.
    let (out, _) = t
        .hubspot
        .outgoing("+15550009999", "Did your order arrive today?")
        .await;
    assert!(out.ok(), "{out:?}");
    // The API fails three times; the lookup waits in the delay queue and comes back.
    t.hubspot.fail_lookups(3);
    let (delivered, message) = t.hubspot.tap("+15550009999", "Yes, received").await;
    assert!(delivered.ok(), "{delivered:?}");
    let replied = t.next("replied").await;
    assert_eq!(replied["job_id"], "order-9");
    assert_eq!(replied["option"]["id"], "yes");
    assert_eq!(replied["matched_by"], "phone");
    assert_eq!(replied["reply"]["id"], format!("hubspot:{message}"));
    assert!(
        t.app
            .metric("octopods_reply_lookups_total{platform=\"hubspot\",status=\"503\"}")
            .await
            >= 3.0
    );
    assert_eq!(
        t.app.try_next_event().await,
        None,
        "the shop's own message published nothing"
    );
    t.app.shutdown().await;
}

#[tokio::test]
async fn free_text_expired_and_ambiguous_answers_publish_no_guess() {
    let t = spawn_inboxes("reply-edges", "7d", true).await;
    // Two open prompts to one phone with the same titles: ambiguous.
    t.prompt("shop-ic", "order-a", "+15550003333").await;
    t.prompt("shop-ic", "order-b", "+15550003333").await;
    t.intercom
        .tap(
            "+15550003333",
            "yes, RECEIVED",
            Tap {
                new_conversation: true,
                ..Tap::default()
            },
        )
        .await;
    let ambiguous = t.next("reply_ambiguous").await;
    assert_eq!(ambiguous["job_ids"], json!(["order-a", "order-b"]));
    assert_eq!(ambiguous["title"], "Yes, received");
    // Free text: not an option. The channel opted in to reply_unmatched events.
    t.intercom
        .tap(
            "+15550003333",
            "<b>Where</b> is my \u{202e}parcel?",
            Tap::default(),
        )
        .await;
    let unmatched = t.next("reply_unmatched").await;
    // The customer's text as they wrote it (the `<b>` was typed, not markup).
    assert_eq!(unmatched["text"], "<b>Where</b> is my \u{202e}parcel?");
    // A phone with no prompt at all.
    t.intercom
        .tap("+15550004444", "Yes, received", Tap::default())
        .await;
    eventually(Duration::from_secs(15), "no_prompt counted", || async {
        let n = t
            .app
            .metric("octopods_replies_total{channel=\"shop-ic\",outcome=\"no_prompt\"}")
            .await;
        (n >= 1.0).then_some(())
    })
    .await;
    assert_eq!(
        t.app
            .metric("octopods_replies_total{channel=\"shop-ic\",outcome=\"matched\"}")
            .await,
        0.0
    );
    t.app.shutdown().await;
}

#[tokio::test]
async fn forged_stale_huge_and_deep_webhooks_are_refused_and_keep_nothing() {
    let t = spawn_inboxes("reply-hostile", "7d", false).await;
    t.prompt("shop-hs", "order-h", "+15550005555").await;
    let http = reqwest::Client::new();
    let ping =
        br#"{"type":"notification_event","topic":"ping","app_id":"ws-ic","data":{"item":{}}}"#
            .to_vec();
    // Intercom: a wrong and a missing signature.
    let forged = t
        .intercom
        .deliver_raw(ping.clone(), Some(format!("sha1={}", "0".repeat(40))))
        .await;
    assert_eq!(forged.status, Some(401));
    let missing = http
        .post(t.hooks("intercom"))
        .body(ping.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(missing.status().as_u16(), 401);
    assert_eq!(t.intercom.deliver_raw(ping, None).await.status, Some(200));
    // HubSpot: a genuine request replayed six minutes later, and another portal's secret.
    let body = br#"[]"#.to_vec();
    let old = t.hubspot.signed(
        &body,
        octopods_sandbox::inbox::hubspot::now_ms() - 6 * 60 * 1000,
    );
    assert_eq!(
        t.hubspot.deliver_raw(body.clone(), Some(old)).await.status,
        Some(401)
    );
    // 10 MB, signed: refused by size before anything is read.
    let huge = vec![b' '; 10 * 1024 * 1024];
    assert_eq!(t.hubspot.deliver_raw(huge, None).await.status, Some(413));
    // Deep JSON, signed: a 400, and the worker serves on.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes();
    assert_eq!(t.hubspot.deliver_raw(deep, None).await.status, Some(400));
    // HTML and bidi in a reply do not make it match, nor crash anything.
    assert!(
        t.hubspot
            .tap("+15550005555", "<script>alert(1)</script>\u{2067}Yes")
            .await
            .0
            .ok()
    );
    // And a real tap still comes back.
    assert!(t.hubspot.tap("+1 (555) 000-5555", "Not yet").await.0.ok());
    let replied = t.next("replied").await;
    assert_eq!(
        (replied["job_id"].as_str(), replied["option"]["id"].as_str()),
        (Some("order-h"), Some("not-yet"))
    );
    assert_eq!(
        t.app
            .metric("octopods_replies_total{channel=\"unknown\",outcome=\"bad_signature\"}")
            .await,
        3.0
    );
    assert_eq!(
        t.app
            .metric("octopods_replies_total{channel=\"shop-hs\",outcome=\"unmatched\"}")
            .await,
        1.0
    );
    t.app.shutdown().await;
}

#[tokio::test]
async fn titles_that_compare_equal_are_refused_on_a_reply_tracking_channel() {
    let t = spawn_inboxes("reply-titles", "7d", false).await;
    let mut job = button_job("order-dup");
    job["waba_interactive_message"]["action"]["buttons"] = json!([
        {"type": "reply", "reply": {"id": "a", "title": "Yes"}},
        {"type": "reply", "reply": {"id": "b", "title": " YES"}}
    ]);
    let body = serde_json::to_vec(&job).expect("json");
    t.app
        .publish_bytes("shop-ic", &body, Default::default())
        .await;
    let dead = t.next("dead_lettered").await;
    assert_eq!(dead["reason"], "validation");
    assert!(
        dead["error"]
            .as_str()
            .is_some_and(|e| e.contains("same answer")),
        "{dead}"
    );
    t.app.shutdown().await;
}

#[tokio::test]
async fn a_restarted_worker_rebuilds_its_prompts_from_the_broker_alone() {
    let mut t = spawn_inboxes("reply-restart", "7d", false).await;
    t.prompt("shop-hs", "order-r", "+15550006666").await;
    t.app.stop_worker().await;
    t.app.start_worker().await;
    t.point_webhooks();
    assert!(
        t.hubspot
            .tap("+15550006666", "There's a problem")
            .await
            .0
            .ok()
    );
    let replied = t.next("replied").await;
    assert_eq!(
        (replied["job_id"].as_str(), replied["option"]["id"].as_str()),
        (Some("order-r"), Some("problem"))
    );
    t.app.shutdown().await;
}

#[tokio::test]
async fn a_matcher_killed_mid_lookup_leaves_its_reply_to_the_next_replica_and_one_event_comes() {
    let mut t = spawn_inboxes("reply-kill", "7d", false).await;
    t.prompt("shop-hs", "order-k", "+15550007777").await;
    // Two replicas, each its own process; the first to subscribe matches.
    t.app.stop_worker().await;
    let mut first = BinaryWorker::start(&t.app.config_path).await;
    eventually(
        Duration::from_secs(15),
        "the first replica matching",
        || async { first.tail(100).contains("matching replies").then_some(()) },
    )
    .await;
    let second = BinaryWorker::start(&t.app.config_path).await;
    let hooks = second
        .field("hooks")
        .expect("the replica logs its hooks address");
    t.hubspot
        .set_webhook_url(&format!("http://{hooks}/hooks/hubspot"));
    // The first replica's lookup never answers (nor times out within the
    // test: 30 s); it is killed while it waits.
    t.hubspot.hang_lookups(1);
    let asked = t.hubspot.lookups_asked();
    assert!(t.hubspot.tap("+15550007777", "Not yet").await.0.ok());
    eventually(
        Duration::from_secs(15),
        "the first replica's lookup",
        || async { (t.hubspot.lookups_asked() > asked).then_some(()) },
    )
    .await;
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10)).await;
    let replied = t.next("replied").await;
    assert_eq!(
        (replied["job_id"].as_str(), replied["option"]["id"].as_str()),
        (Some("order-k"), Some("not-yet"))
    );
    // Another customer's answer comes next: the reply above came back once.
    t.prompt("shop-hs", "order-s", "+15550008888").await;
    assert!(t.hubspot.tap("+15550008888", "Yes, received").await.0.ok());
    let next = t.next("replied").await;
    assert_eq!(next["job_id"], "order-s");
    // Neither the customer's text nor a phone reached the log.
    for log in [first.tail(100_000), second.tail(100_000)] {
        assert!(
            !log.contains("Not yet") && !log.contains("Yes, received"),
            "{log}"
        );
        assert!(
            !log.contains("5550007777") && !log.contains("5550008888"),
            "{log}"
        );
    }
    drop(second);
    t.app.shutdown().await;
}

#[tokio::test]
async fn the_console_shows_the_latest_replies_and_what_matched_nothing_without_the_customers_text()
{
    use crate::console::{VIC, http_login};
    let users = format!(
        "[console]\nlisten = \"127.0.0.1:0\"\n[[console.users]]\nname = \"{}\"\nrole = \"viewer\"\npassword_hash = \"{}\"\n",
        VIC.0,
        octopods_worker::ops::console::hash_password(VIC.1).expect("hash")
    );
    let t = spawn_inboxes_with("reply-console", "7d", false, &users).await;
    t.prompt("shop-hs", "order-c", "+15550001234").await;
    assert!(t.hubspot.tap("+15550001234", "Not yet").await.0.ok());
    assert_eq!(t.next("replied").await["job_id"], "order-c");
    assert!(
        t.hubspot
            .tap("+15550001234", "call me at +4915112345678")
            .await
            .0
            .ok()
    );
    eventually(Duration::from_secs(15), "unmatched counted", || async {
        let n = t
            .app
            .metric("octopods_replies_total{channel=\"shop-hs\",outcome=\"unmatched\"}")
            .await;
        (n >= 1.0).then_some(())
    })
    .await;
    let console = octopods_worker::ops::console::Console::build(t.app.config.clone())
        .await
        .expect("console builds");
    let base = format!("http://{}", console.addr());
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(console.run(stop.clone()));
    let (client, _) = http_login(&base, VIC).await;
    let page = client
        .get(format!("{base}/replies"))
        .send()
        .await
        .expect("replies page")
        .text()
        .await
        .expect("text");
    let row = &page[page
        .find("data-channel=\"shop-hs\"")
        .expect("the channel's row")..];
    let cell = |o: &str| {
        let at = row.find(&format!("data-outcome=\"{o}\">")).expect("cell") + o.len() + 16;
        row[at..row[at..].find('<').map_or(at, |e| at + e)].to_owned()
    };
    assert_eq!(cell("matched"), "1", "{page}");
    assert_eq!(cell("unmatched"), "1", "{page}");
    assert!(
        page.contains("order-c") && page.contains("Not yet"),
        "{page}"
    );
    assert!(
        !page.contains("call me"),
        "the customer's text is not shown"
    );
    assert!(
        !page.contains("4915112345678") && !page.contains("5550001234"),
        "no phone"
    );
    stop.cancel();
    t.app.shutdown().await;
}
