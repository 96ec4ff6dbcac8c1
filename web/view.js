// roomq's browser chat: how a room shows. A message's state (its body,
// edits, a delete, reactions) and its view with the actions its viewer may
// take; read receipts; the member list. No MQTT here: app.js feeds it
// messages and room events (topics.md, *Edits, deletes and reactions*)
// and publishes the actions.
'use strict';

const RoomqView = (() => {
  /** The reactions the page offers on every message. */
  const EMOJI = ['👍', '❤️', '😂', '🎉', '👀'];

  function clock(ts) {
    return new Date(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  }

  /**
   * A message as the page keeps it. `reactions` counts per emoji; `mine`
   * the emoji this user reacted with; `reactors` who the page saw react
   * live, so a repeated reaction or a removal is counted once.
   */
  function message({ seq, ts, sender, msgId, text }) {
    return {
      seq,
      ts,
      sender,
      msgId,
      text,
      edited: 0,
      deleted: false,
      reactions: new Map(),
      mine: new Set(),
      reactors: new Map(),
    };
  }

  /** A `history-message` in its current state; `text` is its decoded body. */
  function fromHistory(h, text) {
    const m = message({ seq: Number(h.seq), ts: Number(h.ts), sender: String(h.sender), msgId: h.msg_id, text });
    m.edited = Number(h.edited) || 0;
    m.deleted = h.deleted === true;
    if (h.reactions && typeof h.reactions === 'object') {
      const entries = h.reactions instanceof Map ? h.reactions.entries() : Object.entries(h.reactions);
      for (const [emoji, count] of entries) if (Number(count) > 0) m.reactions.set(String(emoji), Number(count));
    }
    if (Array.isArray(h.mine)) for (const emoji of h.mine) m.mine.add(String(emoji));
    return m;
  }

  /**
   * Applies an `edit`, `delete` or `react` room event to its message;
   * `text` is the event's decoded body (edits). Returns whether it changed.
   */
  function apply(m, event, me, text) {
    switch (event.type) {
      case 'edit':
        if (m.deleted) return false;
        m.text = text;
        m.edited = Number(event.ts) || Date.now();
        return true;
      case 'delete':
        m.deleted = true;
        m.text = '';
        m.reactions.clear();
        m.mine.clear();
        return true;
      case 'react':
        return react(m, String(event.emoji), String(event.sender), event.remove === true, me);
      default:
        return false;
    }
  }

  function react(m, emoji, who, remove, me) {
    if (!m.reactors.has(emoji)) m.reactors.set(emoji, new Set());
    const seen = m.reactors.get(emoji);
    const had = seen.has(who) || (who === me && m.mine.has(emoji));
    const count = m.reactions.get(emoji) || 0;
    if (remove) {
      // A removal the page cannot place (a reaction from before the page
      // loaded) still takes one off the count history gave.
      if (!had && (who === me || count === 0)) return false;
      seen.delete(who);
      if (who === me) m.mine.delete(emoji);
      if (count <= 1) m.reactions.delete(emoji);
      else m.reactions.set(emoji, count - 1);
      return true;
    }
    if (had) return false; // reacting twice is one reaction
    seen.add(who);
    if (who === me) m.mine.add(emoji);
    m.reactions.set(emoji, count + 1);
    return true;
  }

  function button(text, className, onClick) {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = className;
    b.textContent = text;
    b.addEventListener('click', onClick);
    return b;
  }

  /**
   * The list item of a message. `view`: `me`, `moderator` (may delete any
   * message), and the actions `edit(m, text)`, `remove(m)`, `react(m,
   * emoji, remove)`.
   */
  function render(m, view) {
    const item = document.createElement('li');
    item.dataset.sender = m.sender;
    if (m.seq) item.dataset.seq = String(m.seq);
    if (m.sender === view.me) item.classList.add('mine');
    if (m.deleted) item.classList.add('deleted');
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
    if (m.edited && !m.deleted) {
      const edited = document.createElement('span');
      edited.className = 'edited';
      edited.title = `edited ${new Date(m.edited).toLocaleString()}`;
      edited.textContent = '(edited)';
      meta.append(edited);
    }
    const body = document.createElement('p');
    body.className = 'body';
    body.textContent = m.deleted ? 'message deleted' : m.text;
    item.append(meta, body);
    if (m.seq && !m.deleted) item.append(reactions(m, view), actions(m, view, item));
    const receipts = document.createElement('p');
    receipts.className = 'receipts';
    item.append(receipts);
    return item;
  }

  /** The counts, each a toggle of this user's own reaction. */
  function reactions(m, view) {
    const row = document.createElement('div');
    row.className = 'reactions';
    for (const [emoji, count] of m.reactions) {
      const mine = m.mine.has(emoji);
      const b = button(`${emoji} ${count}`, 'reaction', () => view.react(m, emoji, mine));
      b.dataset.emoji = emoji;
      b.dataset.count = String(count);
      b.setAttribute('aria-pressed', String(mine));
      b.title = mine ? 'Take your reaction back' : 'React with this too';
      row.append(b);
    }
    return row;
  }

  function actions(m, view, item) {
    const row = document.createElement('div');
    row.className = 'actions';
    const react = document.createElement('span');
    react.className = 'react';
    for (const emoji of EMOJI) {
      const b = button(emoji, 'emoji', () => view.react(m, emoji, m.mine.has(emoji)));
      b.dataset.emoji = emoji;
      b.setAttribute('aria-label', `React with ${emoji}`);
      react.append(b);
    }
    row.append(react);
    const own = m.sender === view.me;
    if (own) row.append(button('Edit', 'edit', () => editForm(m, view, item)));
    if (own || view.moderator) {
      row.append(
        button('Delete', 'delete', () => {
          const whose = own ? 'your message' : `${m.sender}'s message`;
          if (confirm(`Delete ${whose}? Its text is removed for everyone.`)) view.remove(m);
        }),
      );
    }
    return row;
  }

  /** Replaces the body by a field with its text; Enter saves, Escape cancels. */
  function editForm(m, view, item) {
    const body = item.querySelector('.body');
    if (!body) return;
    const form = document.createElement('form');
    form.className = 'edit';
    const input = document.createElement('input');
    input.value = m.text;
    input.maxLength = 4000;
    input.setAttribute('aria-label', 'New text');
    const cancel = button('Cancel', 'cancel', () => form.replaceWith(body));
    const save = document.createElement('button');
    save.type = 'submit';
    save.textContent = 'Save';
    form.append(input, save, cancel);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const text = input.value.trim();
      form.replaceWith(body);
      if (text && text !== m.text) view.edit(m, text);
    });
    input.addEventListener('keydown', (event) => event.key === 'Escape' && form.replaceWith(body));
    body.replaceWith(form);
    input.focus();
  }

  /** A moderation event (ban, mute, and their end) as a line in the conversation. */
  function renderEvent(event) {
    const item = document.createElement('li');
    item.className = 'event';
    item.dataset.seq = String(event.seq);
    item.dataset.kind = 'event';
    const done = { ban: 'banned', unban: 'lifted the ban on', mute: 'muted', unmute: 'unmuted' }[event.type];
    const secs = Number(event.secs);
    const length = secs > 0 ? ` for ${secs >= 3600 ? `${Math.round(secs / 360) / 10} h` : `${Math.ceil(secs / 60)} min`}` : '';
    item.textContent = `${event.sender} ${done} ${event.user}${length} · ${clock(Number(event.ts) || Date.now())}`;
    return item;
  }

  /** Puts an item in seq order, before any message still being sent. */
  function insert(list, seq, item) {
    const after = Array.from(list.children).find((li) => !li.dataset.seq || Number(li.dataset.seq) > seq);
    list.insertBefore(item, after || null);
  }

  /**
   * Replaces message `seq`'s item by `make()` (its new state), keeping its
   * receipts line; not while its text is being edited.
   */
  function replace(list, seq, make) {
    const old = list.querySelector(`li[data-seq="${seq}"]:not([data-kind])`);
    if (!old || old.querySelector('form.edit')) return;
    const item = make();
    item.querySelector('.receipts').textContent = old.querySelector('.receipts').textContent;
    old.replaceWith(item);
  }

  /** "bob is typing…" from sender -> shown until (ms); drops the stale ones. */
  function typingLine(typing) {
    const now = Date.now();
    for (const [sender, until] of typing) if (until <= now) typing.delete(sender);
    const names = Array.from(typing.keys()).sort();
    return names.length === 0 ? '' : names.length === 1 ? `${names[0]} is typing…` : `${names.join(', ')} are typing…`;
  }

  /**
   * "Seen by …" under the last of this user's own messages that each other
   * reader has read (a reader's receipt covers every message up to its seq).
   */
  function renderReceipts(list, receipts, me) {
    const mine = Array.from(list.children).filter((li) => li.dataset.seq && li.dataset.sender === me);
    const readers = new Map(); // <li> -> names
    for (const [reader, seq] of receipts) {
      if (reader === me) continue;
      let last = null;
      for (const li of mine) if (Number(li.dataset.seq) <= seq) last = li;
      if (!last) continue;
      if (!readers.has(last)) readers.set(last, []);
      readers.get(last).push(reader);
    }
    for (const li of list.children) {
      const names = readers.get(li);
      const shown = li.querySelector('.receipts');
      if (shown) shown.textContent = names ? `Seen by ${names.sort().join(', ')}` : '';
    }
  }

  /**
   * The member list: each name with its presence; for a moderator, Mute
   * and Ban on the others. `room`: `me`, `presence` (user -> record),
   * `moderator`, `sanction(op, user)`.
   */
  function renderMembers(list, names, room) {
    list.replaceChildren();
    for (const name of names) {
      const presence = room.presence.get(name);
      const status = presence ? presence.status : 'offline';
      const item = document.createElement('li');
      item.dataset.user = name;
      item.dataset.status = status;
      const dot = document.createElement('span');
      dot.className = 'dot';
      dot.setAttribute('aria-hidden', 'true');
      const label = document.createElement('span');
      label.textContent = name === room.me ? `${name} (you)` : name;
      const text = document.createElement('span');
      text.className = 'presence';
      text.textContent =
        status === 'offline' && presence && presence.last_seen
          ? `offline, last seen ${clock(Number(presence.last_seen))}`
          : status;
      item.append(dot, label, text);
      if (room.moderator && name !== room.me) {
        const tools = document.createElement('span');
        tools.className = 'mod-tools';
        for (const [op, text] of [
          ['mute', 'Mute'],
          ['ban', 'Ban'],
        ]) {
          const b = button(text, op, () => room.sanction(op, name));
          b.setAttribute('aria-label', `${text} ${name}`);
          tools.append(b);
        }
        item.append(tools);
      }
      list.append(item);
    }
  }

  return { message, fromHistory, apply, render, renderEvent, insert, replace, typingLine, renderReceipts, renderMembers };
})();
