// shardfleet monitor: keeps the page live without a reload, and sends the controls.
// The server renders everything; this script only swaps in the fresh #live fragment,
// so the page without it is the same page, one reload behind.
"use strict";
(function () {
  const body = document.body;
  const base = body.dataset.base || "";
  const every = Math.max(Number(body.dataset.refreshMs) || 1000, 1000);
  const MAX_BACKOFF = 60000;
  const TOKEN_KEY = "shardfleet-control-token";
  let failures = 0;
  let timer = null;
  let pending = null; // the control waiting for a token

  function schedule() {
    clearTimeout(timer);
    timer = null;
    if (document.hidden) return; // resumed by visibilitychange
    if (!document.getElementById("live")) return; // a page without live figures
    // Errors back off, doubling up to a minute, so a stopped monitor is not hammered.
    const wait = failures === 0 ? every : Math.min(every * 2 ** failures, MAX_BACKOFF);
    timer = setTimeout(refresh, wait);
  }

  function showStale(why) {
    const live = document.getElementById("live");
    if (!live || live.querySelector('[data-testid="fleet-stale"]')) return;
    const p = document.createElement("p");
    p.className = "banner stale";
    p.setAttribute("data-testid", "fleet-stale");
    p.setAttribute("role", "alert");
    p.textContent = "Figures are stale: " + why + ". Retrying…";
    live.prepend(p);
  }

  async function refresh() {
    try {
      const r = await fetch(base + "/fragment", { cache: "no-store", credentials: "same-origin" });
      if (!r.ok) throw new Error("the monitor answered HTTP " + r.status);
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      const fresh = doc.getElementById("live");
      const live = document.getElementById("live");
      if (!fresh || !live) throw new Error("the monitor sent no figures");
      live.replaceWith(document.adoptNode(fresh));
      failures = 0;
    } catch (e) {
      failures += 1;
      showStale(e instanceof TypeError ? "the monitor does not answer" : e.message);
    }
    schedule();
  }

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && timer === null) refresh();
    if (document.hidden) { clearTimeout(timer); timer = null; }
  });

  function say(text, bad) {
    const said = document.getElementById("said");
    if (!said) return;
    said.textContent = text;
    said.classList.toggle("bad", !!bad);
  }

  function askToken(action) {
    pending = action;
    const form = document.getElementById("token-form");
    if (!form) return;
    form.hidden = false;
    document.getElementById("token-input").focus();
  }

  async function send(action) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) { askToken(action); say("Enter the fleet's control token to " + action.verb + "."); return; }
    action.button.disabled = true;
    try {
      const r = await fetch(base + action.path, {
        method: "POST",
        cache: "no-store",
        credentials: "same-origin",
        headers: { Authorization: "Bearer " + token },
      });
      let answer = {};
      try { answer = await r.json(); } catch (_) { /* not JSON: the status says enough */ }
      if (r.status === 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        askToken(action);
        say("That token was refused; enter the fleet's control token.", true);
        return;
      }
      if (!r.ok) { say(answer.error || ("refused: HTTP " + r.status), true); return; }
      say(answer.message || "done");
      failures = 0;
      // The failed list and a history are read per request: reload them.
      if (document.getElementById("live")) refresh(); else window.location.reload();
    } catch (e) {
      say("The monitor does not answer: " + e.message, true);
    } finally {
      action.button.disabled = false;
    }
  }

  // Controls live inside #live, which is replaced on every refresh: listen above it.
  document.addEventListener("click", function (ev) {
    const button = ev.target.closest("button[data-action]");
    if (!button) return;
    const kind = button.dataset.action;
    const worker = button.dataset.workerId;
    const video = button.dataset.videoId;
    // Paths are built from the numbers the server rendered, nothing else.
    let path = null;
    if (["pause", "resume", "drain"].includes(kind) && /^[0-9]+$/.test(worker || "")) {
      path = "/api/workers/" + worker + "/" + kind;
    } else if (kind === "retry" && /^-?[0-9]+$/.test(video || "")) {
      path = "/api/videos/" + video + "/retry";
    } else if (kind === "retry-failed") {
      path = "/api/videos/retry-failed";
    }
    if (!path) return;
    // The two that cannot be undone from here ask first.
    if (kind === "drain" && !window.confirm("Drain worker " + worker + "? It stops claiming, finishes what it holds and exits.")) return;
    if (kind === "retry-failed" && !window.confirm("Requeue every failed video?")) return;
    send({ path: path, verb: kind, button: button });
  });

  const form = document.getElementById("token-form");
  if (form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      const input = document.getElementById("token-input");
      const token = input.value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      input.value = "";
      form.hidden = true;
      if (pending) { const a = pending; pending = null; send(a); }
    });
  }

  schedule();
})();
