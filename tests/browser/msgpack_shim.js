// A small msgpack codec for the browser tests only (nil, bool, ints, float64, str, array, map): what the
// ringcast protocol uses. It stands in for a real library (e.g. @msgpack/msgpack) passed to
// RingcastClient as `msgpack`, so the test needs nothing from a package registry.
export function encode(value) {
  const out = [];
  const bytes = (...b) => out.push(...b);
  const be = (n, size) => { for (let i = size - 1; i >= 0; i--) bytes(Number((BigInt(n) >> BigInt(8 * i)) & 0xffn)); };
  const put = (v) => {
    if (v === null || v === undefined) bytes(0xc0);
    else if (v === true || v === false) bytes(v ? 0xc3 : 0xc2);
    else if (typeof v === "number" && Number.isInteger(v)) {
      if (v >= 0 && v < 128) bytes(v);
      else if (v < 0 && v >= -32) bytes(v & 0xff);
      else if (v >= 0) { bytes(0xcf); be(v, 8); }
      else { bytes(0xd3); be(BigInt.asUintN(64, BigInt(v)), 8); }
    } else if (typeof v === "number") {
      const view = new DataView(new ArrayBuffer(8));
      view.setFloat64(0, v);
      bytes(0xcb, ...new Uint8Array(view.buffer));
    } else if (typeof v === "string") {
      const utf8 = new TextEncoder().encode(v);
      if (utf8.length < 32) bytes(0xa0 | utf8.length); else { bytes(0xdb); be(utf8.length, 4); }
      bytes(...utf8);
    } else if (Array.isArray(v)) {
      bytes(0xdd); be(v.length, 4);
      v.forEach(put);
    } else {
      const entries = Object.entries(v);
      bytes(0xdf); be(entries.length, 4);
      for (const [key, item] of entries) { put(key); put(item); }
    }
  };
  put(value);
  return new Uint8Array(out);
}

export function decode(data) {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let at = 0;
  const u = (size) => {
    let n = 0n;
    for (let i = 0; i < size; i++) n = (n << 8n) | BigInt(view.getUint8(at++));
    return n;
  };
  const str = (length) => new TextDecoder().decode(data.subarray(at, (at += length)));
  const many = (length, map) => {
    if (!map) return Array.from({ length }, () => get());
    const obj = {};
    for (let i = 0; i < length; i++) { const key = get(); obj[key] = get(); }
    return obj;
  };
  const get = () => {
    const t = view.getUint8(at++);
    if (t < 0x80) return t;
    if (t >= 0xe0) return t - 256;
    if ((t & 0xf0) === 0x80) return many(t & 0x0f, true);
    if ((t & 0xf0) === 0x90) return many(t & 0x0f, false);
    if ((t & 0xe0) === 0xa0) return str(t & 0x1f);
    switch (t) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xca: { const v = view.getFloat32(at); at += 4; return v; }
      case 0xcb: { const v = view.getFloat64(at); at += 8; return v; }
      case 0xcc: case 0xcd: case 0xce: case 0xcf: return Number(u(1 << (t - 0xcc)));
      case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
        const size = 1 << (t - 0xd0);
        return Number(BigInt.asIntN(8 * size, u(size)));
      }
      case 0xd9: case 0xda: case 0xdb: return str(Number(u(1 << (t - 0xd9))));
      case 0xdc: case 0xdd: return many(Number(u(t === 0xdc ? 2 : 4)), false);
      case 0xde: case 0xdf: return many(Number(u(t === 0xde ? 2 : 4)), true);
      default: throw new Error(`msgpack type 0x${t.toString(16)} not in this shim`);
    }
  };
  return get();
}
