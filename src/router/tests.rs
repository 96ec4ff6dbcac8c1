//! The router's decisions without a socket: fan-out, overlaps, No Local,
//! retained messages at SUBSCRIBE, shared groups, counts.

use super::probe::{handle, Probe};
use super::*;

fn router() -> Router {
    Router::new(true, None, RetainedStore::default())
}

fn options(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..Default::default()
    }
}

fn subscribe(router: &Router, probe: &Arc<Probe>, filter: &str, qos: QoS, id: u32) -> bool {
    router.subscribe(
        &handle(probe),
        filter,
        None,
        options(qos),
        NonZeroU32::new(id),
        false,
    )
}

fn message(topic: &str, qos: QoS, retain: bool) -> Message {
    Message::new(topic.to_string(), "x", qos, retain)
}

/// Overlapping subscriptions of one session: one copy, at the highest
/// granted QoS, with every subscription identifier ([MQTT-3.3.4-3]).
#[test]
fn overlapping_subscriptions_give_one_copy() {
    let r = router();
    let p = Probe::new("p");
    subscribe(&r, &p, "a/+", QoS::AtMostOnce, 1);
    subscribe(&r, &p, "a/#", QoS::AtLeastOnce, 2);
    let outcome = r.publish(message("a/b", QoS::ExactlyOnce, false));
    assert_eq!((outcome.matched, outcome.dropped), (1, 0));
    let got = p.got.lock();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
    let mut ids: Vec<u32> = got[0].subscription_ids.iter().map(|i| i.get()).collect();
    ids.sort();
    assert_eq!(ids, [1, 2]);
}

#[test]
fn no_local_skips_the_publishers_own_session() {
    let r = router();
    let (me, other) = (Probe::new("me"), Probe::new("other"));
    let no_local = SubscriptionOptions {
        no_local: true,
        ..options(QoS::AtMostOnce)
    };
    r.subscribe(&handle(&me), "t", None, no_local, None, false);
    r.subscribe(&handle(&other), "t", None, no_local, None, false);
    let mut m = message("t", QoS::AtMostOnce, false);
    m.publisher = Some("me".into());
    r.publish(m);
    assert!(me.topics().is_empty());
    assert_eq!(other.topics(), ["t"]);
}

#[test]
fn a_retained_message_goes_to_later_subscribers_with_the_retain_flag() {
    let r = router();
    r.publish(message("r/1", QoS::AtLeastOnce, true));
    r.publish(message("r/2", QoS::AtMostOnce, true));
    let p = Probe::new("p");
    subscribe(&r, &p, "r/+", QoS::AtLeastOnce, 0);
    let mut got: Vec<(String, QoS, bool)> = p
        .got
        .lock()
        .iter()
        .map(|d| (d.message.topic.to_string(), d.qos, d.retain))
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [
            ("r/1".to_string(), QoS::AtLeastOnce, true),
            ("r/2".to_string(), QoS::AtMostOnce, true)
        ]
    );
    // A live retained publish is not flagged without Retain As Published.
    r.publish(message("r/1", QoS::AtMostOnce, true));
    assert!(!p.got.lock().last().is_some_and(|d| d.retain));
}

#[test]
fn retain_handling_1_sends_retained_only_for_a_new_subscription() {
    let r = router();
    r.publish(message("r", QoS::AtMostOnce, true));
    let p = Probe::new("p");
    let new_only = SubscriptionOptions {
        retain_handling: RetainHandling::AtSubscribeNew,
        ..options(QoS::AtMostOnce)
    };
    assert!(!r.subscribe(&handle(&p), "r", None, new_only, None, false));
    assert!(r.subscribe(&handle(&p), "r", None, new_only, None, false));
    assert_eq!(p.topics(), ["r"]);
}

#[test]
fn shared_subscriptions_get_no_retained_messages_and_one_copy() {
    let r = router();
    r.publish(message("s/1", QoS::AtMostOnce, true));
    let (a, b) = (Probe::new("a"), Probe::new("b"));
    let group = SharedFilter {
        group: "g",
        filter: "s/+",
    };
    for p in [&a, &b] {
        r.subscribe(
            &handle(p),
            "$share/g/s/+",
            Some(&group),
            options(QoS::AtMostOnce),
            None,
            false,
        );
    }
    assert!(a.topics().is_empty() && b.topics().is_empty());
    let outcome = r.publish(message("s/1", QoS::AtMostOnce, false));
    assert_eq!(outcome.matched, 1);
    assert_eq!(a.topics().len() + b.topics().len(), 1);
}

#[test]
fn subscription_count_follows_subscribe_and_unsubscribe() {
    let r = router();
    let p = Probe::new("p");
    subscribe(&r, &p, "a", QoS::AtMostOnce, 0);
    subscribe(&r, &p, "a", QoS::AtLeastOnce, 0);
    subscribe(&r, &p, "b/#", QoS::AtMostOnce, 0);
    assert_eq!(r.subscription_count(), 2);
    assert!(r.unsubscribe(&handle(&p), "a", None));
    assert!(!r.unsubscribe(&handle(&p), "a", None));
    assert_eq!(r.subscription_count(), 1);
    r.publish(message("a", QoS::AtMostOnce, false));
    assert!(p.topics().is_empty());
}

#[test]
fn an_empty_retained_payload_clears_the_topic() {
    let r = router();
    r.publish(message("r", QoS::AtMostOnce, true));
    r.publish(Message::new("r", "", QoS::AtMostOnce, true));
    let p = Probe::new("p");
    subscribe(&r, &p, "r", QoS::AtMostOnce, 0);
    assert!(p.topics().is_empty());
}
