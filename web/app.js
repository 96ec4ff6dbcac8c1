// roomq's browser chat: MQTT 5 over WebSocket (MQTT.js) on the same
// origin as this page, payloads as topics.md describes (CBOR by cbor-x).
// No framework: the page is small, and every update is a few DOM calls.
// How the room shows (messages with their edits, deletes and reactions;
// receipts; members) is view.js.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const utf8 = new TextDecoder();
  const V = RoomqView;

  // The broker drops a sender's typing events closer than
  // typing_min_interval_ms (1 s by default): send one every 2 s at most.
  const TYPING_EVERY_MS = 2000;
  // How long "is typing" shows without news: the broker's Message Expiry
  // for typing events.
  const TYPING_SHOWN_MS = 5000;
  const HISTORY_PAGE = 50;
  // A persistent session: messages sent while the page is away (a dropped
  // connection, a restart of the broker) come when it is back.
  const SESSION_EXPIRY_SECS = 3600;

  /** Everything about the room the page is in; null before joining. */
  let chat = null;

  function randomHex(bytes) {
    const b = new Uint8Array(bytes);
    crypto.getRandomValues(b);
    return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  }

  /** One topic level a name may be: not empty, no `/`, `+` or `#`. */
  const validLevel = (name) => name.length > 0 && !/[/+#\u0000]/.test(name);

  const firstValue = (v) => (Array.isArray(v) ? v[0] : v);

  // ---- connection status -------------------------------------------------

  function setStatus(state, text) {
    const status = $('status');
    status.dataset.state = state;
    status.textContent = text;
  }

  // ---- joining and leaving -----------------------------------------------

  async function mqttPath() {
    try {
      const config = await (await fetch('config.json', { cache: 'no-store' })).json();
      if (typeof config.mqtt_path === 'string') return config.mqtt_path;
    } catch {
      // An older broker or a proxy that serves only the page: the default.
    }
    return '/mqtt';
  }

  function loginError(text) {
    const error = $('login-error');
    error.textContent = text;
    error.hidden = !text;
  }

  async function join(event) {
    event.preventDefault();
    loginError('');
    if (typeof mqtt === 'undefined' || typeof CBOR === 'undefined') {
      loginError('The chat libraries are missing on the server: run `npm ci --prefix web` in roomq\'s folder.');
      return;
    }
    const username = $('username').value.trim();
    const password = $('password').value;
    const room = $('room').value.trim();
    const claims = RoomqActions.tokenClaims(password);
    const me = claims ? claims.sub : username;
    if (!validLevel(me)) {
      loginError('Enter your name (no "/", "+" or "#"), or a token as the password.');
      return;
    }
    if (!validLevel(room)) {
      loginError('A room name is one word without "/", "+" or "#".');
      return;
    }
    // End-to-end encryption: the room key exists before the first message
    // arrives (deriving it takes a moment, on purpose).
    let e2ee = null;
    if ($('passphrase').value) {
      setStatus('connecting', 'Deriving the room key…');
      try {
        e2ee = await RoomqE2ee.roomKey($('passphrase').value, room);
      } catch (e) {
        setStatus('offline', 'Not connected');
        loginError(`End-to-end encryption is unavailable (${e.message}): run \`npm ci --prefix web\` in roomq's folder.`);
        return;
      }
    }
    // One client id per tab and identity: a reload resumes the session.
    const idKey = `roomq.client.${me}`;
    let clientId = sessionStorage.getItem(idKey);
    if (!clientId) {
      clientId = `web-${randomHex(8)}`;
      sessionStorage.setItem(idKey, clientId);
    }
    sessionStorage.setItem('roomq.login', JSON.stringify({ username, room }));

    const url = new URL(await mqttPath(), location.href);
    url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const client = mqtt.connect(url.href, {
      protocolVersion: 5,
      clientId,
      clean: false,
      // MQTT.js sends no password without a username; with a token the
      // broker accepts its `sub` there.
      username: username || (password ? me : undefined),
      password: password || undefined,
      properties: { sessionExpiryInterval: SESSION_EXPIRY_SECS },
      keepalive: 30,
      reconnectPeriod: 1000,
      connectTimeout: 10000,
      // The page subscribes itself on every connect (below).
      resubscribe: false,
    });
    const current = {
      client,
      me,
      room,
      clientId,
      e2ee, // a RoomKey (web/e2ee.js) when the page joined with a passphrase
      historyTopic: `users/${me}/history/${room}/${clientId}`,
      modTopic: `users/${me}/mod/${room}/${clientId}`,
      // A token's claim says so; otherwise a harmless request asks the
      // broker (see askModerator).
      moderator: Array.isArray(claims?.mod_rooms) && claims.mod_rooms.includes(room),
      granted: false, // the room's subscription was granted once
      refused: false, // the broker refused this user the room: no retrying
      messages: new Map(), // seq -> message (RoomqView.message)
      applied: new Set(), // seqs of the room events applied, each once
      lastSeq: 0,
      oldestSeq: 0,
      pending: new Map(), // msg-id -> <li> shown until the broker's copy arrives
      receipts: new Map(), // reader -> seq
      receiptSent: 0,
      receiptTimer: null,
      typing: new Map(), // sender -> shown until (ms)
      typingSentAt: 0,
      presence: new Map(), // user -> presence record
      watched: new Set(), // users whose $presence the page subscribed to
      declared: null, // $rooms/{room}/members, once the broker sent it
      connects: 0,
    };
    chat = current;
    chat.actions = RoomqActions.create({
      client,
      room,
      me,
      modTopic: chat.modTopic,
      encodeBody,
      info,
      active: () => current === chat && !chat.refused,
      refusedPost: probeRefusal,
      becameModerator: () => {
        chat.moderator = true;
        for (const m of chat.messages.values()) rerender(m);
        renderMembers();
      },
    });
    $('room-title').textContent = room;
    $('me').textContent = me;
    $('messages').replaceChildren();
    $('typing').textContent = '';
    $('earlier').hidden = true;
    $('notice').hidden = true;
    $('composer').hidden = false;
    $('info').textContent = '';
    $('login').hidden = true;
    $('chat').hidden = false;
    setStatus('connecting', 'Connecting…');
    client.on('connect', (connack) => current === chat && onConnect(connack));
    client.on('message', (topic, payload, packet) => current === chat && onMessage(topic, payload, packet));
    client.on('reconnect', () => current === chat && !chat.refused && setStatus('reconnecting', 'Reconnecting…'));
    client.on('offline', () => current === chat && !chat.refused && setStatus('reconnecting', 'Connection lost, reconnecting…'));
    client.on('error', (error) => current === chat && !chat.refused && onError(error));
    renderMembers();
    $('message').focus();
  }

  function leave(reason) {
    if (!chat) return;
    chat.client.end(true);
    clearTimeout(chat.receiptTimer);
    chat = null;
    $('chat').hidden = true;
    $('login').hidden = false;
    setStatus('offline', 'Not connected');
    loginError(reason || '');
    $('password').value = '';
    $('passphrase').value = '';
  }

  /**
   * The broker will not let this user into the room (not a member,
   * banned): that does not get better by retrying. The page closes the
   * connection, says why, keeps what was read, and offers the room picker.
   */
  function refuse(text) {
    if (!chat || chat.refused) return;
    chat.refused = true;
    chat.client.end(true);
    clearTimeout(chat.receiptTimer);
    setStatus('refused', 'Not in this room');
    $('notice-text').textContent = text;
    $('notice').hidden = false;
    $('composer').hidden = true;
    $('typing').textContent = '';
    $('back').focus();
  }

  /**
   * A post was refused with 0x87 Not authorized: a ban or a mute (or the
   * membership ended). Subscribing again tells them apart: a banned user's
   * SUBSCRIBE naming the room is refused, a muted user's is granted. The
   * typing filter is already held at QoS 0, so granting it changes nothing.
   */
  function probeRefusal() {
    const current = chat;
    chat.client.subscribe(`rooms/${chat.room}/typing/+`, { qos: 0 }, (error, _, suback) => {
      if (current !== chat || chat.refused) return;
      const code = (suback || error?.packet)?.granted?.[0];
      if (code >= 0x80) refuse(`You were banned from ${chat.room} (or are no longer a member).`);
      else if (!error) info('You are muted in this room: you can read, not post.');
    });
  }

  /** A short line under the conversation: an answer, a change of state. */
  function info(text) {
    $('info').textContent = text;
  }

  function onError(error) {
    // A refused CONNECT (bad password or token, not authorized, client id
    // taken by someone else) will not get better by retrying.
    const refusals = { 134: 'wrong name, password or token', 135: 'not authorized', 133: 'client id refused' };
    if (refusals[error.code]) {
      leave(`The broker refused the login: ${refusals[error.code]}.`);
    } else {
      setStatus('reconnecting', `Connection problem (${error.message}), retrying…`);
    }
  }

  // ---- on every connect ----------------------------------------------------

  function onConnect(connack) {
    chat.connects += 1;
    $('status').dataset.connects = String(chat.connects);
    setStatus('connected', chat.connects === 1 ? 'Connected' : 'Connected again');
    const { room, me } = chat;
    const filters = {
      [`rooms/${room}/msg/+`]: { qos: 1 },
      [`rooms/${room}/typing/+`]: { qos: 0 },
      [`rooms/${room}/read/+`]: { qos: 1 },
      [`rooms/${room}/event/+`]: { qos: 1 },
      [`$rooms/${room}/members`]: { qos: 1 },
      [`${chat.historyTopic}/+`]: { qos: 1 },
      [chat.modTopic]: { qos: 1 },
    };
    chat.watched.add(me);
    for (const user of chat.watched) filters[`$presence/${user}`] = { qos: 1 };
    const current = chat;
    chat.client.subscribe(filters, (error, subscriptions, suback) => {
      if (current !== chat || chat.refused) return;
      // MQTT.js reports a refused filter as an error; the SUBACK's reason
      // codes, in the order of `subscriptions`, say which.
      const codes = (suback || error?.packet)?.granted || [];
      const index = (subscriptions || []).findIndex((s) => s.topic === `rooms/${room}/msg/+`);
      if (index >= 0 && codes[index] >= 0x80) {
        refuse(
          chat.granted
            ? `You may no longer read ${room}: you were banned, or are no longer a member.`
            : `You are not a member of ${room}.`,
        );
        return;
      }
      if (error && !codes.length) {
        setStatus('reconnecting', `Subscribing failed: ${error.message}`);
        return;
      }
      chat.granted = true;
      chat.actions.askModerator(chat.moderator);
      // The newest page on the first connect; after a reconnect whatever
      // came meanwhile (a resumed session also replays it; seq de-duplicates).
      if (chat.lastSeq === 0) requestHistory('back', {});
      else requestHistory('forward', { after: chat.lastSeq, events: true });
    });
    if (connack && !connack.sessionPresent) chat.receiptSent = 0;
  }

  // ---- incoming ------------------------------------------------------------

  function onMessage(topic, payload, packet) {
    const { room } = chat;
    const levels = topic.split('/');
    if (topic.startsWith(`${chat.historyTopic}/`)) {
      onHistory(levels[levels.length - 1], payload);
    } else if (levels[0] === 'rooms' && levels[1] === room && levels.length === 4) {
      const sender = levels[3];
      if (levels[2] === 'msg') onRoomMessage(sender, payload, packet.properties || {});
      else if (levels[2] === 'event') onRoomEvent(decode(payload), false);
      else if (levels[2] === 'typing') onTyping(sender, payload);
      else if (levels[2] === 'read') onReceipt(sender, payload);
    } else if (levels[0] === '$presence' && levels.length === 2) {
      onPresence(levels[1], payload);
    } else if (topic === `$rooms/${room}/members`) {
      const members = decode(payload);
      chat.declared = Array.isArray(members) ? members.filter((m) => typeof m === 'string') : [];
      chat.declared.forEach(watchPresence);
      renderMembers();
    } else if (topic === chat.modTopic) {
      chat.actions.answer(decode(payload), (packet.properties || {}).correlationData);
    }
  }

  const decode = RoomqActions.decode;

  function onRoomMessage(sender, payload, properties) {
    const user = properties.userProperties || {};
    const seq = Number(firstValue(user.seq));
    const prev = Number(firstValue(user.prev));
    if (!Number.isSafeInteger(seq) || seq <= 0) return;
    // `prev` above the last message the page has: something was missed.
    if (chat.lastSeq > 0 && prev > chat.lastSeq) requestHistory('forward', { after: chat.lastSeq, events: true });
    addMessage(
      V.message({
        seq,
        ts: Number(firstValue(user.ts)) || Date.now(),
        sender,
        msgId: firstValue(user['msg-id']),
        text: decodeBody(sender, payload),
      }),
    );
  }

  function onHistory(direction, payload) {
    const answer = decode(payload);
    if (!answer || !Array.isArray(answer.messages)) return;
    const fresh = new Set();
    for (const h of answer.messages) {
      // The message in its current state: it replaces what the page had.
      const m = V.fromHistory(h, h.deleted ? '' : decodeBody(String(h.sender), h.body));
      fresh.add(m.seq);
      addMessage(m, true);
    }
    // Events the page missed (`events: true`, after a reconnect): those of
    // the messages just read are already in their state.
    for (const event of Array.isArray(answer.events) ? answer.events : []) {
      if (fresh.has(Number(event?.target))) chat.applied.add(Number(event.seq));
      else onRoomEvent(event, true);
    }
    if (direction === 'back') {
      $('earlier').hidden = !answer.more;
    } else if (answer.more) {
      requestHistory('forward', { after: chat.lastSeq, events: true });
    }
  }

  /** A room event: a change to a message, or a moderation (topics.md, `room-event`). */
  function onRoomEvent(event, fromHistory) {
    if (!event || typeof event.type !== 'string' || !Number.isSafeInteger(Number(event.seq))) return;
    const seq = Number(event.seq);
    if (chat.applied.has(seq)) return;
    chat.applied.add(seq);
    const m = chat.messages.get(Number(event.target));
    if (m && V.apply(m, event, chat.me, event.type === 'edit' ? decodeBody(m.sender, event.body) : '')) {
      rerender(m);
    }
    if (!['ban', 'unban', 'mute', 'unmute'].includes(event.type) || typeof event.user !== 'string') return;
    insertItem(seq, V.renderEvent(event));
    if (event.user !== chat.me || fromHistory) {
      watchPresence(event.user);
      return;
    }
    if (event.type === 'ban') refuse(`You were banned from ${chat.room} by ${event.sender}.`);
    else if (event.type === 'mute') info(`${event.sender} muted you: you can read, not post.`);
    else if (event.type === 'unmute') info(`${event.sender} unmuted you.`);
  }

  function onTyping(sender, payload) {
    if (sender === chat.me) return;
    const event = decode(payload);
    if (!event || typeof event.typing !== 'boolean') return;
    if (event.typing) chat.typing.set(sender, Date.now() + TYPING_SHOWN_MS);
    else chat.typing.delete(sender);
    watchPresence(sender);
    renderTyping();
  }

  function onReceipt(reader, payload) {
    const receipt = decode(payload);
    if (!receipt || !Number.isSafeInteger(Number(receipt.seq))) return;
    chat.receipts.set(reader, Number(receipt.seq));
    watchPresence(reader);
    renderReceipts();
  }

  function onPresence(user, payload) {
    const presence = decode(payload);
    if (presence && typeof presence.status === 'string') chat.presence.set(user, presence);
    else chat.presence.delete(user);
    renderMembers();
  }

  /** Subscribes to a user's presence once (the page keeps it on reconnects). */
  function watchPresence(user) {
    if (!validLevel(user) || chat.watched.has(user)) return;
    chat.watched.add(user);
    chat.client.subscribe(`$presence/${user}`, { qos: 1 });
    renderMembers();
  }

  // ---- bodies: end-to-end encryption (web/e2ee.js, topics.md) -------------
  // The one place a body is made into bytes before it is published (a
  // message, an edit) and read back on receipt (live, history, an edit).

  /** A message (or edit) body to publish: sealed when the page has a passphrase. */
  function encodeBody(text) {
    return chat.e2ee ? chat.e2ee.seal(chat.me, text) : new TextEncoder().encode(text);
  }

  /** The text of a body that `sender` published (a message or an edit). */
  function decodeBody(sender, body) {
    if (!body || body.length === 0) return ''; // a deleted message's tombstone
    if (chat.e2ee) {
      const text = chat.e2ee.open(sender, body);
      return text === null ? RoomqE2ee.NOT_READABLE : text;
    }
    return RoomqE2ee.isSealed(body) ? RoomqE2ee.ENCRYPTED : utf8.decode(body);
  }

  // ---- outgoing ------------------------------------------------------------

  function requestHistory(direction, request) {
    const body = { limit: HISTORY_PAGE, ...request };
    chat.client.publish(`$history/rooms/${chat.room}`, CBOR.encode(body), {
      qos: 1,
      properties: { responseTopic: `${chat.historyTopic}/${direction}` },
    });
  }

  function send(event) {
    event.preventDefault();
    const input = $('message');
    const text = input.value.trim();
    if (!chat || !text || chat.refused) return;
    const current = chat;
    input.value = '';
    const msgId = randomHex(12);
    const item = V.render(V.message({ seq: 0, ts: Date.now(), sender: chat.me, text }), view());
    item.classList.add('pending');
    item.querySelector('time').textContent = 'sending…';
    chat.pending.set(msgId, item);
    $('messages').append(item);
    scrollToEnd(true);
    // QoS 1 with a msg-id: MQTT.js sends it again after a reconnect, and
    // the broker keeps one copy.
    chat.client.publish(
      `rooms/${chat.room}/msg/${chat.me}`,
      encodeBody(text),
      { qos: 1, properties: { userProperties: { 'msg-id': msgId } } },
      (error) => {
        if (!error) return;
        item.classList.add('failed');
        item.querySelector('time').textContent = `not sent: ${error.message}`;
        if (error.code === 0x87 && current === chat) probeRefusal();
      },
    );
  }

  /** What a message's view offers, and how each action is sent (actions.js). */
  function view() {
    return chat.actions.forMessages(chat.moderator);
  }

  function typed() {
    if (!chat || !$('message').value) return;
    const now = Date.now();
    if (now - chat.typingSentAt < TYPING_EVERY_MS || !chat.client.connected) return;
    chat.typingSentAt = now;
    chat.client.publish(`rooms/${chat.room}/typing/${chat.me}`, CBOR.encode({ typing: true }), { qos: 0 });
  }

  /** Tells the room what this user has read, once the page is seen. */
  function scheduleReceipt() {
    if (!chat || document.visibilityState !== 'visible') return;
    clearTimeout(chat.receiptTimer);
    chat.receiptTimer = setTimeout(() => {
      if (!chat || chat.lastSeq <= chat.receiptSent || !chat.client.connected) return;
      chat.receiptSent = chat.lastSeq;
      chat.client.publish(`rooms/${chat.room}/read/${chat.me}`, CBOR.encode({ seq: chat.lastSeq }), { qos: 1 });
    }, 300);
  }

  function setMyStatus() {
    if (!chat) return;
    chat.client.publish(`$presence/${chat.me}`, CBOR.encode({ status: $('my-status').value }), { qos: 1 });
  }

  // ---- rendering -----------------------------------------------------------

  /**
   * Adds a message in seq order, or (from history, in its current state)
   * replaces the one the page has.
   */
  function addMessage(m, current) {
    if (!Number.isSafeInteger(m.seq) || m.seq <= 0) return;
    const had = chat.messages.get(m.seq);
    if (had) {
      if (current) {
        chat.messages.set(m.seq, m);
        rerender(m);
      }
      return;
    }
    chat.messages.set(m.seq, m);
    const pending = m.msgId && chat.pending.get(m.msgId);
    if (pending) {
      chat.pending.delete(m.msgId);
      pending.remove();
    }
    const atEnd = nearEnd();
    insertItem(m.seq, V.render(m, view()));
    chat.lastSeq = Math.max(chat.lastSeq, m.seq);
    chat.oldestSeq = chat.oldestSeq ? Math.min(chat.oldestSeq, m.seq) : m.seq;
    if (chat.typing.delete(m.sender)) renderTyping();
    watchPresence(m.sender);
    renderReceipts();
    scrollToEnd(atEnd);
    scheduleReceipt();
  }

  function insertItem(seq, item) {
    V.insert($('messages'), seq, item);
  }

  /** Shows a message's new state (an edit, a delete, reactions) in place. */
  function rerender(m) {
    V.replace($('messages'), m.seq, () => V.render(m, view()));
  }

  function nearEnd() {
    const s = $('scroller');
    return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
  }

  function scrollToEnd(wanted) {
    if (wanted) $('scroller').scrollTop = $('scroller').scrollHeight;
  }

  function renderTyping() {
    if (!chat) return;
    $('typing').textContent = V.typingLine(chat.typing);
  }

  function renderReceipts() {
    V.renderReceipts($('messages'), chat.receipts, chat.me);
  }

  function renderMembers() {
    if (!chat) return;
    // The broker's list once it came (declared members, or who subscribed
    // to an open room); before that, whoever the page has seen.
    const names = new Set(chat.declared ? [...chat.declared, chat.me] : chat.watched);
    V.renderMembers($('members'), Array.from(names).sort(), {
      me: chat.me,
      presence: chat.presence,
      moderator: chat.moderator && !chat.refused,
      sanction: chat.actions.sanction,
    });
  }

  // ---- wiring --------------------------------------------------------------

  document.addEventListener('DOMContentLoaded', () => {
    const saved = JSON.parse(sessionStorage.getItem('roomq.login') || 'null');
    if (saved) {
      $('username').value = saved.username || '';
      $('room').value = saved.room || 'lobby';
    }
    $('login').addEventListener('submit', join);
    $('composer').addEventListener('submit', send);
    $('message').addEventListener('input', typed);
    $('leave').addEventListener('click', () => leave(''));
    $('back').addEventListener('click', () => leave(''));
    $('my-status').addEventListener('change', setMyStatus);
    $('earlier').addEventListener('click', () => chat && requestHistory('back', { before: chat.oldestSeq }));
    document.addEventListener('visibilitychange', scheduleReceipt);
    setInterval(renderTyping, 1000);
  });
})();
