// The demo chat page: one RingcastClient (clients/js/ringcast.js) driven by a small UI.
// It shows the rooms joined, their messages (each once, in seq order), the connection state
// and worker, a notice when a resume recovered missed messages, and the members this page has
// seen (itself and every sender of a message it received: there is no presence API here).
// Query parameters: ?name=NAME&room=ROOM joins at once (several rooms: room=a&room=b).
import { RingcastClient, State } from "/clients/ringcast.js";

const $ = (selector) => document.querySelector(selector);
const params = new URLSearchParams(location.search);
const client = new RingcastClient(location.origin);
const members = new Map(); // room -> Set of names seen in it
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

function renderMembers() {
  const list = $("#members");
  list.replaceChildren();
  for (const name of [...(members.get(selected) || [])].sort()) {
    list.append(el("li", {}, name === me ? `${name} (you)` : name));
  }
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
  seen(m.room, name);
  const item = el("li", { "data-room": m.room, "data-seq": String(m.seq) },
    el("span", { class: "meta" }, `#${m.seq}`), el("span", { class: "who" }, name), el("span", { class: "text" }, text));
  if (m.room !== selected) item.classList.add("hidden");
  const list = $("#messages");
  list.append(item);
  list.scrollTop = list.scrollHeight;
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
