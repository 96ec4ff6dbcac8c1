//! The same contract checked against every store implementation.

use bytes::Bytes;

use super::*;

fn message(topic: &str, payload: &'static str) -> MessageRecord {
    MessageRecord {
        topic: topic.into(),
        payload: Bytes::from_static(payload.as_bytes()),
        qos: 1,
        retain: true,
        properties: None,
        expires_at_unix_ms: Some(1_900_000_000_000),
        publisher: Some("p".into()),
    }
}

fn queued(payload: &'static str) -> QueuedRecord {
    QueuedRecord {
        message: message("q", payload),
        qos: 1,
        retain: false,
        subscription_ids: vec![3],
        packet_id: None,
        released: false,
    }
}

fn contract(store: &dyn Store) {
    store.put_retained("a", Some(&message("a", "1"))).unwrap();
    store.put_retained("a", Some(&message("a", "2"))).unwrap();
    store.put_retained("b", Some(&message("b", "x"))).unwrap();
    store.put_retained("b", None).unwrap();
    assert_eq!(store.load_retained().unwrap(), vec![message("a", "2")]);

    let session = SessionRecord {
        expiry_secs: 60,
        ..Default::default()
    };
    store.put_session("c1", &session).unwrap();
    store.put_session("c10", &session).unwrap();
    let bodies: Vec<u64> = (0..6).map(|_| store.new_body_id()).collect();
    assert!(bodies.windows(2).all(|w| w[0] != w[1]), "body ids are new");
    for seq in [1, 2, 3] {
        store.put_message("c1", seq, bodies[0], queued("m")).unwrap();
    }
    store.put_message("c10", 1, bodies[1], queued("other")).unwrap();
    store.remove_message("c1", 2).unwrap();
    store.put_incoming_qos2("c1", 7).unwrap();
    store.flush().unwrap();
    let loaded = store.load_sessions().unwrap();
    let c1 = loaded.iter().find(|s| s.client_id == "c1").unwrap();
    assert_eq!(
        c1.messages.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![1, 3],
        "prefix must not leak c10"
    );
    assert_eq!(c1.incoming_qos2, vec![7]);
    // After a flush: an acknowledgement, and QoS 2 progress, of stored records.
    store.remove_message("c1", 1).unwrap();
    let mut progressed = queued("m");
    progressed.packet_id = Some(9);
    progressed.released = true;
    store
        .update_message("c1", 3, bodies[0], progressed.clone())
        .unwrap();
    store.put_message("c1", 4, bodies[2], queued("later")).unwrap();
    store.flush().unwrap();
    let loaded = store.load_sessions().unwrap();
    let c1 = loaded.iter().find(|s| s.client_id == "c1").unwrap();
    let read: Vec<_> = c1
        .messages
        .iter()
        .map(|(seq, r)| {
            (
                *seq,
                r.clone().with_body(store.load_body(r.body).unwrap().unwrap()),
            )
        })
        .collect();
    assert_eq!(read, vec![(3, progressed.clone()), (4, queued("later"))]);
    store.remove_message("c1", 3).unwrap();
    store.remove_message("c1", 4).unwrap();
    store.flush().unwrap();
    let loaded = store.load_sessions().unwrap();
    assert!(loaded
        .iter()
        .find(|s| s.client_id == "c1")
        .unwrap()
        .messages
        .is_empty());
    store.put_message("c1", 5, bodies[3], queued("kept")).unwrap();
    store.flush().unwrap();
    store.remove_session("c1").unwrap();
    let loaded = store.load_sessions().unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].messages.len(), 1);
}

/// A body is stored once for every record that names it, and goes with the
/// last of them: acknowledged before a flush, after one, or with its
/// session's removal.
fn bodies_are_shared(store: &dyn Store) {
    let session = SessionRecord {
        expiry_secs: 60,
        ..Default::default()
    };
    let shared = store.new_body_id();
    let early = store.new_body_id();
    for client in ["s1", "s2", "s3"] {
        store.put_session(client, &session).unwrap();
        store.put_message(client, 1, shared, queued("shared")).unwrap();
    }
    // Acknowledged by its only session before any flush: never kept.
    store.put_message("s1", 2, early, queued("early")).unwrap();
    store.remove_message("s1", 2).unwrap();
    store.flush().unwrap();
    assert_eq!(store.load_body(early).unwrap(), None);
    assert_eq!(store.load_body(shared).unwrap(), Some(queued("shared").message));
    store.remove_message("s1", 1).unwrap();
    store.flush().unwrap();
    assert!(
        store.load_body(shared).unwrap().is_some(),
        "s2 and s3 still name it"
    );
    store.remove_session("s2").unwrap();
    store.flush().unwrap();
    assert!(store.load_body(shared).unwrap().is_some(), "s3 still names it");
    let loaded = store.load_sessions().unwrap();
    let s3 = loaded.iter().find(|s| s.client_id == "s3").unwrap();
    assert_eq!(
        s3.messages.iter().map(|(_, r)| r.body).collect::<Vec<_>>(),
        vec![shared]
    );
    store.remove_message("s3", 1).unwrap();
    store.flush().unwrap();
    assert_eq!(
        store.load_body(shared).unwrap(),
        None,
        "the last reference took it"
    );
}

/// Room openers and forgetting: a forgotten room leaves no head, no
/// message and no opener, and raises the `seq` floor (never lowers it).
fn room_contract(store: &dyn Store) {
    let record = RoomRecord {
        ts_unix_ms: 1,
        sender: "ann".into(),
        msg_id: None,
        qos: 1,
        payload: Bytes::from_static(b"x"),
        user_properties: Vec::new(),
        prev: None,
        entry: None,
    };
    store.set_room_opener("r", "user:ann").unwrap();
    store.append_room("r", 7, &record).unwrap();
    store.set_room_opener("empty", "user:bob").unwrap();
    store.append_room("other", 1, &record).unwrap();
    let mut heads = store.room_heads().unwrap();
    heads.sort_by(|a, b| a.room.cmp(&b.room));
    let openers: Vec<_> = heads
        .iter()
        .map(|h| (h.room.as_str(), h.opener.as_deref(), h.last))
        .collect();
    assert_eq!(
        openers,
        vec![
            ("empty", Some("user:bob"), 0),
            ("other", None, 1),
            ("r", Some("user:ann"), 7)
        ]
    );
    assert_eq!(store.room_seq_floor().unwrap(), 0);
    store.forget_room("r", 9).unwrap();
    store.forget_room("empty", 3).unwrap();
    assert_eq!(store.room_seq_floor().unwrap(), 9);
    let heads: Vec<String> = store.room_heads().unwrap().into_iter().map(|h| h.room).collect();
    assert_eq!(heads, vec!["other".to_string()]);
    assert!(store.room_range("r", 0, u64::MAX, 10, false).unwrap().is_empty());
    assert_eq!(
        store.room_range("other", 0, u64::MAX, 10, false).unwrap().len(),
        1
    );
}

/// Reactions: set, taken back, counted per emoji with the reactor's own,
/// and gone with their message (deleted, trimmed, room forgotten).
/// Removes every queued reaction of removed messages, in small chunks.
fn purge_all(store: &dyn Store) {
    while store.purge_reactions(2).unwrap() == 2 {}
}

fn reactions_contract(store: &dyn Store) {
    let record = RoomRecord {
        ts_unix_ms: 1,
        sender: "ann".into(),
        msg_id: None,
        qos: 1,
        payload: Bytes::from_static(b"x"),
        user_properties: Vec::new(),
        prev: None,
        entry: None,
    };
    for seq in [1, 2, 3] {
        store.append_room("room", seq, &record).unwrap();
    }
    store.append_room("room2", 1, &record).unwrap();
    for (seq, emoji, who) in [
        (2, "👍", "ann"),
        (2, "👍", "bob"),
        (2, "🎉", "bob"),
        (3, "x", "ann"),
    ] {
        store.set_reaction("room", seq, emoji, who, true).unwrap();
    }
    store.set_reaction("room", 2, "👍", "bob", true).unwrap();
    store.set_reaction("room", 2, "🎉", "ann", false).unwrap();
    store.set_reaction("room2", 1, "👍", "bob", true).unwrap();
    let bob = store.reactions("room", 2, Some("bob")).unwrap();
    let mut counts = bob.counts.clone();
    counts.sort();
    assert_eq!(counts, vec![("🎉".to_string(), 1), ("👍".to_string(), 2)]);
    let mut mine = bob.mine.clone();
    mine.sort();
    assert_eq!(mine, vec!["🎉".to_string(), "👍".to_string()]);
    assert_eq!(bob.total(), 3);
    store.set_reaction("room", 2, "🎉", "bob", false).unwrap();
    let ann = store.reactions("room", 2, Some("ann")).unwrap();
    assert_eq!(
        (ann.counts, ann.mine),
        (vec![("👍".to_string(), 2)], vec!["👍".to_string()])
    );
    store.clear_reactions("room", 2).unwrap();
    purge_all(store);
    assert_eq!(
        store.reactions("room", 2, Some("ann")).unwrap(),
        Reactions::default()
    );
    assert_eq!(store.room_len("room").unwrap(), 3);
    assert_eq!(store.trim_room("room", 4).unwrap(), 3);
    purge_all(store);
    assert_eq!(store.reactions("room", 3, None).unwrap(), Reactions::default());
    assert_eq!(store.room_len("room").unwrap(), 0);
    assert_eq!(
        store.reactions("room2", 1, None).unwrap().total(),
        1,
        "another room's"
    );
    store.forget_room("room2", 1).unwrap();
    purge_all(store);
    assert_eq!(store.reactions("room2", 1, None).unwrap(), Reactions::default());
}

#[test]
fn memory_store_contract() {
    contract(&MemoryStore::default());
    room_contract(&MemoryStore::default());
    reactions_contract(&MemoryStore::default());
}

#[test]
fn sled_store_reactions() {
    let dir = tempfile::tempdir().unwrap();
    reactions_contract(&SledStore::open(dir.path()).unwrap());
}

#[test]
fn sled_store_rooms_are_forgotten_and_the_floor_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    room_contract(&SledStore::open(dir.path()).unwrap());
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.room_seq_floor().unwrap(), 9);
}

#[test]
fn memory_store_shares_bodies() {
    bodies_are_shared(&MemoryStore::default());
}

#[test]
fn sled_store_shares_bodies_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    bodies_are_shared(&SledStore::open(dir.path()).unwrap());
    let body;
    {
        let store = SledStore::open(dir.path()).unwrap();
        body = store.new_body_id();
        let session = SessionRecord {
            expiry_secs: 60,
            ..Default::default()
        };
        for client in ["r1", "r2"] {
            store.put_session(client, &session).unwrap();
            store.put_message(client, 1, body, queued("kept")).unwrap();
        }
        store.flush().unwrap();
    }
    // The counts come back from the records: the body stays until the
    // second session lets go of it.
    let store = SledStore::open(dir.path()).unwrap();
    store.load_sessions().unwrap();
    assert!(store.new_body_id() > body, "ids are not given twice");
    store.remove_message("r1", 1).unwrap();
    store.flush().unwrap();
    assert!(store.load_body(body).unwrap().is_some());
    store.remove_message("r2", 1).unwrap();
    store.flush().unwrap();
    assert_eq!(store.load_body(body).unwrap(), None);
}

#[test]
fn sled_store_contract_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        contract(&store);
    }
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(
        store.load_retained().unwrap(),
        vec![message("a", "2")],
        "survives reopening"
    );
    let sessions = store.load_sessions().unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].messages.len(), 1, "c10's message survives reopening");
    // Acknowledging after a reopen uses the rebuilt index.
    store.remove_message("c10", 1).unwrap();
    store.flush().unwrap();
    drop(store);
    let store = SledStore::open(dir.path()).unwrap();
    assert!(store.load_sessions().unwrap()[0].messages.is_empty());
}

#[test]
fn sled_store_refuses_unknown_format() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("format", "roomq-store-99")
            .unwrap();
        db.open_tree("sessions").unwrap().insert("keep", "me").unwrap();
        db.flush().unwrap();
    }
    let err = SledStore::open(dir.path()).err().expect("refused").to_string();
    assert!(
        err.contains("roomq-store-99") && err.contains(&dir.path().display().to_string()),
        "{err}"
    );
    let db = sled::open(dir.path()).unwrap();
    assert!(
        db.open_tree("sessions").unwrap().get("keep").unwrap().is_some(),
        "left untouched"
    );
}

#[test]
fn sled_store_held_by_another_opener_is_refused_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let held = SledStore::open(dir.path()).unwrap();
    let err = SledStore::open(dir.path())
        .err()
        .expect("second open refused")
        .to_string();
    assert!(
        err.contains(&dir.path().display().to_string()) && err.contains("lock"),
        "{err}"
    );
    drop(held);
}

/// A flush with nothing new writes nothing. Each group commit writes the
/// session journal's batches first, empty ones included; sled sealed an io
/// buffer around each empty batch's manifest, one write and one
/// `sync_file_range` apiece (vendor/sled, ROOMQ-PATCHES.md 4): six of them
/// per commit under chat load, which the commit's flush then waited for.
#[test]
fn sled_store_flushes_with_nothing_new_leave_the_log_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    store.put_session("c", &SessionRecord::default()).unwrap();
    store.flush().unwrap();
    let log = dir.path().join("db");
    let before = std::fs::metadata(&log).unwrap().len();
    for _ in 0..5_000 {
        store.flush().unwrap();
    }
    let after = std::fs::metadata(&log).unwrap().len();
    assert_eq!(after, before, "the log file grew from {before} to {after} bytes");
}
