// End-to-end encryption of chat bodies in the browser, in the format
// topics.md fixes (*End-to-end encryption (clients only)*), the same as
// examples/common/e2ee.rs: a room key from Argon2id over the passphrase
// and the room name, bodies sealed with XChaCha20-Poly1305. The broker
// never sees the passphrase or the key.
//
// libsodium (npm libsodium-wrappers-sumo, served from node_modules like
// MQTT.js) is loaded only when someone joins with a passphrase: 1.3 MB
// that a page without encryption does not need.
'use strict';

(() => {
  const MARKER = new TextEncoder().encode('rqe1');
  const NONCE_LEN = 24;
  const TAG_LEN = 16;
  // Argon2id's cost, as topics.md fixes it (libsodium's Argon2id always
  // runs one lane, the parallelism topics.md names).
  const MEMORY_BYTES = 19456 * 1024;
  const ITERATIONS = 2;
  const encoder = new TextEncoder();
  // fatal: a body that opens but is no UTF-8 is shown as not readable.
  const decoder = new TextDecoder('utf-8', { fatal: true });

  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const script = document.createElement('script');
      script.src = src;
      script.onload = resolve;
      script.onerror = () => reject(new Error(`${src} did not load`));
      document.head.append(script);
    });
  }

  let loading = null;
  /** libsodium, loaded once; a failed load is tried again on the next join. */
  function sodium() {
    if (!loading) {
      loading = (async () => {
        if (typeof window.sodium === 'undefined') {
          await loadScript('vendor/libsodium-sumo.js');
          await loadScript('vendor/libsodium-wrappers-sumo.js');
        }
        await window.sodium.ready;
        return window.sodium;
      })();
      loading.catch(() => {
        loading = null;
      });
    }
    return loading;
  }

  function concat(...parts) {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  /** room || 0x00 || sender: a body moved to another room or sender does not open. */
  const associatedData = (room, sender) => concat(encoder.encode(room), [0], encoder.encode(sender));

  const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');

  /** The key of one room, derived from the passphrase its members share. */
  class RoomKey {
    constructor(na, room, key) {
      this.na = na;
      this.room = room;
      this.key = key;
    }

    /** The key's bytes as hex (for the test vector). */
    hex() {
      return hex(this.key);
    }

    /** `text` (a string) sealed for the room as sent by `sender`. */
    seal(sender, text) {
      return this.sealWithNonce(sender, this.na.randombytes_buf(NONCE_LEN), text);
    }

    /** `seal` with a given nonce: for the test vector only. */
    sealWithNonce(sender, nonce, text) {
      const sealed = this.na.crypto_aead_xchacha20poly1305_ietf_encrypt(
        encoder.encode(text),
        associatedData(this.room, sender),
        null,
        nonce,
        this.key,
      );
      return concat(MARKER, nonce, sealed);
    }

    /** The text `sender` sealed in `body`, or null when it does not open. */
    open(sender, body) {
      const bytes = body instanceof Uint8Array ? body : new Uint8Array(body);
      if (!isSealed(bytes) || bytes.length < MARKER.length + NONCE_LEN + TAG_LEN) return null;
      const nonce = bytes.subarray(MARKER.length, MARKER.length + NONCE_LEN);
      try {
        const plain = this.na.crypto_aead_xchacha20poly1305_ietf_decrypt(
          null,
          bytes.subarray(MARKER.length + NONCE_LEN),
          associatedData(this.room, sender),
          nonce,
          this.key,
        );
        return decoder.decode(plain);
      } catch {
        return null;
      }
    }
  }

  /** Whether `bytes` starts with the sealed marker. */
  function isSealed(bytes) {
    return bytes.length >= MARKER.length && MARKER.every((b, i) => bytes[i] === b);
  }

  /**
   * The room key for `passphrase` in `room`: Argon2id over the passphrase,
   * salted with the first 16 bytes of SHA-256("roomq-e2ee-v1" || 0 || room).
   * Takes a moment on purpose; derive once per join.
   */
  async function roomKey(passphrase, room) {
    const na = await sodium();
    const salt = na
      .crypto_hash_sha256(concat(encoder.encode('roomq-e2ee-v1'), [0], encoder.encode(room)))
      .subarray(0, 16);
    const key = na.crypto_pwhash(
      32,
      encoder.encode(passphrase),
      salt,
      ITERATIONS,
      MEMORY_BYTES,
      na.crypto_pwhash_ALG_ARGON2ID13,
    );
    return new RoomKey(na, room, key);
  }

  window.RoomqE2ee = {
    roomKey,
    isSealed: (body) => isSealed(body instanceof Uint8Array ? body : new Uint8Array(body)),
    hex,
    fromHex: (text) => new Uint8Array((text.match(/../g) || []).map((b) => parseInt(b, 16))),
    NOT_READABLE: '[not readable: wrong passphrase or not encrypted]',
    ENCRYPTED: '[encrypted: join with the room\'s passphrase to read it]',
  };
})();
