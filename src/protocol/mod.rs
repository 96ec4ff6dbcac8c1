//! The only module that knows the wire codec (`rmqtt-codec`).
//!
//! Inside the broker every packet is an MQTT 5.0 packet: 5.0 is a superset of
//! 3.1.1, so the session code is written once. A 3.1.1 connection is
//! translated here, on the way in (`v311.rs`) and on the way out, and the
//! session keeps the [`Version`] to apply the few rules that differ.
//! Replacing the codec means replacing this module and the re-exports below.

mod connect;
mod frame;
mod publish_v3;
mod v311;
pub mod validate;

pub use frame::{Codec, DecodeError, EncodeError};
pub use publish_v3::PublishV3;
pub use rmqtt_codec::types::{Publish, QoS};

/// The QoS of a stored level (0, 1, 2); anything above 2 reads as 2.
pub(crate) fn qos_from(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}
pub use rmqtt_codec::v5::{
    Auth, Connect, ConnectAck, ConnectAckReason, Disconnect, DisconnectReasonCode, LastWill, Packet,
    PublishAck, PublishAck2, PublishAck2Reason, PublishAckReason, PublishProperties, RetainHandling,
    Subscribe, SubscribeAck, SubscribeAckReason, SubscriptionOptions, Unsubscribe, UnsubscribeAck,
    UnsubscribeAckReason, UserProperties,
};

/// The protocol version a connection announced in its CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1 (protocol level 3, "MQIsdp"), handled as 3.1.1.
    V31,
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

impl Version {
    pub fn is_v5(self) -> bool {
        self == Version::V5
    }
}
