// The demo chat page: one RingcastClient (clients/js/ringcast.js) driven by a small UI.
// It shows the rooms joined, their messages (each once, in seq order), the connection state
// and worker, a notice when a resume recovered missed messages, and the room's members: read
// with `presence` after every (re)join, kept current by `presenceDiff` events (read again when a
// diff is truncated). Where the server answers PRESENCE_DISABLED, the panel says so in one line
// and lists what this page has seen instead (itself and every sender of a message it received).
// A member is named by the `name` of its messages (pages without a token have no other name).
// Query parameters: ?name=NAME&room=ROOM joins at once (several rooms: room=a&room=b).
import { PRESENCE_DISABLED, RingcastClient, State } from "/clients/ringcast.js";

const $ = (selector) => document.querySelector(selector);
const params = new URLSearchParams(location.search);
const client = new RingcastClient(location.origin);
const members = new Map(); // room -> Set of names seen in it (what the panel shows without presence)
const rosters = new Map(); // room -> Roster: its members by presence
const names = new Map(); // a member's `user` (a message's `from`) -> the name its messages carry
const GUEST_ID_CHARS = 8; // a member that never spoke is shown as "guest" and this much of its id
// Members of a worker that died without a goodbye get no leave diff: they drop out of `presence`
// answers within the server's presence_ttl_s, and out of this panel at the next read, at most this late.
const PRESENCE_REREAD_MS = 30000;

/** One room's members as presence says. */
class Roster {
  constructor() {
    this.members = null; // Map conn -> {user, conn, info, worker}; null until the first read answers
    this.disabled = false; // the server answered PRESENCE_DISABLED
    this.complete = true; // the last read listed every member
    this.buffered = null; // diffs that arrived while a read was in flight, applied again on its answer
    this.generation = 0; // the newest read: an older one's answer is dropped
  }

  apply(diff) {
    if (!this.members) return;
    for (const m of Array.isArray(diff.left) ? diff.left : []) this.members.delete(m.conn);
    for (const m of Array.isArray(diff.joined) ? diff.joined : []) this.members.set(m.conn, m);
  }
}
let selected = null; // the room the composer publishes to
let me = params.get("name") || "";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function showError(text) {
  $("#errors").append(el("li", {}, text));
}

function showNotice(text, kind = "") {
  $("#notices").append(el("li", { class: kind }, text));
}

function seen(room, name) {
  if (!members.has(room)) members.set(room, new Set());
  members.get(room).add(name);
  if (room === selected) renderMembers();
}

function memberName(member) {
  if (member.conn === client.connectionId) return `${me} (you)`;
  const info = member.info && typeof member.info === "object" ? member.info : {};
  const name = names.get(member.user) ?? (typeof info.name === "string" ? info.name : null);
  return name ?? `guest ${String(member.user).slice(0, GUEST_ID_CHARS)}`;
}

function renderMembers() {
  const list = $("#members");
  const note = $("#members-note");
  const roster = rosters.get(selected);
  list.replaceChildren();
  if (roster && roster.members) {
    note.textContent = roster.complete ? "In this room now." : "In this room now (too many to list them all).";
    list.dataset.source = "presence";
    for (const name of [...roster.members.values()].map(memberName).sort()) list.append(el("li", {}, name));
    return;
  }
  list.dataset.source = "seen";
  note.textContent = roster && roster.disabled
    ? "No presence on this server for this room: showing you and everyone whose message this page received."
    : "Seen in this room by this page: you, and everyone whose message it received.";
  for (const name of [...(members.get(selected) || [])].sort()) {
    list.append(el("li", {}, name === me ? `${name} (you)` : name));
  }
}

/** Read the room's members, then apply the diffs that arrive meanwhile (after every (re)join, or a truncated diff). */
async function readPresence(room) {
  if (!rosters.has(room)) rosters.set(room, new Roster());
  const roster = rosters.get(room);
  const generation = ++roster.generation;
  roster.buffered = [];
  let reply = null;
  let failure = null;
  try {
    reply = await client.presence(room);
  } catch (error) {
    failure = error;
  }
  if (generation !== roster.generation || rosters.get(room) !== roster) return; // a newer read, or the room was left
  const buffered = roster.buffered;
  roster.buffered = null;
  if (failure) {
    if (failure.code === PRESENCE_DISABLED) roster.disabled = true;
    else if (failure.code) showError(`members of ${room}: ${failure.message}`);
    // else the connection dropped: the re-join reads again
  } else {
    roster.disabled = false;
    roster.complete = reply.complete !== false;
    roster.members = new Map((reply.members || []).map((m) => [m.conn, m]));
    for (const diff of buffered) roster.apply(diff);
  }
  if (room === selected) renderMembers();
}

function renderRooms() {
  const list = $("#rooms");
  list.replaceChildren();
  for (const room of client.rooms) {
    const select = el("button", { type: "button", class: "select" }, room);
    select.onclick = () => select_(room);
    const leave = el("button", { type: "button", class: "leave", title: `leave ${room}` }, "leave");
    leave.onclick = () => leaveRoom(room);
    list.append(el("li", { class: room === selected ? "selected" : "", "data-room": room }, select, leave));
  }
}

function select_(room) {
  selected = room;
  for (const item of document.querySelectorAll("#messages li")) item.classList.toggle("hidden", item.dataset.room !== room);
  $("#text").disabled = $("#send").disabled = room === null;
  renderRooms();
  renderMembers();
}

async function joinRoom(room) {
  if (client.rooms.includes(room)) return select_(room);
  seen(room, me);
  try {
    const pending = client.join(room);
    select_(room);
    await pending;
  } catch (error) {
    showError(`could not join ${room}: ${error.message}`);
  }
  select_(client.rooms.includes(room) ? room : client.rooms[0] ?? null);
}

async function leaveRoom(room) {
  try {
    await client.leave(room);
  } catch (error) {
    showError(`leave ${room}: ${error.message}`);
  }
  rosters.delete(room);
  select_(client.rooms[0] ?? null);
}

client.addEventListener("state", ({ detail }) => {
  const state = $("#state");
  state.dataset.state = detail.state;
  if (detail.state === State.WAITING) {
    state.textContent = `reconnecting in ${(detail.delayMs / 1000).toFixed(1)} s (${detail.reason})`;
  } else if (detail.state === State.CONNECTED) {
    state.textContent = "connected";
  } else {
    state.textContent = detail.state;
  }
  $("#worker").textContent = detail.state === State.CONNECTED ? client.workerId || detail.url || "" : "";
  if (detail.state === State.CLOSED && detail.reason !== "closed") showError(`disconnected for good: ${detail.reason}`);
});

client.addEventListener("message", ({ detail: m }) => {
  const data = m.data && typeof m.data === "object" ? m.data : {};
  const name = typeof data.name === "string" ? data.name : String(m.from ?? "?");
  const text = typeof data.text === "string" ? data.text : m.text ?? JSON.stringify(m.data ?? m.payload);
  if (typeof m.from === "string" && typeof data.name === "string") names.set(m.from, data.name);
  seen(m.room, name);
  const item = el("li", { "data-room": m.room, "data-seq": String(m.seq) },
    el("span", { class: "meta" }, `#${m.seq}`), el("span", { class: "who" }, name), el("span", { class: "text" }, text));
  if (m.room !== selected) item.classList.add("hidden");
  const list = $("#messages");
  list.append(item);
  list.scrollTop = list.scrollHeight;
});

client.addEventListener("joined", ({ detail }) => readPresence(detail.room)); // every join and re-join
setInterval(() => {
  if (client.state.state !== State.CONNECTED) return; // the re-join reads anyway
  for (const [room, roster] of rosters) if (roster.members && !roster.buffered) readPresence(room);
}, PRESENCE_REREAD_MS);

client.addEventListener("presenceDiff", ({ detail: diff }) => {
  const roster = rosters.get(diff.room);
  if (!roster) return;
  if (diff.truncated) return void readPresence(diff.room); // counts only: read the list
  if (roster.buffered) roster.buffered.push(diff);
  roster.apply(diff);
  if (diff.room === selected) renderMembers();
});

client.addEventListener("resumed", ({ detail }) => {
  const text = `resumed, ${plural(detail.missed, "missed message")} recovered in ${detail.room}`;
  if (!detail.recovered) showNotice(`${text}; older ones could not be (${detail.reason})`, "loss");
  else if (detail.missed > 0) showNotice(text); // a move with nothing missed (a drain, say) is no news
});

client.addEventListener("unrecovered", ({ detail }) => {
  showNotice(`${detail.room}: messages were lost here (${detail.reason})`, "loss");
});

client.addEventListener("error", ({ detail }) => showError(`${detail.code}: ${detail.message}`));

$("#join-form").addEventListener("submit", (event) => {
  event.preventDefault();
  me = $("#name").value.trim();
  const room = $("#room").value.trim();
  if (me && room) joinRoom(room);
});

$("#send-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("#text");
  const text = input.value;
  if (!text || selected === null) return;
  input.value = "";
  try {
    await client.publish(selected, { data: { name: me, text } });
  } catch (error) {
    showError(`not sent (${error.message}): ${text}`);
  }
});

$("#name").value = me;
for (const room of params.getAll("room")) {
  $("#room").value = room;
  if (me) joinRoom(room);
}
window.ringcastDemo = { client }; // for the console (and nothing else)
