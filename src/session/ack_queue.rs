//! The acknowledgements one connection owes its client, waiting for the
//! group commit that makes what they promise durable: a pure state
//! machine, without I/O or store, so its rules are tested here in
//! milliseconds (`acks.rs` drives it with the store and the socket).
//!
//! Invariants:
//! - Order: acknowledgements leave in the order they were queued
//!   ([MQTT-4.6.0-2]): `pending` (this read batch) is sealed behind a
//!   ticket at the end of the batch; sealed batches wait oldest first,
//!   with non-decreasing tickets, and only the front ones leave.
//! - Receive Maximum: every PUBACK queued and not yet sent or refused is a
//!   QoS 1 message still in flight towards the broker; `qos1_waiting`
//!   counts exactly those (it is what `publish.rs` adds to the unreleased
//!   QoS 2 ids against `receive_maximum`).
//! - Replies (SUBACK/UNSUBACK) waiting for a durable session record are
//!   held apart and sent after the acknowledgements queued before them.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::protocol::Packet;

/// One batch of acknowledgements waiting for its group commit.
struct Batch {
    ticket: u64,
    /// When the batch began to wait (restarted while a slow disk is only
    /// slow, not failing).
    since: Instant,
    acks: Vec<Packet>,
}

/// The acknowledgements of one connection that wait for the store.
#[derive(Default)]
pub(crate) struct AckQueue {
    /// Acknowledgements of the packets read in this batch, not yet behind
    /// a ticket.
    pending: Vec<Packet>,
    /// Sealed batches, oldest first. The connection keeps reading while
    /// they wait, so its next messages join the next flush instead of
    /// waiting for this one to finish.
    awaiting: VecDeque<Batch>,
    /// PUBACKs in `pending` and `awaiting`.
    qos1_waiting: usize,
    /// SUBACK/UNSUBACK of a persistent session, sent once the session
    /// record they promise is on disk (and before the retained messages
    /// the subscription delivers).
    replies: Vec<Packet>,
}

impl AckQueue {
    /// Queues an acknowledgement behind the next group commit.
    pub fn push(&mut self, ack: Packet) {
        if matches!(ack, Packet::PublishAck(_)) {
            self.qos1_waiting += 1;
        }
        self.pending.push(ack);
    }

    /// Whether nothing waits: an acknowledgement that promises nothing
    /// stored may then go out at once without overtaking one.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.awaiting.is_empty()
    }

    /// Whether this read batch queued acknowledgements (only then is a
    /// ticket worth taking: taking one asks for a flush).
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// QoS 1 messages whose PUBACK waits: they count against Receive
    /// Maximum until it is sent.
    pub fn qos1_waiting(&self) -> usize {
        self.qos1_waiting
    }

    /// Puts this read batch's acknowledgements behind `ticket`.
    pub fn seal(&mut self, ticket: u64, since: Instant) {
        if self.pending.is_empty() {
            return;
        }
        let acks = std::mem::take(&mut self.pending);
        self.awaiting.push_back(Batch { ticket, since, acks });
    }

    /// Without a durable store: this read batch's acknowledgements, to send
    /// at once.
    pub fn take_pending(&mut self) -> Vec<Packet> {
        let acks = std::mem::take(&mut self.pending);
        self.forget_qos1(&acks);
        acks
    }

    /// The ticket of the oldest waiting batch.
    pub fn oldest_ticket(&self) -> Option<u64> {
        self.awaiting.front().map(|b| b.ticket)
    }

    /// The ticket of the newest waiting batch: once durable, all are.
    pub fn newest_ticket(&self) -> Option<u64> {
        self.awaiting.back().map(|b| b.ticket)
    }

    /// Whether the oldest batch is durable once `durable` is.
    pub fn has_durable(&self, durable: u64) -> bool {
        self.awaiting.front().is_some_and(|b| b.ticket <= durable)
    }

    /// Takes, in order, the acknowledgements of every batch durable once
    /// `durable` is.
    #[cfg(test)]
    pub fn take_durable(&mut self, durable: u64) -> Vec<Packet> {
        let mut out = Vec::new();
        while let Some((_, acks)) = self.take_one_durable(durable) {
            out.extend(acks);
        }
        out
    }

    /// Takes the oldest batch if its ticket is covered by `durable`: its
    /// ticket and acknowledgements (the caller refuses them instead if
    /// the ticket's writes were lost with a reopen of the store).
    pub fn take_one_durable(&mut self, durable: u64) -> Option<(u64, Vec<Packet>)> {
        let ticket = self.awaiting.front().filter(|b| b.ticket <= durable)?.ticket;
        let batch = self.awaiting.pop_front()?;
        self.forget_qos1(&batch.acks);
        Some((ticket, batch.acks))
    }

    /// When the oldest waiting batch has waited `timeout`.
    pub fn stall_deadline(&self, timeout: Duration) -> Option<Instant> {
        self.awaiting.front().map(|b| b.since + timeout)
    }

    /// The store is slow, not failing: the oldest batch waits on, its
    /// stall clock started again at `now`.
    pub fn restart_stall_clock(&mut self, now: Instant) {
        if let Some(oldest) = self.awaiting.front_mut() {
            oldest.since = now;
        }
    }

    /// Takes, in order, the acknowledgements of the batches that began
    /// waiting at or before `waited_since` (all with `None`): the store
    /// could not make them durable, the caller refuses them.
    pub fn take_stalled(&mut self, waited_since: Option<Instant>) -> Vec<Packet> {
        self.take_front(|b| waited_since.is_none_or(|t| b.since <= t))
    }

    /// Holds a SUBACK/UNSUBACK until the session record is durable.
    pub fn reply_when_durable(&mut self, reply: Packet) {
        self.replies.push(reply);
    }

    /// Whether a SUBACK/UNSUBACK waits for the store.
    pub fn has_replies(&self) -> bool {
        !self.replies.is_empty()
    }

    /// The waiting SUBACK/UNSUBACKs, in arrival order.
    pub fn take_replies(&mut self) -> Vec<Packet> {
        std::mem::take(&mut self.replies)
    }

    /// Pops the front batches while `leaves` holds, their acknowledgements
    /// in order.
    fn take_front(&mut self, leaves: impl Fn(&Batch) -> bool) -> Vec<Packet> {
        let mut out = Vec::new();
        while self.awaiting.front().is_some_and(&leaves) {
            let Some(batch) = self.awaiting.pop_front() else {
                break;
            };
            if out.is_empty() {
                out = batch.acks;
            } else {
                out.extend(batch.acks);
            }
        }
        self.forget_qos1(&out);
        out
    }

    /// The PUBACKs among `acks` leave the queue: their messages are no
    /// longer in flight towards the broker.
    fn forget_qos1(&mut self, acks: &[Packet]) {
        let puback = acks.iter().filter(|a| matches!(a, Packet::PublishAck(_))).count();
        self.qos1_waiting = self.qos1_waiting.saturating_sub(puback);
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU16;

    use super::*;
    use crate::protocol::{PublishAck, PublishAck2};

    fn id(n: u16) -> NonZeroU16 {
        NonZeroU16::new(n).unwrap()
    }

    fn puback(n: u16) -> Packet {
        Packet::PublishAck(PublishAck {
            packet_id: id(n),
            ..Default::default()
        })
    }

    fn pubrec(n: u16) -> Packet {
        Packet::PublishReceived(PublishAck {
            packet_id: id(n),
            ..Default::default()
        })
    }

    fn pubcomp(n: u16) -> Packet {
        Packet::PublishComplete(PublishAck2 {
            packet_id: id(n),
            ..Default::default()
        })
    }

    /// The packet ids of `acks`, in order.
    fn ids(acks: &[Packet]) -> Vec<u16> {
        acks.iter()
            .map(|a| match a {
                Packet::PublishAck(a) | Packet::PublishReceived(a) => a.packet_id.get(),
                Packet::PublishComplete(a) | Packet::PublishRelease(a) => a.packet_id.get(),
                other => panic!("not an acknowledgement: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_batch_leaves_only_when_its_ticket_is_durable() {
        let mut q = AckQueue::default();
        let now = Instant::now();
        q.push(puback(1));
        q.push(pubrec(2));
        assert!(q.has_pending());
        q.seal(5, now);
        assert!(!q.has_pending() && !q.is_empty());
        assert!(!q.has_durable(4));
        assert!(q.take_durable(4).is_empty());
        assert!(q.has_durable(5));
        assert_eq!(ids(&q.take_durable(5)), [1, 2]);
        assert!(q.is_empty());
    }

    #[test]
    fn acknowledgements_leave_in_the_order_they_were_queued() {
        let mut q = AckQueue::default();
        let now = Instant::now();
        q.push(puback(3));
        q.seal(1, now);
        q.push(pubcomp(1));
        q.push(puback(2));
        q.seal(2, now);
        q.push(puback(9));
        q.seal(3, now);
        assert_eq!((q.oldest_ticket(), q.newest_ticket()), (Some(1), Some(3)));
        // The group commit covers every ticket up to the one it reports.
        assert_eq!(ids(&q.take_durable(2)), [3, 1, 2]);
        assert_eq!(ids(&q.take_durable(10)), [9]);
        assert_eq!(q.oldest_ticket(), None);
    }

    #[test]
    fn sealing_nothing_makes_no_batch() {
        let mut q = AckQueue::default();
        q.seal(7, Instant::now());
        assert!(q.is_empty());
        assert_eq!(q.oldest_ticket(), None);
        assert_eq!(q.stall_deadline(Duration::from_secs(1)), None);
    }

    /// Receive Maximum: a QoS 1 message is in flight until its PUBACK is
    /// sent, or refused; a PUBREC is counted by the QoS 2 ids instead.
    #[test]
    fn waiting_pubacks_count_until_sent_or_refused() {
        let mut q = AckQueue::default();
        let now = Instant::now();
        q.push(puback(1));
        q.push(pubrec(2));
        q.push(puback(3));
        assert_eq!(q.qos1_waiting(), 2);
        q.seal(1, now);
        q.push(puback(4));
        q.seal(2, now);
        assert_eq!(q.qos1_waiting(), 3);
        q.take_durable(1);
        assert_eq!(q.qos1_waiting(), 1);
        q.take_stalled(None);
        assert_eq!(q.qos1_waiting(), 0);
        q.push(puback(5));
        assert_eq!(ids(&q.take_pending()), [5]);
        assert_eq!(q.qos1_waiting(), 0);
    }

    #[test]
    fn a_stall_refuses_only_what_waited_long_enough() {
        let mut q = AckQueue::default();
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        q.push(puback(1));
        q.seal(1, t0);
        q.push(puback(2));
        q.seal(2, t1);
        let timeout = Duration::from_millis(500);
        assert_eq!(q.stall_deadline(timeout), Some(t0 + timeout));
        assert_eq!(ids(&q.take_stalled(Some(t0))), [1]);
        assert_eq!(q.stall_deadline(timeout), Some(t1 + timeout));
        // A slow disk: the oldest batch waits on from now.
        let t2 = t1 + Duration::from_secs(1);
        q.restart_stall_clock(t2);
        assert_eq!(q.stall_deadline(timeout), Some(t2 + timeout));
        assert!(q.take_stalled(Some(t1)).is_empty());
        assert_eq!(ids(&q.take_stalled(None)), [2]);
        assert!(q.is_empty());
    }

    #[test]
    fn replies_wait_apart_in_arrival_order() {
        let mut q = AckQueue::default();
        assert!(!q.has_replies());
        q.reply_when_durable(pubcomp(4));
        q.reply_when_durable(pubcomp(5));
        assert!(q.has_replies());
        assert!(q.is_empty(), "replies do not hold back unstored acknowledgements");
        assert_eq!(ids(&q.take_replies()), [4, 5]);
        assert!(!q.has_replies());
    }
}
