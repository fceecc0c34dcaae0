// qtap web UI: the only script. It fetches payload objects straight from the user's object store (the control
// plane hands out a short-lived URL, never the bytes) and shows them decoded. No inline handlers (the CSP forbids them).
"use strict";

const MAX_HEX = 4096;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function hexdump(bytes) {
  const lines = [];
  const n = Math.min(bytes.length, MAX_HEX);
  for (let i = 0; i < n; i += 16) {
    const row = Array.from(bytes.slice(i, Math.min(i + 16, n)));
    const hex = row.map((b) => b.toString(16).padStart(2, "0")).join(" ");
    const asc = row.map((b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : ".")).join("");
    lines.push(i.toString(16).padStart(8, "0") + "  " + hex.padEnd(48) + "  " + asc);
  }
  if (bytes.length > n) lines.push("... " + (bytes.length - n) + " more bytes");
  return lines.join("\n");
}

function headerValue(headers, name) {
  for (const [k, v] of headers || []) if (k.toLowerCase() === name) return v;
  return "";
}

function b64bytes(s) {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

// A body as the agent stored it ({text} or {base64}), shown by its content type: JSON pretty-printed,
// images as images, other text as text, binary as hex.
function showBody(box, body, contentType) {
  if (!body) return;
  const ct = (contentType || "").toLowerCase();
  if (body.base64 !== undefined) {
    const bytes = b64bytes(body.base64);
    if (ct.startsWith("image/") && !ct.includes("svg")) {
      const img = el("img");
      img.alt = "response image (" + ct + ", " + bytes.length + " bytes)";
      img.src = "data:" + ct.split(";")[0] + ";base64," + body.base64;
      box.appendChild(img);
    } else {
      box.appendChild(el("pre", hexdump(bytes), "code body hex"));
    }
    return;
  }
  let text = body.text || "";
  if (ct.includes("json") || /^\s*[{[]/.test(text)) {
    try { text = JSON.stringify(JSON.parse(text), null, 2); } catch (e) { /* not JSON after all: as text */ }
  }
  box.appendChild(el("pre", text, "code body"));
}

function showHeaders(box, headers) {
  if (!headers || !headers.length) return;
  const t = el("table");
  const tb = el("tbody");
  for (const [k, v] of headers) {
    const tr = el("tr");
    tr.appendChild(el("th", k));
    tr.lastChild.scope = "row";
    tr.appendChild(el("td", v));
    tb.appendChild(tr);
  }
  t.appendChild(tb);
  box.appendChild(t);
}

function showObject(box, buf, contentType) {
  const bytes = new Uint8Array(buf);
  const text = new TextDecoder("utf-8", { fatal: false }).decode(bytes);
  if ((contentType || "").includes("json")) {
    let doc = null;
    try { doc = JSON.parse(text); } catch (e) { doc = null; }
    if (doc && doc.request && doc.response) {
      for (const side of ["request", "response"]) {
        const part = doc[side];
        const h = el("h3", side === "request" ? "Request " + (part.method || "") + " " + (part.url || part.path || "")
                                              : "Response " + (part.status === null ? "" : part.status));
        box.appendChild(h);
        showHeaders(box, part.headers);
        const ct = headerValue(part.headers, "content-type");
        showBody(box, part.body, ct);
        if (part.body_truncated) box.appendChild(el("p", "(body truncated by the agent's limit)", "hint"));
      }
      return;
    }
  }
  if (/[\x00-\x08\x0e-\x1f]/.test(text.slice(0, 1024))) box.appendChild(el("pre", hexdump(bytes), "code body hex"));
  else box.appendChild(el("pre", text, "code body"));
}

async function loadPayload(button) {
  const box = document.getElementById(button.getAttribute("aria-controls"));
  box.textContent = "Loading from your object store...";
  button.disabled = true;
  try {
    const meta = await fetch(button.dataset.src, { credentials: "same-origin", headers: { Accept: "application/json" } });
    const info = await meta.json();
    if (!meta.ok) throw new Error(info.error || "HTTP " + meta.status);
    if (info.size > info.max_bytes) throw new Error("the object is larger than the display limit");
    // Straight to the store: no cookies, no referrer; the store must allow this origin (CORS).
    const r = await fetch(info.url, { credentials: "omit", referrerPolicy: "no-referrer", cache: "no-store" });
    if (!r.ok) throw new Error("the object store answered HTTP " + r.status);
    const buf = await r.arrayBuffer();
    if (buf.byteLength > info.max_bytes) throw new Error("the object is larger than the display limit");
    box.textContent = "";
    const src = el("p", "Fetched " + buf.byteLength + " bytes from " + new URL(info.url).host + " by this browser.", "hint");
    src.dataset.fetchedFrom = new URL(info.url).origin;
    box.appendChild(src);
    showObject(box, buf, r.headers.get("content-type") || info.content_type);
    box.dataset.loaded = "true";
  } catch (e) {
    box.textContent = "";
    box.appendChild(el("p", "Could not load the object: " + e.message, "error"));
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const b of document.querySelectorAll("button.load-payload")) b.addEventListener("click", () => loadPayload(b));
});
