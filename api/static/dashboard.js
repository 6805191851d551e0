// Cardinal Vote dashboards: follow the results stream, re-render the panel, narrate.
// Vendored, no build step, no third-party code. The token (for elections without public
// results) lives only in sessionStorage and goes out as an Authorization header.
"use strict";
(function () {
  const KEY = "cardinal-token";
  const body = document.body;
  const panel = document.getElementById("panel");
  const mode = document.getElementById("mode");
  const announce = document.getElementById("announce");
  const pause = document.getElementById("pause");
  const form = document.getElementById("token-form");
  const why = document.getElementById("token-why");
  let paused = false;
  let stale = false;
  let failures = 0;
  let poller = null;
  let source = null;
  let lastPosition = null;

  function token() { return sessionStorage.getItem(KEY); }
  function headers() {
    const t = token();
    return t ? { Authorization: "Bearer " + t } : {};
  }
  function setMode(text) { mode.textContent = "Live updates: " + text; }

  function narrate() {
    const standing = panel.querySelector("[data-position]");
    if (!standing) return;
    const position = standing.getAttribute("data-position");
    if (lastPosition !== null && position !== lastPosition) {
      const winners = panel.querySelector("#winners");
      const state = standing.getAttribute("data-state");
      announce.textContent = "Results updated to position " + position + " (" + state + "). " +
        (winners ? winners.textContent : "");
    }
    lastPosition = position;
  }

  async function refresh() {
    if (paused) { stale = true; return true; }
    let response;
    try {
      response = await fetch(body.dataset.panel, { headers: headers(), cache: "no-store" });
    } catch (error) { return false; }
    if (response.status === 401 || response.status === 403) {
      let detail = "";
      try { detail = (await response.json()).detail || ""; } catch (error) { /* not JSON */ }
      if (response.status === 401) askForToken(detail);
      else panel.textContent = detail;
      return false;
    }
    if (!response.ok) return false;
    const html = await response.text();
    const focused = document.activeElement && document.activeElement.id;
    panel.innerHTML = html;
    if (focused && panel.querySelector("#" + CSS.escape(focused))) {
      panel.querySelector("#" + CSS.escape(focused)).focus();
    }
    narrate();
    return true;
  }

  function askForToken(detail) {
    form.hidden = false;
    if (detail) why.textContent = "These results need a token (" + detail +
      "). It is kept only for this browser session.";
    setMode("waiting for a token");
    document.getElementById("token").focus();
  }

  function poll() {
    if (poller) return;
    setMode("polling every 5 s (the stream is unavailable)");
    poller = setInterval(refresh, 5000);
  }

  function onEvent() { refresh(); }

  function retry() {
    failures += 1;
    if (failures >= 3) poll(); else setTimeout(follow, 2000);
  }

  async function followWithFetch() {
    // EventSource cannot send an Authorization header: read the stream with fetch.
    const response = await fetch(body.dataset.stream,
      { headers: Object.assign({ Accept: "text/event-stream" }, headers()), cache: "no-store" });
    if (!response.ok || !response.body) throw new Error("stream " + response.status);
    setMode("streaming");
    failures = 0;
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (/^data: /m.test(block)) onEvent();
      }
    }
    throw new Error("stream ended");
  }

  function follow() {
    if (!token() && window.EventSource) {
      source = new EventSource(body.dataset.stream);
      source.onopen = function () { failures = 0; setMode("streaming"); };
      source.onmessage = onEvent;
      source.addEventListener("results", onEvent);
      source.onerror = function () {
        if (source.readyState === EventSource.CLOSED) { source = null; retry(); }
        else setMode("reconnecting");
      };
      return;
    }
    followWithFetch().catch(retry);
  }

  pause.addEventListener("click", function () {
    paused = !paused;
    pause.setAttribute("aria-pressed", String(paused));
    pause.textContent = paused ? "Resume updates" : "Pause updates";
    setMode(paused ? "paused" : (poller ? "polling" : "streaming"));
    if (!paused && stale) { stale = false; refresh(); }
  });

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    const value = document.getElementById("token").value.trim();
    if (!value) return;
    sessionStorage.setItem(KEY, value);
    form.hidden = true;
    if (source) { source.close(); source = null; }
    if (await refresh()) follow();
  });

  if (body.dataset.kind === "overview") {
    form.hidden = false;
    why.textContent = "Elections without public results appear with a token; it is kept " +
      "only for this browser session.";
  }
  narrate();
  (async function start() {
    const needed = body.dataset.kind === "results" && (body.dataset.public !== "true" || token());
    if (needed || !panel.firstElementChild) {
      if (!(await refresh())) return;
    }
    if (body.dataset.kind === "overview" && token()) await refresh();
    follow();
  })();
})();
