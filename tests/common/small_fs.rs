//! A small file system that really fills (a tmpfs; mounting needs root),
//! and room posts to fill it with, for the full-disk tests.

use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{Packet, PublishAckReason};

use super::{publish, Got, Raw};

/// A small file system (a tmpfs of a few MiB), unmounted when dropped: a
/// disk that really fills.
pub struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    /// Mounts a tmpfs of `bytes`; `None` (with the reason printed) where
    /// this machine cannot (mounting needs root), except under CI, where
    /// a skip would hide a broken set-up.
    pub fn mount(bytes: u64) -> Option<SmallFs> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "roomq-test"])
            .arg(dir.path())
            .output()
            .is_ok_and(|o| o.status.success());
        if !mounted {
            assert!(
                std::env::var_os("CI").is_none(),
                "cannot mount a tmpfs under CI (needs root)"
            );
            println!("full_disk: skipped: mounting a tmpfs needs root");
            return None;
        }
        Some(SmallFs { dir })
    }

    /// The data directory inside it.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// Fills what is left with a file (until ENOSPC); returns its path.
    pub fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.dir.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 4096];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
        path
    }

    /// `fill`, then gives `bytes` of it back; returns the filler's path.
    pub fn fill_leaving(&self, bytes: u64) -> std::path::PathBuf {
        let path = self.fill();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let len = file.metadata().unwrap().len();
        file.set_len(len.saturating_sub(bytes)).unwrap();
        path
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .output();
    }
}

/// A QoS 1 room post of `body` with packet id `id`.
pub fn room_post(id: u16, body: &bytes::Bytes) -> Packet {
    let mut p = publish("rooms/ops/msg/writer", b"", QoS::AtLeastOnce, Some(id));
    p.payload = body.clone();
    Packet::Publish(Box::new(p))
}

/// Reads the next PUBACK, skipping other packets.
pub async fn next_puback(client: &mut Raw) -> rmqtt_codec::v5::PublishAck {
    loop {
        match client.recv5().await {
            Got::Packet(Packet::PublishAck(ack)) => return ack,
            Got::Packet(_) => {}
            other => panic!("expected a PUBACK, got {other:?}"),
        }
    }
}

/// Posts `body` until one is refused with 0x97 (every answer before it
/// a success); returns the next packet id.
pub async fn post_until_refused(writer: &mut Raw, body: &bytes::Bytes, mut id: u16) -> u16 {
    loop {
        id += 1;
        assert!(id < 100, "posts on a full disk were still stored");
        writer.send5(room_post(id, body)).await;
        match next_puback(writer).await.reason_code {
            PublishAckReason::Success => {}
            PublishAckReason::QuotaExceeded => return id,
            other => panic!("post {id} got {other:?}, not Success or 0x97"),
        }
    }
}
