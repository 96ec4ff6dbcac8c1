//! Translation between MQTT 3.1.1 packets and the 5.0 packets used inside
//! the broker.
//!
//! A 3.1.1 persistent session (clean session = 0) never expires, which 5.0
//! spells as a Session Expiry Interval of 0xFFFFFFFF; a clean session ends
//! with the connection (interval 0).

use rmqtt_codec::v3;
use rmqtt_codec::v5;

use super::{Packet, QoS, SubscribeAckReason, SubscriptionOptions};

pub(super) fn to_v5(packet: v3::Packet) -> Packet {
    match packet {
        v3::Packet::Connect(c) => {
            let c = *c;
            Packet::Connect(Box::new(v5::Connect {
                clean_start: c.clean_session,
                keep_alive: c.keep_alive,
                session_expiry_interval_secs: if c.clean_session { 0 } else { u32::MAX },
                last_will: c.last_will.map(|w| v5::LastWill {
                    qos: w.qos,
                    retain: w.retain,
                    topic: w.topic,
                    message: w.message,
                    will_delay_interval_sec: None,
                    correlation_data: None,
                    message_expiry_interval: None,
                    content_type: None,
                    user_properties: Vec::new(),
                    is_utf8_payload: None,
                    response_topic: None,
                }),
                client_id: c.client_id,
                username: c.username,
                password: c.password,
                // 3.1.1 has no way to ask for reason strings; leave them out.
                request_problem_info: false,
                ..Default::default()
            }))
        }
        v3::Packet::Publish(p) => Packet::Publish(p),
        v3::Packet::PublishAck { packet_id } => Packet::PublishAck(v5::PublishAck {
            packet_id,
            ..Default::default()
        }),
        v3::Packet::PublishReceived { packet_id } => Packet::PublishReceived(v5::PublishAck {
            packet_id,
            ..Default::default()
        }),
        v3::Packet::PublishRelease { packet_id } => Packet::PublishRelease(v5::PublishAck2 {
            packet_id,
            ..Default::default()
        }),
        v3::Packet::PublishComplete { packet_id } => Packet::PublishComplete(v5::PublishAck2 {
            packet_id,
            ..Default::default()
        }),
        v3::Packet::Subscribe {
            packet_id,
            topic_filters,
        } => Packet::Subscribe(v5::Subscribe {
            packet_id,
            id: None,
            user_properties: Vec::new(),
            topic_filters: topic_filters
                .into_iter()
                .map(|(filter, qos)| {
                    (
                        filter,
                        SubscriptionOptions {
                            qos,
                            ..Default::default()
                        },
                    )
                })
                .collect(),
        }),
        v3::Packet::Unsubscribe {
            packet_id,
            topic_filters,
        } => Packet::Unsubscribe(v5::Unsubscribe {
            packet_id,
            user_properties: Vec::new(),
            topic_filters,
        }),
        v3::Packet::PingRequest => Packet::PingRequest,
        v3::Packet::PingResponse => Packet::PingResponse,
        v3::Packet::Disconnect => Packet::Disconnect(v5::Disconnect::default()),
        v3::Packet::ConnectAck(_) => Packet::ConnectAck(Box::default()),
        v3::Packet::SubscribeAck { packet_id, .. } => Packet::SubscribeAck(v5::SubscribeAck {
            packet_id,
            properties: Vec::new(),
            reason_string: None,
            status: Vec::new(),
        }),
        v3::Packet::UnsubscribeAck { packet_id } => Packet::UnsubscribeAck(v5::UnsubscribeAck {
            packet_id,
            properties: Vec::new(),
            reason_string: None,
            status: Vec::new(),
        }),
    }
}

/// The 3.1.1 form of a packet the server sends, or `None` where 3.1.1 has
/// none (a server never sends DISCONNECT or AUTH in 3.1.1).
pub(super) fn from_v5(packet: Packet) -> Option<v3::Packet> {
    Some(match packet {
        Packet::ConnectAck(ack) => v3::Packet::ConnectAck(v3::ConnectAck {
            session_present: ack.session_present,
            return_code: connack_code(ack.reason_code),
        }),
        Packet::Publish(mut p) => {
            p.properties = None;
            v3::Packet::Publish(p)
        }
        Packet::PublishAck(a) => v3::Packet::PublishAck {
            packet_id: a.packet_id,
        },
        Packet::PublishReceived(a) => v3::Packet::PublishReceived {
            packet_id: a.packet_id,
        },
        Packet::PublishRelease(a) => v3::Packet::PublishRelease {
            packet_id: a.packet_id,
        },
        Packet::PublishComplete(a) => v3::Packet::PublishComplete {
            packet_id: a.packet_id,
        },
        Packet::SubscribeAck(a) => v3::Packet::SubscribeAck {
            packet_id: a.packet_id,
            status: a
                .status
                .into_iter()
                .map(|s| match s {
                    SubscribeAckReason::GrantedQos0 => v3::SubscribeReturnCode::Success(QoS::AtMostOnce),
                    SubscribeAckReason::GrantedQos1 => v3::SubscribeReturnCode::Success(QoS::AtLeastOnce),
                    SubscribeAckReason::GrantedQos2 => v3::SubscribeReturnCode::Success(QoS::ExactlyOnce),
                    _ => v3::SubscribeReturnCode::Failure,
                })
                .collect(),
        },
        Packet::UnsubscribeAck(a) => v3::Packet::UnsubscribeAck {
            packet_id: a.packet_id,
        },
        Packet::PingResponse => v3::Packet::PingResponse,
        Packet::PingRequest => v3::Packet::PingRequest,
        Packet::Disconnect(_) | Packet::Auth(_) | Packet::Connect(_) => return None,
        Packet::Subscribe(_) | Packet::Unsubscribe(_) => return None,
    })
}

/// Maps a 5.0 CONNACK reason code to the nearest 3.1.1 return code.
fn connack_code(reason: v5::ConnectAckReason) -> v3::ConnectAckReason {
    use v3::ConnectAckReason as R3;
    use v5::ConnectAckReason as R5;
    match reason {
        R5::Success => R3::ConnectionAccepted,
        R5::UnsupportedProtocolVersion => R3::UnacceptableProtocolVersion,
        R5::ClientIdentifierNotValid => R3::IdentifierRejected,
        R5::BadUserNameOrPassword => R3::BadUserNameOrPassword,
        R5::NotAuthorized | R5::Banned | R5::BadAuthenticationMethod => R3::NotAuthorized,
        _ => R3::ServiceUnavailable,
    }
}
