// roomq's browser chat: MQTT 5 over WebSocket (MQTT.js) on the same
// origin as this page, payloads as topics.md describes (CBOR by cbor-x).
// No framework: the page is small, and every update is a few DOM calls.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const utf8 = new TextDecoder();

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

  /** A JWT's `sub`, which the broker takes as the identity; null if `secret` is no JWT. */
  function tokenSubject(secret) {
    const parts = secret.split('.');
    if (parts.length !== 3) return null;
    try {
      const claims = JSON.parse(atob(parts[1].replace(/-/g, '+').replace(/_/g, '/')));
      return typeof claims.sub === 'string' && claims.sub ? claims.sub : null;
    } catch {
      return null;
    }
  }

  /** One topic level a name may be: not empty, no `/`, `+` or `#`. */
  const validLevel = (name) => name.length > 0 && !/[/+#\u0000]/.test(name);

  function firstValue(v) {
    return Array.isArray(v) ? v[0] : v;
  }

  function clock(ts) {
    return new Date(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  }

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
    const me = tokenSubject(password) || username;
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
    chat = {
      client,
      me,
      room,
      clientId,
      e2ee, // a RoomKey (web/e2ee.js) when the page joined with a passphrase
      historyTopic: `users/${me}/history/${room}/${clientId}`,
      messages: new Map(), // seq -> message
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
      declared: [], // $rooms/{room}/members
      connects: 0,
    };
    $('room-title').textContent = room;
    $('me').textContent = me;
    $('messages').replaceChildren();
    $('typing').textContent = '';
    $('earlier').hidden = true;
    $('login').hidden = true;
    $('chat').hidden = false;
    setStatus('connecting', 'Connecting…');
    const current = chat;
    client.on('connect', (connack) => current === chat && onConnect(connack));
    client.on('message', (topic, payload, packet) => current === chat && onMessage(topic, payload, packet));
    client.on('reconnect', () => current === chat && setStatus('reconnecting', 'Reconnecting…'));
    client.on('offline', () => current === chat && setStatus('reconnecting', 'Connection lost, reconnecting…'));
    client.on('error', (error) => current === chat && onError(error));
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
      [`$rooms/${room}/members`]: { qos: 1 },
      [`${chat.historyTopic}/+`]: { qos: 1 },
    };
    chat.watched.add(me);
    for (const user of chat.watched) filters[`$presence/${user}`] = { qos: 1 };
    const current = chat;
    chat.client.subscribe(filters, (error, granted) => {
      if (current !== chat) return;
      if (error) {
        setStatus('reconnecting', `Subscribing failed: ${error.message}`);
        return;
      }
      const refused = (granted || []).find((g) => g.topic === `rooms/${room}/msg/+` && g.qos >= 0x80);
      if (refused) {
        leave(`You are not a member of room "${room}".`);
        return;
      }
      // The newest page on the first connect; after a reconnect whatever
      // came meanwhile (a resumed session also replays it; seq de-duplicates).
      if (chat.lastSeq === 0) requestHistory('back', {});
      else requestHistory('forward', { after: chat.lastSeq });
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
      else if (levels[2] === 'typing') onTyping(sender, payload);
      else if (levels[2] === 'read') onReceipt(sender, payload);
    } else if (levels[0] === '$presence' && levels.length === 2) {
      onPresence(levels[1], payload);
    } else if (topic === `$rooms/${room}/members`) {
      const members = decode(payload);
      chat.declared = Array.isArray(members) ? members.filter((m) => typeof m === 'string') : [];
      chat.declared.forEach(watchPresence);
      renderMembers();
    }
  }

  function decode(payload) {
    if (!payload || payload.length === 0) return null;
    try {
      return CBOR.decode(payload);
    } catch {
      return null;
    }
  }

  function onRoomMessage(sender, payload, properties) {
    const user = properties.userProperties || {};
    const seq = Number(firstValue(user.seq));
    const prev = Number(firstValue(user.prev));
    if (!Number.isSafeInteger(seq) || seq <= 0) return;
    // `prev` above the last message the page has: something was missed.
    if (chat.lastSeq > 0 && prev > chat.lastSeq) requestHistory('forward', { after: chat.lastSeq });
    addMessage({
      seq,
      ts: Number(firstValue(user.ts)) || Date.now(),
      sender,
      msgId: firstValue(user['msg-id']),
      text: decodeBody(sender, payload),
    });
  }

  function onHistory(direction, payload) {
    const answer = decode(payload);
    if (!answer || !Array.isArray(answer.messages)) return;
    for (const m of answer.messages) {
      addMessage({ seq: Number(m.seq), ts: Number(m.ts), sender: String(m.sender), msgId: m.msg_id, text: decodeBody(String(m.sender), m.body) });
    }
    if (direction === 'back') {
      $('earlier').hidden = !answer.more;
    } else if (answer.more) {
      requestHistory('forward', { after: chat.lastSeq });
    }
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

  /** A message (or edit) body to publish: sealed when the page has a passphrase. */
  function encodeBody(text) {
    return chat.e2ee ? chat.e2ee.seal(chat.me, text) : text;
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
    if (!chat || !text) return;
    input.value = '';
    const msgId = randomHex(12);
    const item = messageItem({ seq: 0, ts: Date.now(), sender: chat.me, text });
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
      },
    );
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

  function messageItem(m) {
    const item = document.createElement('li');
    item.dataset.sender = m.sender;
    if (m.seq) item.dataset.seq = String(m.seq);
    if (m.sender === chat.me) item.classList.add('mine');
    const meta = document.createElement('div');
    meta.className = 'meta';
    const sender = document.createElement('span');
    sender.className = 'sender';
    sender.textContent = m.sender;
    const time = document.createElement('time');
    time.dateTime = new Date(m.ts).toISOString();
    time.title = new Date(m.ts).toLocaleString();
    time.textContent = clock(m.ts);
    meta.append(sender, time);
    const body = document.createElement('p');
    body.className = 'body';
    body.textContent = m.text;
    const receipts = document.createElement('p');
    receipts.className = 'receipts';
    item.append(meta, body, receipts);
    return item;
  }

  function addMessage(m) {
    if (!Number.isSafeInteger(m.seq) || m.seq <= 0 || chat.messages.has(m.seq)) return;
    chat.messages.set(m.seq, m);
    const pending = m.msgId && chat.pending.get(m.msgId);
    if (pending) {
      chat.pending.delete(m.msgId);
      pending.remove();
    }
    const atEnd = nearEnd();
    const item = messageItem(m);
    // In seq order, before any message still being sent.
    const list = $('messages');
    const after = Array.from(list.children).find((li) => !li.dataset.seq || Number(li.dataset.seq) > m.seq);
    list.insertBefore(item, after || null);
    chat.lastSeq = Math.max(chat.lastSeq, m.seq);
    chat.oldestSeq = chat.oldestSeq ? Math.min(chat.oldestSeq, m.seq) : m.seq;
    if (chat.typing.delete(m.sender)) renderTyping();
    watchPresence(m.sender);
    renderReceipts();
    scrollToEnd(atEnd);
    scheduleReceipt();
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
    const now = Date.now();
    for (const [sender, until] of chat.typing) if (until <= now) chat.typing.delete(sender);
    const names = Array.from(chat.typing.keys()).sort();
    $('typing').textContent =
      names.length === 0 ? '' : names.length === 1 ? `${names[0]} is typing…` : `${names.join(', ')} are typing…`;
  }

  /**
   * "Seen by …" under the last of this user's own messages that each other
   * reader has read (a reader's receipt covers every message up to its seq).
   */
  function renderReceipts() {
    const mine = Array.from($('messages').children).filter((li) => li.dataset.seq && li.dataset.sender === chat.me);
    const readers = new Map(); // <li> -> names
    for (const [reader, seq] of chat.receipts) {
      if (reader === chat.me) continue;
      let last = null;
      for (const li of mine) if (Number(li.dataset.seq) <= seq) last = li;
      if (!last) continue;
      if (!readers.has(last)) readers.set(last, []);
      readers.get(last).push(reader);
    }
    for (const li of $('messages').children) {
      const names = readers.get(li);
      const receipts = li.querySelector('.receipts');
      if (receipts) receipts.textContent = names ? `Seen by ${names.sort().join(', ')}` : '';
    }
  }

  function renderMembers() {
    if (!chat) return;
    const names = new Set([...chat.declared, ...chat.watched]);
    const list = $('members');
    list.replaceChildren();
    for (const name of Array.from(names).sort()) {
      const presence = chat.presence.get(name);
      const status = presence ? presence.status : 'offline';
      const item = document.createElement('li');
      item.dataset.user = name;
      item.dataset.status = status;
      const dot = document.createElement('span');
      dot.className = 'dot';
      dot.setAttribute('aria-hidden', 'true');
      const label = document.createElement('span');
      label.textContent = name === chat.me ? `${name} (you)` : name;
      const text = document.createElement('span');
      text.className = 'presence';
      text.textContent =
        status === 'offline' && presence && presence.last_seen
          ? `offline, last seen ${clock(Number(presence.last_seen))}`
          : status;
      item.append(dot, label, text);
      list.append(item);
    }
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
    $('my-status').addEventListener('change', setMyStatus);
    $('earlier').addEventListener('click', () => chat && requestHistory('back', { before: chat.oldestSeq }));
    document.addEventListener('visibilitychange', scheduleReceipt);
    setInterval(renderTyping, 1000);
  });
})();
