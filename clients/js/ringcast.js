/**
 * ringcast.js: the browser client of ringcast. One ES module, no build step, no dependency.
 *
 * Owns one page-side connection to a ringcast cluster, mirroring the Python
 * SDK (router/client.py on router/client_core.py; docs/sdk.md) over the
 * protocol of docs/protocol.md:
 *
 * - asking the route service where the connection's home room (the smallest
 *   room name) lives (`GET /route`), connecting to that worker, joining,
 *   leaving, publishing and reading history;
 * - publishing with an idempotency key, retried after PUBLISH_UNCONFIRMED, BUS_UNAVAILABLE or a lost
 *   connection (bounded tries; the worker publishes a key once per room);
 * - presence: `presence` / `presence_stats` requests, and `presence_diff` events of joined rooms;
 * - reconnecting on its own after any loss, with capped exponential backoff
 *   and full jitter (the formula of router/backoff.py);
 * - resuming every room from its last `{seq, epoch}` (`join` with `since`),
 *   dropping duplicates by seq, repairing a live stream that skips positions,
 *   paging through a `too_many_missed` resume, reporting a resume that could
 *   not be complete at the place of the gap, and how many missed messages a
 *   resume recovered;
 * - following `moved` (home room only, never to an older ring epoch, at most
 *   `maxMovedFollows` in a row, not to a host found silent until a newer
 *   ring names it) and `reconnect` hints (after their `delayMs`);
 * - the token: `?token=` on every connect (browsers cannot set headers on a
 *   WebSocket), `getToken()` to refresh it in place before its `exp`
 *   (`refresh` / `refreshed`) and to get a new one before connecting again
 *   after a 4001 close or a connect that never opened;
 * - JSON text frames, or msgpack binary frames when a msgpack library is
 *   passed in.
 *
 * `ClientCore` is the sans-I/O part (frames in, frames to send and events out;
 * no sockets, no timers, no clock) and `RingcastClient` its browser driver.
 * It must not hash rooms (the route service answers), share state between
 * clients, or load anything itself (no imports: the page passes in what it
 * wants, e.g. a msgpack library).
 */

export const SUBPROTOCOL_JSON = "ringcast.json";
export const SUBPROTOCOL_MSGPACK = "ringcast.msgpack";
export const TOKEN_EXPIRED_CLOSE_CODE = 4001; // docs/protocol.md: the worker closes a connection whose token expired
export const BUS_UNAVAILABLE = "BUS_UNAVAILABLE";
export const TOO_MANY_MISSED = "too_many_missed"; // a resume's `joined` reason: the oldest page comes first, more is kept
export const PRESENCE_DISABLED = "PRESENCE_DISABLED"; // no --presence-rule covers the room: the server tracks no members there
export const PUBLISH_ATTEMPTS = 3; // tries of a publish with an idempotency key (retried after the codes below or ConnectionLost)
export const RETRYABLE_PUBLISH_CODES = Object.freeze(["PUBLISH_UNCONFIRMED", BUS_UNAVAILABLE]);
const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,64}$/; // docs/protocol.md: 1..64 printable ASCII characters, no space
const GENERATED_KEY_BYTES = 16; // a key made for `retry: true` (32 hex characters)
const MAX_EPOCHS_REMEMBERED = 4; // per room: older epochs recognised as "already left" (out of order), not as a new stream
const MAX_UNREACHABLE_HOSTS = 64; // hosts remembered as silent (oldest forgotten first), whatever the hints say
const SHORT_TOKEN_REFRESH_SHARE = 0.5; // a token living less than 2 * refreshBeforeMs is refreshed at half its remaining life
const REFRESH_ATTEMPTS = 3; // a refresh (getToken + `refresh` + `refreshed`) is tried this many times before giving up
const MIN_REFRESH_RETRY_MS = 50; // shortest wait between two refresh attempts
const SILENT_PEER_FACTOR = 1.5; // no frame for pingIntervalMs * this: the worker (or the link) is gone

/** The connection states (`RingcastClient.state.state`). */
export const State = Object.freeze({
  IDLE: "idle", // no room joined: nothing to connect to
  CONNECTING: "connecting", // asking the router, opening the socket, waiting for `welcome`
  CONNECTED: "connected", // `welcome` received and every room's (re-)join sent
  WAITING: "waiting", // disconnected; the next attempt comes in `delayMs`
  CLOSED: "closed", // final: close() was called, or a 4001 close without getToken
});

/**
 * @typedef {{baseMs: number, factor: number, capMs: number, jitter: number}} BackoffPolicy
 *   baseMs: ceiling of the first retry's delay; factor: growth per consecutive failure;
 *   capMs: no delay is ever longer; jitter: random share of the ceiling (0 none, 1 full jitter).
 * @typedef {{seq: number, epoch: string}} Position
 * @typedef {{state: string, reason: string, url: (string|null), attempt: number, delayMs: number}} StateChange
 * @typedef {{encode: function(*): Uint8Array, decode: function(Uint8Array): *}} Msgpack
 */

/** Full jitter (AWS): delays uniform in [0, ceiling]; 1 s doubling to a 30 s cap. */
export const DEFAULT_BACKOFF = Object.freeze({ baseMs: 1000, factor: 2, capMs: 30000, jitter: 1.0 });

// --- errors ---------------------------------------------------------------------------------------------------

/** Base of every error the client raises. */
export class ClientError extends Error {
  constructor(message) {
    super(message);
    this.name = new.target.name;
  }
}

/** The server answered a request with an `error` frame (docs/protocol.md lists the codes). */
export class ServerError extends ClientError {
  /** @param {string} code @param {string} message @param {object} [frame] */
  constructor(code, message, frame) {
    super(`${code}: ${message}`);
    this.code = code;
    this.serverMessage = message;
    this.frame = frame || null;
  }
}

/** The connection dropped while the request was in flight (or there was none): it may or may not have happened. */
export class ConnectionLost extends ClientError {}

/** The client was closed. */
export class ClientClosed extends ClientError {}

/** `maxPendingRequests` requests already await their reply; nothing was sent. */
export class TooManyRequests extends ClientError {}

/** A request got no answer within `requestTimeoutMs` (including waiting for a connection). */
export class RequestTimeout extends ClientError {}

/** The worker closed with 4001 (token expired) and the client has no `getToken`: it stopped. */
export class AuthenticationFailed extends ClientError {
  constructor(reason, message) {
    super(`${reason}: ${message}`);
    this.reason = reason;
  }
}

// --- pure helpers ---------------------------------------------------------------------------------------------

/**
 * The longest delay before retry `attempt` (0-based): min(capMs, baseMs * factor ** attempt).
 * @param {number} attempt @param {BackoffPolicy} [policy] @returns {number}
 */
export function backoffCeilingMs(attempt, policy = DEFAULT_BACKOFF) {
  if (!(attempt >= 0)) throw new RangeError("attempt must be >= 0");
  let ceiling = policy.baseMs;
  for (let i = 0; i < attempt; i++) {
    ceiling *= policy.factor; // step up to the cap and stop there: a huge attempt cannot overflow
    if (ceiling >= policy.capMs) return policy.capMs;
  }
  return Math.min(ceiling, policy.capMs);
}

/**
 * The delay before retry `attempt`: the ceiling less a random share of it, ceiling * (1 - jitter * U).
 * @param {number} attempt @param {BackoffPolicy} [policy] @param {function(): number} [rand] U in [0, 1)
 * @returns {number}
 */
export function backoffDelayMs(attempt, policy = DEFAULT_BACKOFF, rand = Math.random) {
  return backoffCeilingMs(attempt, policy) * (1 - policy.jitter * rand());
}

/** @param {BackoffPolicy} policy */
function checkBackoff(policy) {
  if (!(policy.baseMs > 0) || !(policy.capMs > 0)) throw new RangeError("baseMs and capMs must be > 0");
  if (!(policy.factor >= 1)) throw new RangeError("factor must be >= 1");
  if (!(policy.jitter >= 0 && policy.jitter <= 1)) throw new RangeError("jitter must be within [0, 1]");
}

/**
 * A JWT's `exp` (Unix seconds), read from its payload WITHOUT verifying anything; null if it has none.
 * Only for scheduling a refresh: the worker verifies, a client holds no key.
 * @param {string} token @returns {number|null}
 */
export function tokenExpiry(token) {
  const parts = String(token).split(".");
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)));
    const exp = claims && typeof claims === "object" ? claims.exp : undefined;
    return typeof exp === "number" && Number.isFinite(exp) ? exp : null;
  } catch {
    return null;
  }
}

/** `url` with `?token=` (or `&token=`) appended. @param {string} url @param {string} token */
export function withToken(url, token) {
  return `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
}

function hostOf(url) {
  try {
    return new URL(url).hostname || "";
  } catch {
    return "";
  }
}

const isInt = (value) => Number.isInteger(value);

/** A fresh idempotency key: GENERATED_KEY_BYTES random bytes as hex. */
function randomKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(GENERATED_KEY_BYTES));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// --- the sans-I/O core ----------------------------------------------------------------------------------------

class RoomState {
  constructor() {
    /** @type {Position|null} the last (seq, epoch) seen: from `joined` or the latest message */
    this.position = null;
    this.joinedOnce = false; // a `joined` arrived at least once (a refused re-join keeps the room)
    this.joining = false; // a join is in flight on this connection: messages wait for its `joined`
    this.joinSent = false; // a join went out on this connection
    this.acceptJump = false; // the server declared a loss: the next message may skip positions
    /** @type {string[]} */
    this.epochsLeft = [];
    // A resume in progress: {since, until, count, more}; `resumed` is reported once the position reaches `until`.
    this.replay = null;
  }
}

/**
 * One connection's client state machine (rooms and positions outlive the sockets); the port of
 * router/client_core.py. Events are plain objects with a `kind`: connected, message, duplicate,
 * outOfOrder, gap, joined, resumed, reply, requestFailed, notice, reconnect, presenceDiff.
 */
export class ClientCore {
  /**
   * @param {{resume?: boolean, maxMovedFollows?: number, maxPendingRequests?: number}} [options]
   *   resume: join with `since` = the last position seen, drop duplicates, repair gaps;
   *   maxMovedFollows: `moved` hints followed in a row at one ring epoch;
   *   maxPendingRequests: requests awaiting their reply; past it a request throws TooManyRequests.
   */
  constructor({ resume = true, maxMovedFollows = 3, maxPendingRequests = 1000 } = {}) {
    if (!(maxPendingRequests >= 1)) throw new RangeError("maxPendingRequests must be >= 1");
    this.resume = resume;
    this.maxMovedFollows = maxMovedFollows;
    this.maxPendingRequests = maxPendingRequests;
    /** @type {Map<string, RoomState>} */
    this.rooms = new Map();
    this.url = null;
    this.connected = false;
    this.workerId = null;
    /** @type {Object<string, object>} room -> the last `moved` frame for it */
    this.lastMoved = {};
    /** @type {Object<string, object>} room -> the last `joined` with recovered: false */
    this.unrecovered = {};
    this.duplicatesDropped = 0;
    this.staleDropped = 0;
    this._pending = new Map();
    this._nextId = 1;
    this._outbox = [];
    this._repairs = []; // rooms whose id-less gap-repair join awaits its `joined`
    this._ringEpoch = -1;
    this._movedEpoch = -1;
    this._movedFollows = 0;
    this._leavingForMoved = false;
    /** @type {Map<string, number|null>} host -> newest ring epoch known when it went silent */
    this._unreachable = new Map();
  }

  /** The room the connection is placed by: the smallest name (the rule workers use too). */
  get homeRoom() {
    let home = null;
    for (const room of this.rooms.keys()) if (home === null || room < home) home = room;
    return home;
  }

  get pendingRequests() {
    return this._pending.size;
  }

  /** @param {string} room @returns {Position|null} */
  position(room) {
    const state = this.rooms.get(room);
    return state && state.position ? { ...state.position } : null;
  }

  /** The frames queued since the last call, in the order they must go out. */
  framesToSend() {
    const frames = this._outbox;
    this._outbox = [];
    return frames;
  }

  connectionOpened(url) {
    this.url = url;
    this.connected = false;
    this._unreachable.delete(hostOf(url)); // it answered: no longer silent, its hints are followed again
  }

  /** A route lookup answered at `ringEpoch`: hints from older rings are stale from now on. */
  routeAnswer(ringEpoch) {
    if (isInt(ringEpoch)) this._ringEpoch = Math.max(this._ringEpoch, ringEpoch);
  }

  /** The host of `url` went silent (no frame within the liveness window, or a connect that timed out). */
  hostUnreachable(url) {
    const host = hostOf(url);
    if (!host) return;
    this._unreachable.delete(host);
    this._unreachable.set(host, this._ringEpoch >= 0 ? this._ringEpoch : null);
    while (this._unreachable.size > MAX_UNREACHABLE_HOSTS) this._unreachable.delete(this._unreachable.keys().next().value);
  }

  /** The socket ended: every request in flight is returned (it may or may not have happened). */
  connectionLost() {
    const failed = [...this._pending.values()];
    this._pending.clear();
    this._outbox = [];
    this._repairs = [];
    this.connected = false;
    this.url = null;
    if (!this._leavingForMoved) this._movedFollows = 0; // the bound is on moves in a row
    this._leavingForMoved = false;
    for (const state of this.rooms.values()) state.joinSent = state.joining = false;
    return failed;
  }

  /** Join `room` (re-joined on every new connection); the join request if connected, else null. */
  join(room) {
    if (this.rooms.has(room)) throw new ClientError(`already joined ${JSON.stringify(room)}`);
    this.rooms.set(room, new RoomState());
    return this.connected ? this._sendJoin(room) : null;
  }

  /** Leave `room` (no longer re-joined); the leave request if connected, else null. */
  leave(room) {
    if (!this.rooms.delete(room)) throw new ClientError(`not joined ${JSON.stringify(room)}`);
    this._repairs = this._repairs.filter((r) => r !== room);
    if (!this.connected) return null;
    return this._request("leave", room, { type: "leave", room });
  }

  /** Stop tracking `room` without telling the server (its join was given up on). */
  forgetRoom(room) {
    this.rooms.delete(room);
  }

  /**
   * Publish exactly one of text, data or payload (delivered under the same field name).
   * @param {string} room @param {{text?: string, data?: *, payload?: *}} body
   */
  publish(room, body) {
    const given = ["text", "data", "payload"].filter((name) => body && Object.hasOwn(body, name));
    if (given.length !== 1) throw new ClientError("give exactly one of text, data or payload");
    if (given[0] === "text" && typeof body.text !== "string") throw new ClientError("text must be a string");
    return this._request("publish", room, { type: "message", room, [given[0]]: body[given[0]] });
  }

  /** @param {string} room @param {Position|null} [since] @param {number|null} [limit] */
  history(room, since = null, limit = null) {
    const frame = { type: "history", room };
    if (since) frame.since = { seq: since.seq, epoch: since.epoch };
    if (limit !== null && limit !== undefined) frame.limit = limit;
    return this._request("history", room, frame);
  }

  /**
   * Who is in `room` (`presence`), or how many (`presence_stats`); no join needed, the token's `rooms` scope applies.
   * @param {string} room @param {boolean} [stats]
   */
  presence(room, stats = false) {
    const kind = stats ? "presence_stats" : "presence";
    return this._request(kind, room, { type: kind, room });
  }

  ping() {
    return this._request("ping", null, { type: "ping" });
  }

  /** Offer the worker a new token; not bounded by maxPendingRequests (a refresh that could not go out costs the connection). */
  refresh(token) {
    return this._request("refresh", null, { type: "refresh", token }, null, false);
  }

  /** The driver stopped waiting (a timeout): a late reply is then ignored. */
  cancel(request) {
    this._pending.delete(request.id);
  }

  /** Feed one decoded server frame; returns what happened (and may queue frames to send). */
  receive(frame) {
    const kind = frame.type;
    if (kind === "message") return this._onMessage(frame);
    if (kind === "welcome") return this._onWelcome(frame);
    if (kind === "joined") return this._onJoined(frame);
    if (kind === "error") return this._onError(frame);
    if (kind === "reconnect") {
      const url = typeof frame.url === "string" ? frame.url : null;
      const delayMs = typeof frame.delayMs === "number" ? Math.max(0, frame.delayMs) : 0;
      return [{ kind: "reconnect", reason: `reconnect:${frame.reason ?? ""}`, url, delayMs, closeNow: false, frame }];
    }
    if (kind === "moved") return this._onMoved(frame);
    if (kind === "presence_diff") {
      const room = frame.room;
      return typeof room === "string" && this.rooms.has(room) ? [{ kind: "presenceDiff", room, frame }] : [{ kind: "notice", frame }];
    }
    const request = isInt(frame.id) ? this._take(frame.id) : null;
    return request ? [{ kind: "reply", request, frame }] : [{ kind: "notice", frame }];
  }

  _take(id) {
    const request = this._pending.get(id) || null;
    this._pending.delete(id);
    return request;
  }

  _onWelcome(frame) {
    this.connected = true;
    this.workerId = typeof frame.workerId === "string" ? frame.workerId : null;
    // Re-join before any request: a publish queued after its room's join never meets NOT_JOINED.
    for (const room of [...this.rooms.keys()].sort()) this._sendJoin(room);
    return [{ kind: "connected", frame, workerId: this.workerId }];
  }

  _onMessage(frame) {
    const room = frame.room;
    const state = typeof room === "string" ? this.rooms.get(room) : undefined;
    if (!state || state.joining) {
      this.staleDropped += 1; // not ours any more, or sent again by the join's replay
      return [];
    }
    const { seq, epoch } = frame;
    if (!isInt(seq) || typeof epoch !== "string") return [{ kind: "message", room, frame, declaredJump: false }];
    const current = state.position;
    if (!this.resume || current === null) {
      if (current === null || current.epoch !== epoch || seq > current.seq) state.position = { seq, epoch };
      return this._delivered(room, state, frame, false);
    }
    if (state.acceptJump) {
      state.acceptJump = false;
      const jumped = epoch !== current.epoch || seq !== current.seq + 1;
      this._moveTo(state, { seq, epoch });
      return this._delivered(room, state, frame, jumped);
    }
    if (epoch === current.epoch) {
      if (seq <= current.seq) {
        this.duplicatesDropped += 1;
        return [{ kind: "duplicate", room, frame }];
      }
      if (seq === current.seq + 1) {
        state.position = { seq, epoch };
        return this._delivered(room, state, frame, false);
      }
    } else if (state.epochsLeft.includes(epoch)) {
      return [{ kind: "outOfOrder", room, frame }];
    } else if (seq === 1) {
      this._moveTo(state, { seq: 1, epoch }); // a new stream: the room's state was lost
      return this._delivered(room, state, frame, false);
    }
    const gap = { kind: "gap", room, last: { ...current }, frame };
    this._repair(room, state);
    return [gap];
  }

  /** A message for the application, and the end of a resume's replay once it reaches the live position. */
  _delivered(room, state, frame, declaredJump) {
    const events = [{ kind: "message", room, frame, declaredJump }];
    const replay = state.replay;
    if (replay) {
      if (frame.epoch === replay.until.epoch && frame.seq <= replay.until.seq) replay.count += 1;
      const done = frame.epoch !== replay.until.epoch || frame.seq >= replay.until.seq;
      if (done && !replay.more) events.push(this._resumed(room, state));
    }
    return events;
  }

  _resumed(room, state) {
    const replay = state.replay;
    state.replay = null;
    return {
      kind: "resumed", room, missed: replay.count, since: replay.since, recovered: replay.joined.recovered !== false,
      reason: replay.joined.reason ?? null, frame: replay.joined,
    };
  }

  /** Leave and join again with `since`: the server replays the missing part, in order. */
  _repair(room, state) {
    state.joining = true;
    this._outbox.push({ type: "leave", room });
    const join = { type: "join", room };
    if (state.position) join.since = { seq: state.position.seq, epoch: state.position.epoch };
    this._outbox.push(join);
    if (!this._repairs.includes(room)) this._repairs.push(room);
  }

  _onJoined(frame) {
    const request = isInt(frame.id) ? this._take(frame.id) : null;
    const room = frame.room;
    const state = typeof room === "string" ? this.rooms.get(room) : undefined;
    if (!state) return request ? [{ kind: "reply", request, frame }] : [{ kind: "notice", frame }];
    const repairing = this._repairs.includes(room);
    const since = request ? request.since : repairing && state.position ? { ...state.position } : null;
    if (repairing) this._repairs = this._repairs.filter((r) => r !== room);
    state.joining = false;
    state.joinSent = true;
    state.joinedOnce = true;
    const seq = frame.seq;
    const joinedAt = isInt(seq) ? { seq, epoch: String(frame.epoch || "") } : null;
    if (joinedAt) {
      const current = state.position;
      if (current === null || !this.resume) state.position = joinedAt;
      else if (current.epoch !== joinedAt.epoch) this._moveTo(state, { seq: 0, epoch: joinedAt.epoch }); // its replay starts at seq 1
      // else: same stream; the replayed messages advance the position one by one
    }
    const fetchingMore = frame.recovered === false && frame.reason === TOO_MANY_MISSED && since !== null && this.resume;
    if (frame.recovered === false && !fetchingMore) {
      state.acceptJump = true;
      this.unrecovered[room] = frame;
    }
    const events = [{ kind: "joined", room, frame, since, request, fetchingMore, unrecovered: frame.recovered === false && !fetchingMore }];
    if (since !== null && this.resume && joinedAt) {
      // A resume (or the next page of one): count what it replays up to the live position it names.
      const replay = state.replay || { since, count: 0 };
      state.replay = { ...replay, until: joinedAt, more: fetchingMore, joined: frame };
      const position = state.position;
      const caughtUp = position && position.epoch === joinedAt.epoch && position.seq >= joinedAt.seq;
      if (caughtUp && !fetchingMore) events.push(this._resumed(room, state));
    }
    return events;
  }

  _onError(frame) {
    const code = String(frame.code);
    const message = String(frame.message ?? "");
    const request = isInt(frame.id) ? this._take(frame.id) : null;
    if (!request) {
      if ((frame.id === undefined || frame.id === null) && this._repairs.length) {
        // The only id-less frames the core sends are a gap repair's leave and join: come back on a fresh connection.
        return [{ kind: "requestFailed", request: null, code, message, frame, roomDropped: false },
          { kind: "reconnect", reason: "rejoin_refused", url: null, delayMs: null, closeNow: true, frame }];
      }
      return [{ kind: "notice", frame }];
    }
    if (request.kind !== "join" || !this.rooms.has(request.room)) {
      return [{ kind: "requestFailed", request, code, message, frame, roomDropped: false }];
    }
    const state = this.rooms.get(request.room);
    if (code === BUS_UNAVAILABLE && state.joinedOnce) {
      return [{ kind: "requestFailed", request, code, message, frame, roomDropped: false },
        { kind: "reconnect", reason: "rejoin_refused", url: null, delayMs: null, closeNow: true, frame }];
    }
    this.rooms.delete(request.room);
    return [{ kind: "requestFailed", request, code, message, frame, roomDropped: true }];
  }

  _onMoved(frame) {
    const { room, url, epoch } = frame;
    if (typeof room !== "string" || typeof url !== "string") return [{ kind: "notice", frame }];
    this.lastMoved[room] = frame;
    if (room !== this.homeRoom || url === this.url) return []; // served correctly here
    const ringEpoch = isInt(epoch) ? epoch : -1;
    if (ringEpoch < this._ringEpoch) return [{ kind: "notice", frame }]; // a worker behind the router's ring
    const host = hostOf(url);
    if (this._unreachable.has(host)) {
      const silentAt = this._unreachable.get(host);
      if (silentAt === null || ringEpoch <= silentAt) {
        this._unreachable.set(host, silentAt === null ? ringEpoch : silentAt);
        return [{ kind: "notice", frame }]; // a ring not newer than our finding that the host is silent
      }
      this._unreachable.delete(host); // a newer ring names it
    }
    if (ringEpoch > this._movedEpoch) {
      this._movedEpoch = ringEpoch;
      this._movedFollows = 0;
    }
    if (this._movedFollows >= this.maxMovedFollows) return [{ kind: "notice", frame }];
    this._movedFollows += 1;
    this._ringEpoch = Math.max(this._ringEpoch, ringEpoch);
    this._leavingForMoved = true;
    return [{ kind: "reconnect", reason: "moved", url, delayMs: 0, closeNow: true, frame }];
  }

  _sendJoin(room) {
    const state = this.rooms.get(room);
    if (state.joinSent) return null;
    const since = this.resume && state.position ? { ...state.position } : null;
    const frame = { type: "join", room };
    if (since) frame.since = since;
    state.joinSent = state.joining = true;
    return this._request("join", room, frame, since, false);
  }

  _request(kind, room, frame, since = null, bounded = true) {
    if (!this.connected) throw new ConnectionLost("not connected");
    if (bounded && this._pending.size >= this.maxPendingRequests) {
      throw new TooManyRequests(`${this._pending.size} requests already await their reply`);
    }
    const request = { id: this._nextId++, kind, room, frame, since, waiter: null };
    frame.id = request.id;
    this._pending.set(request.id, request);
    this._outbox.push(frame);
    return request;
  }

  _moveTo(state, position) {
    const current = state.position;
    if (current && current.epoch !== position.epoch && !state.epochsLeft.includes(current.epoch)) {
      state.epochsLeft.push(current.epoch);
      if (state.epochsLeft.length > MAX_EPOCHS_REMEMBERED) state.epochsLeft.shift();
    }
    state.position = position;
  }
}

// --- the browser driver ---------------------------------------------------------------------------------------

/**
 * @typedef {object} ClientOptions
 * @property {Msgpack} [msgpack] a msgpack library ({encode, decode}, e.g. @msgpack/msgpack): binary frames,
 *   subprotocol ringcast.msgpack; absent: JSON text frames (ringcast.json)
 * @property {BackoffPolicy} [backoff] the reconnect schedule (DEFAULT_BACKOFF)
 * @property {boolean} [resume] re-join with `since`, drop duplicates, report gaps (true)
 * @property {number} [requestTimeoutMs] longest join/publish/leave/history/presence wait, a connection included,
 *   and all of a publish's tries (10000)
 * @property {number} [connectTimeoutMs] longest a route lookup, or a socket's open + `welcome`, may take (5000)
 * @property {number|null} [pingIntervalMs] `ping` period while connected; no frame for 1.5 times it: the
 *   worker is taken for gone (20000; null disables)
 * @property {number} [maxPendingRequests] requests awaiting their reply; past it TooManyRequests (1000)
 * @property {number} [maxMovedFollows] `moved` hints followed in a row at one ring epoch (3)
 * @property {string|null} [token] the connection token (a JWT), sent as `?token=` on every connect
 * @property {(function(): Promise<string>)|null} [getToken] a fresh token from the application's issuer
 * @property {number} [refreshBeforeMs] refresh this long before the token's `exp` (30000; 0 disables)
 * @property {function(): number} [rand] randomness of the backoff jitter (Math.random)
 * @property {typeof WebSocket} [WebSocket] the WebSocket class (globalThis.WebSocket)
 * @property {typeof fetch} [fetch] the fetch function (globalThis.fetch)
 */

/**
 * One resilient connection to a ringcast cluster for a page. Events (`addEventListener`, `event.detail`):
 * `state` (StateChange), `message` (a `message` frame, each once, in seq order per room), `joined` (every
 * `joined` frame), `unrecovered` (a `joined` with recovered: false at the place of the gap), `resumed`
 * ({room, missed, recovered, reason, since, frame}), `moved` (every `moved` frame), `presenceDiff` (a
 * `presence_diff` frame of a joined room: who joined and left it; live news that may be lost, so read
 * `presence()` after each `joined` and when a diff is `truncated`), `error` ({code, message, frame}: an error
 * frame no caller awaits, e.g. a re-join refused).
 */
export class RingcastClient extends EventTarget {
  /** @param {string} routerUrl base URL of a route service or of any worker @param {ClientOptions} [options] */
  constructor(routerUrl, options = {}) {
    super();
    const o = {
      msgpack: null, backoff: DEFAULT_BACKOFF, resume: true, requestTimeoutMs: 10000, connectTimeoutMs: 5000,
      pingIntervalMs: 20000, maxPendingRequests: 1000, maxMovedFollows: 3, token: null, getToken: null,
      refreshBeforeMs: 30000, rand: Math.random, WebSocket: globalThis.WebSocket, fetch: globalThis.fetch?.bind(globalThis),
      ...options,
    };
    checkBackoff(o.backoff);
    if (!(o.refreshBeforeMs >= 0)) throw new RangeError("refreshBeforeMs must be >= 0");
    if (o.msgpack && (typeof o.msgpack.encode !== "function" || typeof o.msgpack.decode !== "function")) {
      throw new TypeError("msgpack must have encode and decode functions");
    }
    this.routerUrl = String(routerUrl).replace(/\/+$/, "");
    this.options = o;
    this._core = new ClientCore({ resume: o.resume, maxMovedFollows: o.maxMovedFollows, maxPendingRequests: o.maxPendingRequests });
    /** @type {StateChange} */
    this._state = { state: State.IDLE, reason: "created", url: null, attempt: 0, delayMs: 0 };
    this._joinWaiters = new Map(); // room -> {resolve, reject} of the application's pending join()
    this._ws = null; // the socket once it got `welcome`
    this._endAttempt = null; // ends the socket being opened or used now
    this._token = o.token;
    this._tokenStale = false;
    this._closed = false;
    this._authError = null;
    this._wakeups = new Set(); // resolvers waiting for "rooms changed", "connected" or "closed"
    this._sleepers = new Set(); // pending sleeps, cut short by close()
    this.url = null; // the worker currently connected to
    this.workerId = null;
    this.connectionId = null;
    this.tokenRefreshes = 0;
    this._runner = this._run();
  }

  // --- what the application reads ---

  /** @returns {StateChange} */
  get state() {
    return { ...this._state };
  }

  /** @returns {string[]} */
  get rooms() {
    return [...this._core.rooms.keys()].sort();
  }

  get duplicatesDropped() {
    return this._core.duplicatesDropped;
  }

  get unrecovered() {
    return this._core.unrecovered;
  }

  get lastMoved() {
    return this._core.lastMoved;
  }

  /** @param {string} room @returns {Position|null} the last (seq, epoch) seen in the room */
  position(room) {
    return this._core.position(room);
  }

  // --- requests ---

  /** Join `room` (re-joined after every reconnect); resolves with the `joined` frame. @param {string} room */
  async join(room) {
    this._checkOpen();
    this._core.join(room); // throws when already joined
    const answer = new Promise((resolve, reject) => this._joinWaiters.set(room, { resolve, reject }));
    this._wake();
    this._flush();
    try {
      return await this._timeout(answer, `join ${room}`);
    } catch (error) {
      if (error instanceof RequestTimeout) this._core.forgetRoom(room);
      throw error;
    } finally {
      this._joinWaiters.delete(room);
    }
  }

  /** Leave `room`; it is no longer re-joined. @param {string} room */
  async leave(room) {
    this._checkOpen();
    const request = this._core.leave(room);
    return request ? this._awaitReply(request) : null;
  }

  /**
   * Publish to a joined room; resolves with the `ack` ({seq, epoch}, and `duplicate: true` when an earlier
   * try with the same idempotency key was published: then seq/epoch are that try's).
   *
   * With an `idempotencyKey` (sent as the frame's `idempotencyKey`: 1..64 printable ASCII, no space), a publish
   * that failed with PUBLISH_UNCONFIRMED, BUS_UNAVAILABLE or ConnectionLost is sent again (after a reconnect if
   * need be), up to `attempts` tries within requestTimeoutMs in all, with the reconnect backoff between tries:
   * the server publishes a key at most once per room within its idempotency window. Without a key nothing is
   * retried (at most once). `retry: true` makes a key for this call when none is given.
   * @param {string} room @param {string|{text?: string, data?: *, payload?: *}} body a string is `text`
   * @param {{idempotencyKey?: (string|null), retry?: boolean, attempts?: number}} [options]
   */
  async publish(room, body, { idempotencyKey = null, retry = false, attempts = PUBLISH_ATTEMPTS } = {}) {
    this._checkOpen();
    const fields = typeof body === "string" ? { text: body } : body;
    if (idempotencyKey === null && retry) idempotencyKey = randomKey();
    if (idempotencyKey !== null && !(typeof idempotencyKey === "string" && IDEMPOTENCY_KEY.test(idempotencyKey))) {
      throw new ClientError("idempotencyKey must be 1 to 64 printable ASCII characters, no space");
    }
    const tries = idempotencyKey !== null ? Math.max(1, attempts) : 1;
    const deadline = Date.now() + this.options.requestTimeoutMs;
    for (let attempt = 0; ; attempt++) {
      try {
        return await this._whenConnected(`publish to ${room}`, () => {
          const request = this._core.publish(room, fields);
          if (idempotencyKey !== null) request.frame.idempotencyKey = idempotencyKey; // queued, sent by _awaitReply
          return request;
        }, deadline);
      } catch (error) {
        const retryable = error instanceof ConnectionLost
          || (error instanceof ServerError && RETRYABLE_PUBLISH_CODES.includes(error.code));
        if (!retryable || attempt + 1 >= tries || this._closed || Date.now() >= deadline) throw error;
      }
      await this._sleep(Math.min(backoffDelayMs(attempt, this.options.backoff, this.options.rand), deadline - Date.now()));
    }
  }

  /**
   * Who is in `room` now, across the cluster: the `presence` reply {room, members: [{user, conn, info, worker}],
   * count, complete}. No join needed. Rejects with ServerError PRESENCE_DISABLED when no --presence-rule covers
   * the room, FORBIDDEN outside the token's `rooms`.
   * @param {string} room
   */
  async presence(room) {
    this._checkOpen();
    return this._whenConnected(`presence of ${room}`, () => this._core.presence(room));
  }

  /**
   * How many are in `room`: the `presence_stats` reply {room, connections, users, complete}; errors as presence().
   * @param {string} room
   */
  async presenceStats(room) {
    this._checkOpen();
    return this._whenConnected(`presence_stats of ${room}`, () => this._core.presence(room, true));
  }

  /**
   * One page of a room's kept history; resolves with the `history` frame.
   * @param {string} room @param {{since?: Position, limit?: number}} [options]
   */
  async history(room, { since = null, limit = null } = {}) {
    this._checkOpen();
    return this._whenConnected(`history of ${room}`, () => this._core.history(room, since, limit));
  }

  /** Leave the cluster: close the socket, stop reconnecting. */
  close() {
    if (this._closed) return;
    this._closed = true;
    this._failRequests(this._core.connectionLost(), new ClientClosed("client closed"));
    for (const waiter of this._joinWaiters.values()) waiter.reject(new ClientClosed("client closed"));
    this._joinWaiters.clear();
    if (this._endAttempt) this._endAttempt(null);
    this._setState(State.CLOSED, "closed");
    this._wake();
    for (const done of [...this._sleepers]) done();
  }

  // --- the connection loop ---

  async _run() {
    let attempt = 0;
    let nextUrl = null;
    await Promise.resolve(); // let the constructor's caller add listeners first
    while (!this._closed) {
      if (this._core.rooms.size === 0) {
        this._setState(State.IDLE, "no_rooms");
        await this._waitWake();
        continue;
      }
      this._setState(State.CONNECTING, "connecting", nextUrl, attempt);
      let reason = "connection_lost";
      let hint = null;
      let expired = false;
      try {
        const url = nextUrl || (await this._lookup());
        nextUrl = null;
        await this._ensureToken();
        const ended = await this._connection(url);
        hint = ended.hint;
        if (ended.welcomed) attempt = 0; // the connection worked: a later failure starts the schedule over
        else reason = "connect_failed";
        if (!ended.opened && this.options.getToken) this._tokenStale = true; // maybe a 401: browsers do not say
        expired = ended.code === TOKEN_EXPIRED_CLOSE_CODE;
      } catch (error) {
        reason = error.reason || "connect_failed";
      }
      if (this._closed) return;
      if (expired) {
        if (!this.options.getToken) {
          this._endForAuth();
          return;
        }
        this._tokenStale = true;
        reason = "auth_failed:token_expired";
        hint = null;
      }
      let delayMs;
      if (hint) {
        reason = hint.reason;
        nextUrl = hint.url;
      }
      if (hint && hint.delayMs !== null) {
        delayMs = hint.delayMs; // the server's own (already jittered) delay, or a move: not a failure
      } else {
        delayMs = backoffDelayMs(attempt, this.options.backoff, this.options.rand);
        attempt += 1;
      }
      this._setState(State.WAITING, reason, nextUrl, attempt, delayMs);
      if (delayMs > 0) await this._sleep(delayMs);
    }
  }

  async _lookup() {
    const url = `${this.routerUrl}/route?room=${encodeURIComponent(this._core.homeRoom || "")}`;
    let body;
    try {
      const response = await this.options.fetch(url, { signal: AbortSignal.timeout(this.options.connectTimeoutMs) });
      body = await response.json();
      if (response.status !== 200 || !body || typeof body.url !== "string") throw new Error(`HTTP ${response.status}`);
    } catch (error) {
      throw Object.assign(new ClientError(`route lookup ${url}: ${error.message}`), { reason: "lookup_failed" });
    }
    this._core.routeAnswer(body.epoch);
    return body.url;
  }

  /** Before a connect: getToken() when there is no token yet, the last one may have been refused, or it expired. */
  async _ensureToken() {
    const getToken = this.options.getToken;
    if (!getToken) return;
    const exp = this._token ? tokenExpiry(this._token) : null;
    if (this._token && !this._tokenStale && (exp === null || exp * 1000 > Date.now())) return;
    let token;
    try {
      token = await this._timeout(Promise.resolve().then(getToken), "getToken");
    } catch (error) {
      throw Object.assign(new ClientError(`getToken failed: ${error.message}`), { reason: "token_unavailable" });
    }
    if (typeof token !== "string" || !token) {
      throw Object.assign(new ClientError("getToken returned no token"), { reason: "token_unavailable" });
    }
    this._token = token;
    this._tokenStale = false;
  }

  /** One WebSocket's life: open, welcome, re-join, read until it ends. Resolves {hint, opened, welcomed, code}. */
  _connection(url) {
    const o = this.options;
    const protocol = o.msgpack ? SUBPROTOCOL_MSGPACK : SUBPROTOCOL_JSON;
    const ws = new o.WebSocket(this._token ? withToken(url, this._token) : url, [protocol]);
    ws.binaryType = "arraybuffer";
    return new Promise((resolve) => {
      let opened = false;
      let welcomed = false;
      let hint = null;
      let lastHeardMs = Date.now();
      let ended = false;
      const timers = [];
      const wakers = []; // sleeps of this socket's token refresher, cut short when it ends
      const sleep = (ms) => new Promise((resolve) => {
        timers.push(setTimeout(resolve, Math.max(0, ms)));
        wakers.push(resolve);
      });
      const finish = (code) => {
        if (ended) return;
        ended = true;
        this._endAttempt = null;
        for (const timer of timers) clearTimeout(timer), clearInterval(timer);
        for (const wake of wakers) wake();
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        if (ws.readyState === 0 || ws.readyState === 1) ws.close(1000);
        if (this._ws === ws) this._ws = null;
        this.url = null;
        this._failRequests(this._core.connectionLost(), new ConnectionLost("connection lost"));
        resolve({ hint, opened, welcomed, code });
      };
      this._endAttempt = finish;
      timers.push(setTimeout(() => {
        this._core.hostUnreachable(url); // no answer at all in time: the host, or the link to it, may be gone
        finish(null);
      }, o.connectTimeoutMs));
      ws.onopen = () => {
        opened = true;
      };
      ws.onclose = (event) => finish(event.code);
      ws.onmessage = (event) => {
        let frame;
        try {
          frame = o.msgpack ? o.msgpack.decode(new Uint8Array(event.data)) : JSON.parse(event.data);
          if (!frame || typeof frame !== "object") throw new Error("not an object");
        } catch (error) {
          finish(null); // a server that sends what is not a frame: start over
          return;
        }
        lastHeardMs = Date.now();
        if (!welcomed) {
          if (frame.type !== "welcome") return finish(null);
          welcomed = true;
          clearTimeout(timers[0]);
          this._core.connectionOpened(url);
          this._core.receive(frame); // queues the re-join of every room, `since` included
          this._ws = ws;
          this.url = url;
          this.workerId = this._core.workerId;
          this.connectionId = typeof frame.connectionId === "string" ? frame.connectionId : null;
          this._flush(); // the re-joins go out before any publish
          this._setState(State.CONNECTED, "connected", url);
          this._wake();
          if (o.pingIntervalMs) {
            timers.push(setInterval(() => {
              if (Date.now() - lastHeardMs > o.pingIntervalMs * SILENT_PEER_FACTOR) {
                this._core.hostUnreachable(url); // no frame, not even a pong: the worker or the link is gone
                return finish(null);
              }
              this._send(() => this._core.ping());
            }, o.pingIntervalMs));
          }
          if (o.getToken && o.refreshBeforeMs > 0) this._keepTokenFresh(ws, sleep);
          return;
        }
        if (frame.type === "moved") this._emit("moved", frame); // followed or not
        for (const ev of this._core.receive(frame)) {
          if (ev.kind === "reconnect") {
            hint = ev;
            if (ev.closeNow) return finish(null);
          } else {
            this._handle(ev);
          }
        }
        this._flush(); // a gap repair's leave + join
      };
    });
  }

  _handle(ev) {
    switch (ev.kind) {
      case "message":
        this._emit("message", ev.frame);
        break;
      case "joined": {
        const waiter = this._joinWaiters.get(ev.room);
        if (waiter && ev.request) {
          this._joinWaiters.delete(ev.room);
          waiter.resolve(ev.frame);
        }
        this._emit("joined", ev.frame);
        if (ev.unrecovered) this._emit("unrecovered", ev.frame);
        break;
      }
      case "presenceDiff":
        this._emit("presenceDiff", ev.frame);
        break;
      case "resumed":
        this._emit("resumed", { room: ev.room, missed: ev.missed, recovered: ev.recovered, reason: ev.reason, since: ev.since, frame: ev.frame });
        break;
      case "reply":
        if (ev.request.waiter) ev.request.waiter.resolve(ev.frame);
        break;
      case "requestFailed": {
        const request = ev.request;
        const error = new ServerError(ev.code, ev.message, ev.frame);
        if (request && request.kind === "join" && ev.roomDropped && this._joinWaiters.has(request.room)) {
          this._joinWaiters.get(request.room).reject(error);
          this._joinWaiters.delete(request.room);
        } else if (request && request.waiter && request.kind !== "join") {
          request.waiter.reject(error);
        } else {
          this._emit("error", { code: ev.code, message: ev.message, frame: ev.frame });
        }
        break;
      }
      // gap: the core queued the repair; duplicate, outOfOrder: dropped (counted); notice: nothing to do
    }
  }

  /** While connected on `ws`: refresh the token in place before its `exp`, REFRESH_ATTEMPTS tries. */
  async _keepTokenFresh(ws, sleep) {
    const current = () => this._ws === ws && !this._closed;
    while (current()) {
      const exp = this._token ? tokenExpiry(this._token) : null;
      if (exp === null) return; // nothing says when it ends: never refreshed in place
      const remainingMs = exp * 1000 - Date.now();
      const leadMs = Math.min(this.options.refreshBeforeMs, remainingMs * SHORT_TOKEN_REFRESH_SHARE);
      await sleep(Math.max(0, remainingMs - leadMs));
      const retryMs = Math.max(MIN_REFRESH_RETRY_MS, leadMs / (REFRESH_ATTEMPTS + 1));
      let refreshed = false;
      for (let attempt = 1; attempt <= REFRESH_ATTEMPTS && current(); attempt++) {
        try {
          const token = await this._timeout(Promise.resolve().then(this.options.getToken), "getToken");
          if (typeof token !== "string" || !token) throw new ClientError("getToken returned no token");
          await this._awaitReply(this._core.refresh(token));
          this._token = token;
          this.tokenRefreshes += 1;
          this._setState(State.CONNECTED, "token_refreshed", this.url, 0, 0, true);
          refreshed = true;
          break;
        } catch (error) {
          if (!current()) return;
          this._setState(State.CONNECTED, "token_refresh_failed", this.url, attempt, 0, true);
          if (attempt < REFRESH_ATTEMPTS) await sleep(retryMs);
        }
      }
      if (!refreshed) return; // the worker closes 4001 at exp; the loop then reconnects with getToken()
    }
  }

  _endForAuth() {
    const error = new AuthenticationFailed("token_expired", "the token expired and the worker closed the connection (4001); pass getToken to renew it");
    this._authError = error;
    for (const waiter of this._joinWaiters.values()) waiter.reject(error);
    this._joinWaiters.clear();
    this._setState(State.CLOSED, "auth_failed:token_expired");
    this._wake();
  }

  // --- plumbing ---

  _send(makeRequest) {
    try {
      makeRequest();
    } catch {
      return; // not connected: nothing to send
    }
    this._flush();
  }

  _flush() {
    const frames = this._core.framesToSend();
    const ws = this._ws;
    if (!frames.length || !ws || ws.readyState !== 1) return;
    for (const frame of frames) ws.send(this.options.msgpack ? this.options.msgpack.encode(frame) : JSON.stringify(frame));
  }

  async _whenConnected(what, makeRequest, deadline = Date.now() + this.options.requestTimeoutMs) {
    while (!this._core.connected) {
      if (this._authError) throw this._authError;
      if (this._closed) throw new ClientClosed("client closed");
      if (Date.now() >= deadline) throw new RequestTimeout(`${what}: not connected within ${this.options.requestTimeoutMs} ms`);
      await Promise.race([this._waitWake(), this._sleep(deadline - Date.now())]);
    }
    return this._awaitReply(makeRequest(), deadline - Date.now());
  }

  async _awaitReply(request, timeoutMs = this.options.requestTimeoutMs) {
    const answer = new Promise((resolve, reject) => (request.waiter = { resolve, reject }));
    this._flush();
    try {
      return await this._timeout(answer, `${request.kind} ${request.room ?? ""}`.trim(), timeoutMs);
    } finally {
      this._core.cancel(request);
    }
  }

  _timeout(promise, what, ms = this.options.requestTimeoutMs) {
    let timer;
    const expired = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new RequestTimeout(`${what}: no answer within ${ms} ms`)), Math.max(0, ms));
    });
    return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
  }

  _failRequests(requests, error) {
    for (const request of requests) if (request.waiter) request.waiter.reject(error);
  }

  _checkOpen() {
    if (this._authError) throw this._authError;
    if (this._closed) throw new ClientClosed("client closed");
  }

  _wake() {
    const wakeups = [...this._wakeups];
    this._wakeups.clear();
    for (const resolve of wakeups) resolve();
  }

  _waitWake() {
    return new Promise((resolve) => this._wakeups.add(resolve));
  }

  /** Resolves after `ms`, or at once when the client is closed. */
  _sleep(ms) {
    if (this._closed) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this._sleepers.delete(done);
        resolve();
      };
      const timer = setTimeout(done, Math.max(0, ms));
      this._sleepers.add(done);
    });
  }

  _setState(state, reason, url = null, attempt = 0, delayMs = 0, force = false) {
    const change = { state, reason, url, attempt, delayMs };
    const same = Object.keys(change).every((key) => change[key] === this._state[key]);
    if (same && !force) return;
    this._state = change;
    this._emit("state", { ...change });
  }

  _emit(type, detail) {
    try {
      this.dispatchEvent(new CustomEvent(type, { detail }));
    } catch (error) {
      console.error(`ringcast: a ${type} listener failed`, error); // the application's bug must not break the loop
    }
  }
}
