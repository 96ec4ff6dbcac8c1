//! The chat layer's decisions without a socket: one `seq` per room, de-dup
//! by (room, sender, msg-id), and room messages from other nodes taken in
//! once and in order. Delivery without a group commit is immediate here
//! (`Chat::open` with no commit), so the member sees each decision at once.

use parking_lot::Mutex;

use super::*;
use crate::protocol::SubscriptionOptions;
use crate::router::{Delivery, RetainedStore, Subscriber};

/// A member subscribed to every room: records the room and `seq` of each
/// delivery.
#[derive(Default)]
struct Member {
    got: Mutex<Vec<(String, u64)>>,
}

impl Subscriber for Member {
    fn client_id(&self) -> &str {
        "member"
    }

    fn deliver(&self, delivery: Delivery) -> bool {
        let tag = delivery
            .message
            .room
            .as_ref()
            .map(|t| (t.room.to_string(), t.seq));
        self.got.lock().push(tag.unwrap_or_default());
        true
    }

    fn may_read_topic(&self, _: &str) -> bool {
        true
    }

    fn may_read_acl(&self, _: &str) -> bool {
        true
    }

    fn is_online(&self) -> bool {
        true
    }
}

/// A one-node chat in memory, its router, and a member of every room.
fn chat() -> (Chat, Arc<Member>) {
    let config = Config::default();
    let budgets = Arc::new(Budgets::new(crate::budget::Limits::from_config(&config)));
    let router = Arc::new(Router::new(true, None, RetainedStore::default()));
    let chat = Chat::open(
        &config,
        router.clone(),
        None,
        None,
        Replication::default(),
        budgets,
    )
    .unwrap();
    let member = Arc::new(Member::default());
    let handle: Arc<dyn Subscriber> = member.clone();
    let options = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        ..Default::default()
    };
    router.subscribe(&handle, "rooms/+/msg/+", None, options, None, false);
    (chat, member)
}

fn post<'a>(room: &'a str, sender: &'a str, msg_id: Option<&'a str>) -> Post<'a> {
    Post {
        room,
        sender,
        msg_id,
        payload: Bytes::from_static(b"hello"),
        qos: QoS::AtLeastOnce,
        user_properties: Vec::new(),
        publisher: None,
        received_at: None,
    }
}

fn got(member: &Member) -> Vec<(String, u64)> {
    member.got.lock().clone()
}

fn at(room: &str, seq: u64) -> (String, u64) {
    (room.to_string(), seq)
}

#[test]
fn each_room_counts_its_own_seq() {
    let (chat, member) = chat();
    assert_eq!(chat.post(post("a", "alice", None)).unwrap(), (1, true));
    assert_eq!(chat.post(post("a", "bob", None)).unwrap(), (2, true));
    assert_eq!(chat.post(post("b", "alice", None)).unwrap(), (1, true));
    assert_eq!(got(&member), vec![at("a", 1), at("a", 2), at("b", 1)]);
    assert_eq!(chat.rooms(), 2);
    assert_eq!(chat.counters.messages.get(), 3);
}

/// A retry with a known msg-id is acknowledged with the first `seq` and
/// neither stored nor delivered again; the same msg-id from another
/// sender, or in another room, is another message.
#[test]
fn a_known_msg_id_gets_its_first_seq_and_no_second_delivery() {
    let (chat, member) = chat();
    assert_eq!(chat.post(post("a", "alice", Some("m1"))).unwrap(), (1, true));
    assert_eq!(chat.post(post("a", "alice", Some("m1"))).unwrap(), (1, false));
    assert_eq!(chat.post(post("a", "bob", Some("m1"))).unwrap(), (2, true));
    assert_eq!(chat.post(post("b", "alice", Some("m1"))).unwrap(), (1, true));
    assert_eq!(got(&member), vec![at("a", 1), at("a", 2), at("b", 1)]);
    assert_eq!(chat.counters.duplicates.get(), 1);
    assert_eq!(chat.counters.messages.get(), 3);
}

#[test]
fn without_a_msg_id_every_post_is_new() {
    let (chat, member) = chat();
    assert_eq!(chat.post(post("a", "alice", None)).unwrap(), (1, true));
    assert_eq!(chat.post(post("a", "alice", None)).unwrap(), (2, true));
    assert_eq!(got(&member).len(), 2);
    assert_eq!(chat.counters.duplicates.get(), 0);
}

/// Cluster mode's inbound side: a `seq` already taken in is ignored, and
/// a msg-id stored twice by two nodes is kept and shown once (every node
/// makes the same choice, reading the room in the same order).
#[test]
fn a_replicated_message_is_taken_in_once() {
    let (chat, member) = chat();
    let record = |msg_id| post("a", "alice", Some(msg_id)).into_record();
    chat.apply_replicated("a", 5, record("m1"), None);
    chat.apply_replicated("a", 5, record("m1"), None);
    assert_eq!(chat.applied_seq("a"), 5);
    chat.apply_replicated("a", 6, record("m1"), None);
    assert_eq!(chat.counters.duplicates.get(), 1);
    chat.apply_replicated("a", 7, record("m2"), None);
    assert_eq!(got(&member), vec![at("a", 5), at("a", 7)]);
    assert_eq!(chat.applied_seq("a"), 7);
}

/// How many of `edits` (edit events of `room`) still carry a body.
fn edit_bodies_left(chat: &Chat, room: &str, edits: &[u64]) -> usize {
    edits
        .iter()
        .filter(|&&seq| {
            chat.log
                .stored(room, seq)
                .unwrap()
                .is_some_and(|entry| !entry.payload.is_empty())
        })
        .count()
}

/// A message edited more often than `room_max_edits_per_message` allows
/// (stored before the bound, or lowered since): its delete empties at
/// most that many edit bodies itself, on the thread of the request, and
/// queues the rest for the background steps, each of at most as many.
#[test]
fn a_delete_empties_a_bounded_number_of_edits_per_step() {
    let (mut chat, _member) = chat();
    let (seq, _) = chat.post(post("a", "alice", None)).unwrap();
    for _ in 0..10 {
        edit_message(&chat, seq);
    }
    let edits: Vec<u64> = (seq + 1..=seq + 10).collect();
    assert_eq!(edit_bodies_left(&chat, "a", &edits), 10);
    chat.max_edits = 4;
    let delete = lifecycle::Change::Delete { target: seq };
    chat.change("a", "alice", delete, true, QoS::AtLeastOnce, None)
        .unwrap();
    assert_eq!(
        edit_bodies_left(&chat, "a", &edits),
        6,
        "the delete itself empties `room_max_edits_per_message` edits, no more"
    );
    // The background steps: 4, then 2, then the queue is empty.
    for left in [2, 0] {
        assert!(chat.purge_edits().unwrap());
        assert_eq!(edit_bodies_left(&chat, "a", &edits), left);
    }
    assert!(!chat.purge_edits().unwrap());
    // A delete within the bound queues nothing.
    let (seq, _) = chat.post(post("a", "alice", None)).unwrap();
    edit_message(&chat, seq);
    let delete = lifecycle::Change::Delete { target: seq };
    chat.change("a", "alice", delete, true, QoS::AtLeastOnce, None)
        .unwrap();
    assert_eq!(edit_bodies_left(&chat, "a", &[seq + 1]), 0);
    assert!(!chat.purge_edits().unwrap());
}

fn edit_message(chat: &Chat, seq: u64) {
    let body = Bytes::from_static(b"edited");
    let change = lifecycle::Change::Edit { target: seq, body };
    chat.change("a", "alice", change, true, QoS::AtLeastOnce, None)
        .unwrap();
}

/// Upkeep forgets a room it finds empty, except one a post opened (or
/// found) and has not appended to yet: forgetting it would release the
/// opener's `max_rooms_per_user` charge while the post goes on into a
/// room nobody is charged for. A post that never appends keeps the room
/// one upkeep only.
#[test]
fn a_room_whose_first_post_is_on_its_way_outlives_one_upkeep() {
    let (chat, _member) = chat();
    let alice: Arc<str> = "alice".into();
    let forget = || -> Vec<String> {
        let forgotten = chat.log.forget_empty(|_| false);
        forgotten.iter().map(|r| r.name.to_string()).collect()
    };
    assert!(chat.log.open("a", &alice, 10, || true).is_ok());
    assert!(forget().is_empty(), "a is opened, its post not appended yet");
    assert_eq!(chat.post(post("a", "alice", None)).unwrap(), (1, true));
    assert!(chat.log.open("b", &alice, 10, || true).is_ok());
    assert!(forget().is_empty(), "a holds a message, b's post is on its way");
    assert_eq!(forget(), vec!["b"], "b's post never came");
    assert_eq!(chat.rooms(), 1);
}
