//! The accounts' rules: bounds, ceilings, handles, rates, forgetting.

use super::*;

#[test]
fn a_charge_over_the_bound_is_refused_and_charges_nothing() {
    let budgets = Budgets::new(Limits::default().with_held(Held::Rooms, 2));
    assert!(budgets.charge("user:a", Held::Rooms, 1).is_ok());
    assert!(budgets.charge("user:a", Held::Rooms, 1).is_ok());
    let refused = budgets.charge("user:a", Held::Rooms, 1).unwrap_err();
    assert_eq!(refused.key, "max_rooms_per_user");
    assert_eq!(budgets.held("user:a", Held::Rooms), 2);
    // Another identity has its own account.
    assert!(budgets.charge("user:b", Held::Rooms, 2).is_ok());
    budgets.release("user:a", Held::Rooms, 1);
    assert!(budgets.charge("user:a", Held::Rooms, 1).is_ok());
}

#[test]
fn a_ceiling_bounds_all_accounts_together() {
    let budgets = Budgets::new(
        Limits::default()
            .with_held(Held::RoomCursors, 2)
            .with_ceiling(Held::RoomCursors, 3),
    );
    budgets.charge("user:a", Held::RoomCursors, 2).unwrap();
    budgets.charge("user:b", Held::RoomCursors, 1).unwrap();
    let refused = budgets.charge("user:b", Held::RoomCursors, 1).unwrap_err();
    assert_eq!(refused.bound, 3);
    assert_eq!(budgets.total(Held::RoomCursors), 3);
    budgets.release("user:a", Held::RoomCursors, 5);
    assert_eq!(budgets.total(Held::RoomCursors), 1);
    budgets.charge("user:b", Held::RoomCursors, 1).unwrap();
}

#[test]
fn an_account_that_holds_nothing_is_forgotten() {
    let budgets = Budgets::new(Limits::default().with_held(Held::RetainedBytes, 100));
    budgets.charge("user:a", Held::RetainedBytes, 40).unwrap();
    assert_eq!(budgets.accounts(), 1);
    budgets.release("user:a", Held::RetainedBytes, 40);
    assert_eq!(budgets.accounts(), 0);
}

#[test]
fn a_handle_shares_the_accounts_counter_and_bound() {
    let budgets = Arc::new(Budgets::new(
        Limits::default()
            .with_held(Held::QueuedBytes, 100)
            .with_ceiling(Held::QueuedBytes, 1000),
    ));
    let handle = budgets.handle(&Arc::from("user:a"), Held::QueuedBytes);
    handle.charge(60).unwrap();
    assert!(budgets.charge("user:a", Held::QueuedBytes, 50).is_err());
    assert!(handle.charge(41).is_err());
    budgets.charge("user:a", Held::QueuedBytes, 40).unwrap();
    assert_eq!(budgets.held("user:a", Held::QueuedBytes), 100);
    assert_eq!(budgets.total(Held::QueuedBytes), 100);
    handle.release(100);
    budgets.release("user:a", Held::QueuedBytes, 100);
    assert_eq!(budgets.total(Held::QueuedBytes), 0);
    // Remembered while the handle lives, forgotten after.
    budgets.forget_idle();
    assert_eq!(budgets.accounts(), 1);
    drop(handle);
    budgets.forget_idle();
    assert_eq!(budgets.accounts(), 0);
}

#[test]
fn a_rate_refuses_beyond_its_bucket_until_it_refills() {
    let budgets =
        Budgets::new(Limits::default().with_rate(Rate::HistoryRequests, 3, Duration::from_secs(3600)));
    for _ in 0..3 {
        budgets.spend("user:a", Rate::HistoryRequests, 1).unwrap();
    }
    assert!(budgets.spend("user:a", Rate::HistoryRequests, 1).is_err());
    assert!(budgets.spend("user:b", Rate::HistoryRequests, 1).is_ok());
    // A zero bound means none.
    assert!(budgets.spend("user:a", Rate::RoomPostBytes, u64::MAX).is_ok());
}

#[test]
fn anonymous_clients_share_an_account_per_address() {
    let ip: IpAddr = "10.0.0.1".parse().unwrap();
    assert_eq!(&*account_of(None, Some(ip)), "anon:10.0.0.1");
    assert_eq!(&*account_of(Some("alice"), Some(ip)), "user:alice");
}

#[test]
fn a_reserved_handle_charges_ahead_and_gives_everything_back() {
    use super::reserve::RESERVE_BYTES;
    let budgets = Arc::new(Budgets::new(
        Limits::default().with_held(Held::QueuedBytes, 3 * RESERVE_BYTES),
    ));
    let handle = ReservedHandle::new(budgets.handle(&Arc::from("user:a"), Held::QueuedBytes));
    // The first charge takes a reserve; the next ones come out of it.
    handle.charge(100).unwrap();
    assert_eq!(budgets.held("user:a", Held::QueuedBytes), 100 + RESERVE_BYTES);
    handle.release(100);
    handle.charge(200).unwrap();
    assert_eq!(handle.used(), 200);
    assert_eq!(budgets.held("user:a", Held::QueuedBytes), 100 + RESERVE_BYTES);
    // Near the bound only what is needed is charged, and the bound holds.
    handle.charge(2 * RESERVE_BYTES).unwrap();
    assert_eq!(budgets.held("user:a", Held::QueuedBytes), 200 + 2 * RESERVE_BYTES);
    assert!(handle.charge(RESERVE_BYTES).is_err());
    assert_eq!(handle.used(), 200 + 2 * RESERVE_BYTES);
    // Released beyond twice the reserve, the excess goes back.
    handle.release(2 * RESERVE_BYTES + 200);
    assert!(budgets.held("user:a", Held::QueuedBytes) <= 2 * RESERVE_BYTES);
    // Another session of the account can use what is left.
    budgets
        .charge("user:a", Held::QueuedBytes, RESERVE_BYTES)
        .unwrap();
    drop(handle);
    assert_eq!(budgets.held("user:a", Held::QueuedBytes), RESERVE_BYTES);
}
