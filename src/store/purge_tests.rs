//! The reactions of removed messages leave sled in bounded chunks, and a
//! restart in the middle of a purge goes on with it (no orphan keys).

use bytes::Bytes;

use super::journal::session_prefix;
use super::*;

fn record() -> RoomRecord {
    RoomRecord {
        ts_unix_ms: 1,
        sender: "ann".into(),
        msg_id: None,
        qos: 1,
        payload: Bytes::from_static(b"x"),
        user_properties: Vec::new(),
        prev: None,
        entry: None,
    }
}

/// Reaction keys of `room` left in the tree, and ranges still queued.
fn left(store: &SledStore, room: &str) -> (usize, usize) {
    store
        .with(|t| {
            let keys = t.reactions.scan_prefix(session_prefix(room)).count();
            Ok((keys, t.reaction_purges.len()))
        })
        .unwrap()
}

#[test]
fn trimmed_reactions_are_purged_in_chunks_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    for seq in 1..=10 {
        store.append_room("r", seq, &record()).unwrap();
        for who in 0..20 {
            let reactor = format!("u{who}");
            store.set_reaction("r", seq, "👍", &reactor, true).unwrap();
            store.set_reaction("r", seq, "🎉", &reactor, true).unwrap();
        }
    }
    store.append_room("other", 1, &record()).unwrap();
    store.set_reaction("other", 1, "👍", "bob", true).unwrap();
    // 10 messages × (40 reactor keys + 2 count keys).
    assert_eq!(left(&store, "r").0, 420);

    assert_eq!(store.trim_room("r", 9).unwrap(), 8);
    store.clear_reactions("r", 10).unwrap();
    // Nothing removed yet but the log entries: one call, one chunk.
    assert_eq!(left(&store, "r").0, 420);
    assert_eq!(store.purge_reactions(50).unwrap(), 50);
    assert_eq!(left(&store, "r").0, 370);

    // A restart in the middle of the purge.
    store.flush().unwrap();
    store.close();
    drop(store);
    let store = SledStore::open(dir.path()).unwrap();
    let (keys, queued) = left(&store, "r");
    assert_eq!(keys, 370);
    assert!(queued > 0, "the purge queue survives a restart");
    let mut calls = 0;
    while store.purge_reactions(50).unwrap() == 50 {
        calls += 1;
        assert!(calls < 100, "the purge ends");
    }
    // Message 9 is still in the log with its reactions.
    assert_eq!(left(&store, "r"), (42, 0));
    assert_eq!(store.reactions("r", 9, Some("u3")).unwrap().total(), 40);
    for seq in [1, 8, 10] {
        assert_eq!(
            store.reactions("r", seq, Some("u3")).unwrap(),
            Reactions::default()
        );
    }
    assert_eq!(store.reactions("other", 1, None).unwrap().total(), 1);

    // Forgetting the room queues the rest; a room opened again above the
    // floor keeps its new reactions.
    store.trim_room("r", 11).unwrap();
    store.forget_room("r", 10).unwrap();
    store.append_room("r", 11, &record()).unwrap();
    store.set_reaction("r", 11, "👍", "bob", true).unwrap();
    while store.purge_reactions(7).unwrap() == 7 {}
    assert_eq!(left(&store, "r"), (2, 0));
    assert_eq!(store.reactions("r", 11, None).unwrap().total(), 1);
}
