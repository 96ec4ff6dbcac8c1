//! The messages in flight to the client (sent with QoS 1 or 2, not yet
//! acknowledged), as the session keeps them across connections: the rules
//! of the window, without I/O, so they are tested here (`outbox.rs` sends
//! and receives the packets, `persist.rs` stores the stages).
//!
//! Invariants:
//! - Packet ids: no two messages in flight share a packet id; ids go up,
//!   wrap from 65535 to 1 (0 is not a packet id), and skip those in use,
//!   so an id is reused only after its message was acknowledged.
//!   Finding a free id costs nothing while the window's ids go up in send
//!   order within one turn of the counter (as they do unless a message
//!   stays in flight while 65,535 others are sent, or a restored window
//!   holds ids out of order): every id in flight is then between the
//!   oldest one's and the newest one's, so an id outside that range is
//!   free without looking at the window.
//! - Receive Maximum: at most `send_window` (the client's Receive Maximum,
//!   capped by `max_inflight_messages`) QoS 1/2 messages are in flight.
//! - QoS 2 phases: a message waits for PUBREC, then (after the PUBREL)
//!   for PUBCOMP; an acknowledgement ends only a message in the stage it
//!   answers, so a PUBCOMP cannot end one still waiting for PUBREC.
//! - Order: the window is in send order, and a reconnect resends it in
//!   that order ([MQTT-4.4.0-1]): PUBLISH with DUP for those waiting for
//!   PUBACK or PUBREC, PUBREL for those waiting for PUBCOMP.

use std::num::NonZeroU16;

use super::{Inflight, SessionState, Stage};
use crate::router::Delivery;

/// What a reconnect sends again for one message in flight.
#[derive(Debug)]
pub(crate) enum Resend<'a> {
    /// The PUBLISH again, with DUP set.
    Publish(NonZeroU16, &'a Delivery),
    /// The PUBREL again: the client has the message, it waits for this.
    Release(NonZeroU16),
}

impl SessionState {
    /// The next packet id not used by a message in flight.
    #[inline]
    pub fn allocate_packet_id(&mut self) -> NonZeroU16 {
        loop {
            self.next_packet_id = self.next_packet_id.wrapping_add(1);
            if let Some(id) = NonZeroU16::new(self.next_packet_id) {
                if self.packet_id_free(id) {
                    return id;
                }
            }
        }
    }

    /// Whether no message in flight has packet id `id`.
    fn packet_id_free(&self, id: NonZeroU16) -> bool {
        let (Some(oldest), Some(newest)) = (self.inflight.front(), self.inflight.back()) else {
            return true;
        };
        if !self.inflight_unordered
            && ids_from(oldest.packet_id, id) > ids_from(oldest.packet_id, newest.packet_id)
        {
            return true;
        }
        !self.inflight.iter().any(|f| f.packet_id == id)
    }

    /// Puts a message sent with `packet_id` at the end of the window (send
    /// order), noting whether the window's ids still go up within one
    /// turn of the counter (the module's invariants). An empty window is
    /// in order again.
    pub fn push_in_flight(&mut self, inflight: Inflight) {
        match (self.inflight.front(), self.inflight.back()) {
            (Some(oldest), Some(newest)) => {
                let span = ids_from(oldest.packet_id, newest.packet_id);
                let step = ids_from(newest.packet_id, inflight.packet_id);
                if step == 0 || span + step >= u32::from(u16::MAX) {
                    self.inflight_unordered = true;
                }
            }
            _ => self.inflight_unordered = false,
        }
        self.inflight.push_back(inflight);
    }

    /// Whether `send_window` QoS 1/2 messages are in flight: the next one
    /// waits for an acknowledgement.
    pub fn window_full(&self, send_window: usize) -> bool {
        self.inflight.len() >= send_window
    }

    /// Ends the flow of the message `id` waiting for `stage` (a PUBACK, a
    /// PUBCOMP, or a PUBREC with an error code, [MQTT-4.3.3-4]): the message
    /// leaves the window. `None` for an id not in that stage.
    pub fn acknowledged(&mut self, id: NonZeroU16, stage: Stage) -> Option<Inflight> {
        let pos = self.position(id, stage)?;
        self.inflight.remove(pos)
    }

    /// A PUBREC for `id`: the message now waits for PUBCOMP. Returns its
    /// place in the window; `None` for an id not waiting for PUBREC.
    pub fn received(&mut self, id: NonZeroU16) -> Option<usize> {
        let pos = self.position(id, Stage::Pubrec)?;
        let f = self.inflight.get_mut(pos)?;
        f.stage = Stage::Pubcomp;
        Some(pos)
    }

    /// What a new connection sends again for the message at `index` of
    /// the window (send order); `None` past its end.
    pub fn resend_at(&self, index: usize) -> Option<Resend<'_>> {
        let f = self.inflight.get(index)?;
        Some(match f.stage {
            Stage::Pubcomp => Resend::Release(f.packet_id),
            Stage::Puback | Stage::Pubrec => Resend::Publish(f.packet_id, &f.delivery),
        })
    }

    /// Everything a new connection sends again, in send order.
    #[cfg(test)]
    pub fn resend(&self) -> impl Iterator<Item = Resend<'_>> {
        (0..self.inflight.len()).map_while(|index| self.resend_at(index))
    }

    fn position(&self, id: NonZeroU16, stage: Stage) -> Option<usize> {
        self.inflight
            .iter()
            .position(|f| f.packet_id == id && f.stage == stage)
    }
}

/// How many steps the packet id counter takes from `from` to `to` (ids
/// wrap from 65535 to 1; the skipped 0 counts as a step, which changes no
/// comparison).
fn ids_from(from: NonZeroU16, to: NonZeroU16) -> u32 {
    u32::from(to.get().wrapping_sub(from.get()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::message::Message;
    use crate::protocol::QoS;

    fn delivery(topic: &str, qos: QoS) -> Delivery {
        Delivery {
            message: Arc::new(Message::new(topic.to_string(), "x", qos, false)),
            qos,
            retain: false,
            subscription_ids: Vec::new(),
            shared: None,
            store_seq: None,
        }
    }

    /// Sends one message as `outbox.rs` does: a fresh id, the first stage
    /// of its QoS.
    fn send(st: &mut SessionState, topic: &str, qos: QoS) -> u16 {
        let packet_id = st.allocate_packet_id();
        let stage = if qos == QoS::ExactlyOnce {
            Stage::Pubrec
        } else {
            Stage::Puback
        };
        st.push_in_flight(Inflight {
            packet_id,
            delivery: delivery(topic, qos),
            stage,
        });
        packet_id.get()
    }

    fn id(n: u16) -> NonZeroU16 {
        NonZeroU16::new(n).unwrap()
    }

    #[test]
    fn ids_go_up_and_are_reused_only_after_the_ack() {
        let mut st = SessionState::default();
        assert_eq!(send(&mut st, "a", QoS::AtLeastOnce), 1);
        assert_eq!(send(&mut st, "b", QoS::AtLeastOnce), 2);
        assert!(st.acknowledged(id(1), Stage::Puback).is_some());
        // Wrapped round to 1 again: free now, so it is used.
        st.next_packet_id = u16::MAX;
        assert_eq!(send(&mut st, "c", QoS::AtLeastOnce), 1);
        // 2 is still in flight: skipped.
        assert_eq!(send(&mut st, "d", QoS::AtLeastOnce), 3);
    }

    #[test]
    fn ids_wrap_past_65535_to_1_never_0() {
        let mut st = SessionState {
            next_packet_id: u16::MAX - 1,
            ..Default::default()
        };
        assert_eq!(send(&mut st, "a", QoS::AtLeastOnce), u16::MAX);
        assert_eq!(send(&mut st, "b", QoS::AtLeastOnce), 1);
    }

    #[test]
    fn a_full_window_waits_for_an_acknowledgement() {
        let mut st = SessionState::default();
        let window = 2;
        send(&mut st, "a", QoS::AtLeastOnce);
        assert!(!st.window_full(window));
        send(&mut st, "b", QoS::ExactlyOnce);
        assert!(st.window_full(window));
        // A PUBREC does not free the slot: the message waits for PUBCOMP.
        assert_eq!(st.received(id(2)), Some(1));
        assert!(st.window_full(window));
        assert!(st.acknowledged(id(1), Stage::Puback).is_some());
        assert!(!st.window_full(window));
    }

    #[test]
    fn qos2_goes_pubrec_then_pubcomp() {
        let mut st = SessionState::default();
        let n = id(send(&mut st, "a", QoS::ExactlyOnce));
        // A PUBCOMP (or PUBACK) before the PUBREC ends nothing.
        assert!(st.acknowledged(n, Stage::Pubcomp).is_none());
        assert!(st.acknowledged(n, Stage::Puback).is_none());
        assert_eq!(st.received(n), Some(0));
        // A second PUBREC for it is unknown: it is past that stage.
        assert_eq!(st.received(n), None);
        let done = st.acknowledged(n, Stage::Pubcomp).map(|f| f.packet_id);
        assert_eq!(done, Some(n));
        assert_eq!(st.inflight.len(), 0);
    }

    #[test]
    fn an_unknown_id_changes_nothing() {
        let mut st = SessionState::default();
        send(&mut st, "a", QoS::AtLeastOnce);
        assert!(st.acknowledged(id(9), Stage::Puback).is_none());
        assert_eq!(st.received(id(9)), None);
        assert_eq!(st.inflight.len(), 1);
    }

    #[test]
    fn a_reconnect_resends_in_send_order_with_the_right_packet() {
        let mut st = SessionState::default();
        send(&mut st, "a", QoS::AtLeastOnce);
        send(&mut st, "b", QoS::ExactlyOnce);
        send(&mut st, "c", QoS::ExactlyOnce);
        send(&mut st, "d", QoS::AtLeastOnce);
        st.received(id(2));
        assert!(st.acknowledged(id(4), Stage::Puback).is_some());
        let resent: Vec<String> = st
            .resend()
            .map(|r| match r {
                Resend::Publish(n, d) => format!("publish {n} {}", d.message.topic),
                Resend::Release(n) => format!("pubrel {n}"),
            })
            .collect();
        assert_eq!(resent, ["publish 1 a", "pubrel 2", "publish 3 c"]);
    }

    /// The id each send gets is the first one after the counter that no
    /// message in flight has, as a scan of the whole window finds it,
    /// through acknowledgements out of order, long-lived messages and the
    /// counter jumping (a restored window): the shortcut of
    /// `packet_id_free` never gives an id in use.
    #[test]
    fn a_new_id_is_the_first_free_one_whatever_the_window_holds() {
        let mut st = SessionState::default();
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next_random = move |below: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % below
        };
        for _ in 0..30_000 {
            // The window stays within a Receive Maximum of 500.
            let roll = if st.inflight.len() >= 500 {
                60
            } else {
                next_random(100)
            };
            match roll {
                0..=54 => {
                    let mut expected = st.next_packet_id;
                    loop {
                        expected = expected.wrapping_add(1);
                        if expected != 0 && !st.inflight.iter().any(|f| f.packet_id.get() == expected) {
                            break;
                        }
                    }
                    assert_eq!(send(&mut st, "t", QoS::AtLeastOnce), expected);
                }
                55..=94 if st.inflight.len() > 0 => {
                    // Mostly the oldest, as clients answer; sometimes any.
                    let index = if next_random(4) == 0 {
                        next_random(st.inflight.len() as u64) as usize
                    } else {
                        0
                    };
                    st.inflight.remove(index);
                }
                95..=97 => st.next_packet_id = next_random(65_536) as u16,
                _ => {}
            }
        }
    }
}
