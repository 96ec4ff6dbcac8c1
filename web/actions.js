// roomq's browser chat: what a user does to messages and members, as
// topics.md has it: edit, delete and react (`rooms/{room}/edit|delete|
// react/{me}`), and a moderator's delete, ban and mute (`$rooms/{room}/mod`,
// answered on a Response Topic). What changed shows when its room event
// comes back; a refusal or an answer shows through `info`. Also the CBOR
// and token reading app.js needs: who a token names, and whether it
// moderates the room.
'use strict';

const RoomqActions = (() => {
  /** CBOR with byte strings as plain `bstr` (cbor-x may tag a Uint8Array). */
  let encoder = null;
  function cbor(value) {
    if (!encoder) encoder = new CBOR.Encoder({ tagUint8Array: false, useRecords: false });
    return encoder.encode(value);
  }

  /**
   * A JWT's claims when `secret` is one with a `sub` (the broker takes it
   * as the identity; `mod_rooms` names the rooms it moderates); else null.
   */
  function tokenClaims(secret) {
    const parts = secret.split('.');
    if (parts.length !== 3) return null;
    try {
      const claims = JSON.parse(atob(parts[1].replace(/-/g, '+').replace(/_/g, '/')));
      return typeof claims.sub === 'string' && claims.sub ? claims : null;
    } catch {
      return null;
    }
  }

  /** A CBOR payload, or null when it is empty or not CBOR. */
  function decode(payload) {
    if (!payload || payload.length === 0) return null;
    try {
      return CBOR.decode(payload);
    } catch {
      return null;
    }
  }

  /**
   * `ctx`: `client` (MQTT.js), `room`, `me`, `modTopic` (where answers
   * come), `encodeBody(text)`, `info(text)`, `active()` (false once the
   * room was refused), `refusedPost()` (a 0x87: banned or muted?),
   * `becameModerator()`.
   */
  function create(ctx) {
    const requests = new Map(); // correlation -> what an `ok` answer means
    let asked = false;
    let moderator = false;

    /** A request about a message at QoS 1; a refusal shows. */
    function change(kind, request, what) {
      if (!ctx.active()) return;
      ctx.client.publish(`rooms/${ctx.room}/${kind}/${ctx.me}`, cbor(request), { qos: 1 }, (error) => {
        if (!error || !ctx.active()) return;
        const reasons = { 0x87: 'not allowed', 0x99: 'no such message', 0x97: 'too many' };
        ctx.info(`Could not ${what}: ${reasons[error.code] || error.message}.`);
        if (error.code === 0x87) ctx.refusedPost();
      });
    }

    /** A `mod-request`; its answer says `done` when it holds (null: the probe). */
    function moderate(request, done) {
      if (!ctx.active()) return;
      const correlation = Array.from(crypto.getRandomValues(new Uint8Array(8)), (x) => x.toString(16)).join('');
      requests.set(correlation, done);
      ctx.client.publish(`$rooms/${ctx.room}/mod`, cbor(request), {
        qos: 1,
        properties: { responseTopic: ctx.modTopic, correlationData: new TextEncoder().encode(correlation) },
      });
    }

    /**
     * Without a token's `mod_rooms`, asks the broker once whether this
     * user moderates the room: a `delete` of seq 0 (never a message) is
     * answered "no such message" to a moderator and "not a moderator" to
     * anyone else, and changes nothing.
     */
    function askModerator(known) {
      moderator = moderator || known;
      if (moderator || asked) return;
      asked = true;
      moderate({ op: 'delete', seq: 0 }, null);
    }

    /** A `mod-response` on `modTopic`. */
    function answer(response, correlationData) {
      if (!response || typeof response.ok !== 'boolean' || !correlationData) return;
      const correlation = new TextDecoder().decode(correlationData);
      if (!requests.has(correlation)) return;
      const done = requests.get(correlation);
      requests.delete(correlation);
      if (done === null) {
        if (response.ok || response.error !== 'not a moderator') {
          moderator = true;
          ctx.becameModerator();
        }
      } else {
        ctx.info(response.ok ? `Done: ${done}.` : `Refused: ${response.error || 'no reason given'}.`);
      }
    }

    function sanction(op, user) {
      const what = op === 'ban' ? 'banned from' : 'muted in';
      if (!confirm(`${op === 'ban' ? 'Ban' : 'Mute'} ${user} in ${ctx.room} until lifted?`)) return;
      moderate({ op, user }, `${user} is ${what} ${ctx.room}`);
    }

    /** What a message's view offers (RoomqView.render), and how each is sent. */
    function forMessages(isModerator) {
      return {
        me: ctx.me,
        moderator: isModerator,
        edit: (m, text) => change('edit', { seq: m.seq, body: ctx.encodeBody(text) }, 'edit the message'),
        remove: (m) =>
          m.sender === ctx.me
            ? change('delete', { seq: m.seq }, 'delete the message')
            : moderate({ op: 'delete', seq: m.seq }, `message ${m.seq} is deleted`),
        react: (m, emoji, remove) =>
          change('react', remove ? { seq: m.seq, emoji, remove: true } : { seq: m.seq, emoji }, 'react'),
      };
    }

    return { askModerator, answer, sanction, forMessages };
  }

  return { create, decode, tokenClaims };
})();
