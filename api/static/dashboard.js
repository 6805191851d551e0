// Cardinal Vote dashboards: follow the results stream, re-render the panel, narrate.
// Vendored, no build step, no third-party code. A token (for elections without public
// results) lives only in sessionStorage and goes out as an Authorization header; a voter
// token (cvt_...) reads only its own election, so it is kept for that election's page.
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
  const field = document.getElementById("token");
  const error = document.getElementById("token-error"); // role="alert": said when set
  const forgetButton = document.getElementById("forget-token");
  const isPublic = body.dataset.kind === "overview" || body.dataset.public === "true";
  const PAGE_KEY = KEY + ":" + body.dataset.panel;
  let paused = false;
  let behind = false; // events came while paused
  let failures = 0;
  let poller = null;
  let source = null;
  let lastPosition = null;
  let loading = null; // the panel fetch under way: one at a time, answers in order
  let again = false; // an event came meanwhile: fetch once more after it
  let backoff = 1000;
  let reading = false; // a stream read with fetch is open
  let fresh = false; // the next event is a stream's first: the snapshot on (re)connecting
  let retrying = null; // a panel fetch to try again, after a failure
  let shownMode = "connecting";
  let finished = false; // final and sealed: nothing more to follow
  let reader = null; // the fetch-read stream's reader, to cancel it when finished
  // Results hidden until the close are asked for again this often (not on the stream:
  // it is refused while they are hidden), so that they show within seconds of the close.
  const HIDDEN_RETRY_MS = 5000;
  const PAGE_TITLE = document.title;
  // The polite live region speaks at most every 20 s (at one announcement per event it
  // spoke 4 times a second); a change of the leaders at most every 10 s (spoken at once, it
  // could follow the last announcement by a second, each second: the accessibility
  // review), the latest then; the final results always at once.
  const QUIET_MS = 20000;
  const NEWS_GAP_MS = 10000;
  let spokenAt = 0;
  let spokenWinners = null;
  let spokenState = null;
  let speakLater = null;
  let speakDue = 0; // when speakLater speaks
  // An announcement fell due while the panel showed no results (a token prompt): said as
  // soon as results show again, not dropped until the position next changes.
  let owed = false;
  // At most one panel fetch a second: events in between are coalesced into the next.
  const FETCH_GAP_MS = 1000;
  let fetchedAt = 0;
  // The token the shown panel was read with (the server-rendered one needed none): a page
  // brought back by Back after "Forget token" must not show what only that token could read.
  let shownWith = null;
  // A token was refused (401: not recognised, or expired) or gives no access (403): the
  // page follows nothing, neither stream nor polls, until a token is given.
  let waiting = false;
  let followLater = null; // the stream's next try, after a failure
  let focusOnShow = false; // a token was just given: focus the panel's heading once shown
  // The panel said the results are not published yet: the first results after it are news
  // to speak, not a baseline to compare later ones with (they replaced the note silently).
  let unpublished = false;
  const stale = document.createElement("p"); // says the results shown stopped updating
  stale.id = "stale-note";
  stale.setAttribute("role", "status");

  function token() {
    return sessionStorage.getItem(PAGE_KEY) || sessionStorage.getItem(KEY) || null;
  }
  function keep(value) {
    sessionStorage.setItem(value.startsWith("cvt_") ? PAGE_KEY : KEY, value);
  }
  function forget() {
    if (sessionStorage.getItem(PAGE_KEY)) sessionStorage.removeItem(PAGE_KEY);
    else sessionStorage.removeItem(KEY);
  }
  function headers() {
    const t = token();
    return t ? { Authorization: "Bearer " + t } : {};
  }
  function setMode(text) { // what is going on; "paused" shows instead while paused
    shownMode = text;
    mode.textContent = modeLine();
  }
  // A draft's stream is open but nothing streams until the election opens: "streaming"
  // beside "Not open yet" read as though results were coming.
  function modeLine() {
    if (paused) return "Live updates: paused";
    const draft = panel.querySelector("#standing[data-state=draft]") !== null;
    return "Live updates: " +
      (shownMode === "streaming" && draft ? "waiting for the election to open" : shownMode);
  }
  function positionOf(root) {
    const standing = root.querySelector("[data-position]");
    return standing ? Number(standing.getAttribute("data-position")) : null;
  }

  function speak() {
    if (speakLater) { clearTimeout(speakLater); speakLater = null; }
    const standing = panel.querySelector("[data-position]");
    if (!standing) { owed = true; return; }
    owed = false;
    const winners = panel.querySelector("#winners");
    const state = standing.getAttribute("data-state");
    spokenAt = Date.now();
    spokenWinners = winners ? winners.getAttribute("data-winners") : null;
    spokenState = state;
    announce.textContent = "Results updated to position " +
      standing.getAttribute("data-position") + (state ? " (" + state + "). " : ". ") +
      (winners ? winners.textContent : "");
  }

  function narrate() {
    const standing = panel.querySelector("[data-position]");
    if (!standing) return;
    const position = standing.getAttribute("data-position");
    const winners = panel.querySelector("#winners");
    const state = standing.getAttribute("data-state");
    if (unpublished) { // published at last: say so
      unpublished = false;
      speak();
    } else if (lastPosition === null || position === lastPosition) {
      if (spokenState === null) { // what the page showed first: the baseline
        spokenWinners = winners ? winners.getAttribute("data-winners") : null;
        spokenState = state;
      } else if (owed) {
        speak(); // fell due while no results showed: say what shows now
      }
    } else if (state === "final" && spokenState !== "final") {
      speak(); // the result: say it now, however recently the region spoke
    } else if ((winners ? winners.getAttribute("data-winners") : null) !== spokenWinners) {
      speakAfter(NEWS_GAP_MS); // news: soon, but not on the heels of the last one
    } else {
      speakAfter(QUIET_MS);
    }
    lastPosition = position;
  }

  // Speak once ``gap`` has passed since the last announcement (at once if it has): what
  // the panel then shows, the latest. An earlier time already set stands.
  function speakAfter(gap) {
    const due = spokenAt + gap;
    const wait = due - Date.now();
    if (wait <= 0) { speak(); return; }
    if (speakLater && speakDue <= due) return;
    if (speakLater) clearTimeout(speakLater);
    speakDue = due;
    speakLater = setTimeout(speak, wait);
  }

  // The field's token was refused, or none was given: the field says it is invalid and the
  // alert why (a refusal on the overview was never said, and focus left the field).
  function invalid(text) {
    field.setAttribute("aria-invalid", "true");
    if (text !== null) error.textContent = text;
  }
  function valid() {
    field.removeAttribute("aria-invalid");
    error.textContent = "";
  }

  // A box that scrolls sideways (a wide table, the heat map) takes focus, so that a
  // keyboard can scroll it; one that fits does not (a tab stop that does nothing).
  function scrollers() {
    document.querySelectorAll(".table-wrap, .chart-scroll").forEach(function (box) {
      if (box.scrollWidth > box.clientWidth) box.tabIndex = 0;
      else if (box !== document.activeElement) box.removeAttribute("tabindex");
    });
  }

  function focusables() {
    return Array.from(panel.querySelectorAll("a[href], button, input, [tabindex]"));
  }

  function show(html) {
    const next = document.createElement("div");
    next.innerHTML = html;
    const shown = positionOf(panel);
    const coming = positionOf(next);
    if (shown !== null && coming !== null && coming < shown) return; // older than what is shown
    const active = document.activeElement;
    const at = panel.contains(active) ? focusables().indexOf(active) : -1;
    const id = at >= 0 && active.id;
    morph(panel, next);
    if (shownMode === "streaming") setMode(shownMode); // (a draft may have opened)
    panel.classList.remove("stale");
    stale.remove();
    scrollers();
    // (Updated in place, the focused element is still there; replaced, its successor.)
    const target = id ? panel.querySelector("#" + CSS.escape(id)) : focusables()[at];
    if (at >= 0 && target && document.activeElement !== active) target.focus();
    if (focusOnShow) { // a token was just given: from the status to what it shows
      focusOnShow = false;
      const heading = panel.querySelector("#results-heading") || panel.querySelector("[tabindex]");
      const lost = document.activeElement === mode || document.activeElement === body ||
        document.activeElement === null;
      if (heading && lost) {
        if (!heading.hasAttribute("tabindex")) heading.tabIndex = -1;
        heading.focus();
      }
    }
    named();
    narrate();
    if (settled()) finish();
  }

  // The panel is updated in place: an element whose place in the new panel holds the same
  // kind of element (tag, and id if any) keeps its node, its attributes and text set to
  // the new ones; only what differs is inserted or removed. Rebuilt on every update, the
  // panel lost a screen reader's place and the focus (the accessibility review).
  function morph(into, from) {
    let at = into.firstChild;
    for (const fresh of Array.from(from.childNodes)) {
      if (at && !same(at, fresh) && fresh.nodeType === Node.ELEMENT_NODE && fresh.id) {
        // The element of this id further on: those before it are gone.
        const match = into.querySelector(":scope > #" + CSS.escape(fresh.id));
        if (match && at.compareDocumentPosition(match) & Node.DOCUMENT_POSITION_FOLLOWING) {
          while (at !== match) { const gone = at; at = at.nextSibling; gone.remove(); }
        }
      }
      if (at && same(at, fresh)) { patch(at, fresh); at = at.nextSibling; }
      else into.insertBefore(fresh, at);
    }
    while (at) { const gone = at; at = at.nextSibling; gone.remove(); }
  }
  function same(node, fresh) {
    return node.nodeType === fresh.nodeType && node.nodeName === fresh.nodeName &&
      (node.nodeType !== Node.ELEMENT_NODE || node.id === fresh.id);
  }
  function patch(node, fresh) {
    if (node.nodeType !== Node.ELEMENT_NODE) {
      if (node.nodeValue !== fresh.nodeValue) node.nodeValue = fresh.nodeValue;
      return;
    }
    for (const name of node.getAttributeNames()) {
      // (tabindex is the script's: scrollers() and the heading focused after a token)
      if (name !== "tabindex" && !fresh.hasAttribute(name)) node.removeAttribute(name);
    }
    for (const name of fresh.getAttributeNames()) {
      const value = fresh.getAttribute(name);
      if (node.getAttribute(name) !== value) node.setAttribute(name, value);
    }
    morph(node, fresh);
  }

  function settled() {
    return Boolean(panel.querySelector("#standing[data-state=final]") &&
      panel.querySelector("#chain-head code"));
  }

  // A page without public results is titled "Election results" until its panel, read
  // with a token, names the election (its heading): the tab then says which one.
  function named() {
    if (body.dataset.kind !== "results" || isPublic) return;
    const heading = panel.querySelector("#results-heading");
    document.title = heading ? heading.textContent + " · Cardinal Vote" : PAGE_TITLE;
  }

  // Final results with their sealed chain head change no more: stop following them, and
  // give the server its stream slot back.
  function finish() {
    finished = true;
    if (source) { source.close(); source = null; }
    if (reader) { reader.cancel().catch(function () {}); }
    if (poller) { clearInterval(poller); poller = null; }
    // Nothing more to pause: the control goes (focus, if on it, to the status).
    if (document.activeElement === pause) { mode.tabIndex = -1; mode.focus(); }
    pause.hidden = true;
    paused = false;
    setMode("off (these results are final)");
  }

  // One panel fetch: "ok", "auth" (waits for a token), "hidden" (not published yet),
  // "missing" (no such election) or "retry" (the network or the server failed: try again
  // later).
  async function load() {
    const sent = token();
    let response;
    try {
      response = await fetch(body.dataset.panel, { headers: headers(), cache: "no-store" });
    } catch (error) { return "retry"; }
    if (response.status === 401 || response.status === 403) {
      let problem = {};
      try { problem = await response.json(); } catch (error) { /* not JSON */ }
      const detail = problem.detail || "";
      if (response.status === 403 && problem.title === "Not published yet") {
        shownWith = sent; // nobody but admins and auditors: keep the token
        const note = document.createElement("p");
        note.id = "not-published";
        note.textContent = "These results are published when the election closes; until " +
          "then only its administrators and auditors see them. This page shows them as soon " +
          "as it closes, without a reload.";
        panel.replaceChildren(note);
        unpublished = true;
        lastPosition = null;
        named();
        return "hidden";
      }
      if (sent) { // this token does not read this page: drop it, and say why
        if (denied(response.status, sent)) return load(); // public: read on without it
        return "auth";
      }
      if (response.status === 401) { askForToken(false); return "auth"; }
      panel.textContent = detail;
      return "hidden";
    }
    if (response.status === 404) { // no such election: said only to a token (without
      // one, the page of an unknown election is that of an election without public results)
      // The page says so in its heading and title too, and focus goes to it: it stayed on
      // the status, emptied, and nothing was said.
      const note = document.createElement("p");
      note.id = "missing";
      note.tabIndex = -1;
      note.append("There is no election at this address. ");
      const back = document.createElement("a");
      back.href = "/";
      back.textContent = "All elections";
      note.append(back);
      panel.replaceChildren(note);
      document.querySelector("h1").textContent = "Election not found";
      document.title = "Election not found · Cardinal Vote";
      const active = document.activeElement;
      focusOnShow = false;
      if (active === null || active === body || active === mode || active === field) note.focus();
      return "missing";
    }
    if (!response.ok) {
      const after = Number(response.headers.get("Retry-After"));
      if (after > 0) backoff = Math.max(backoff, after * 1000);
      return "retry";
    }
    const html = await response.text();
    shownWith = sent;
    show(html);
    backoff = 1000;
    return "ok";
  }

  function refresh() {
    if (paused) { behind = true; return Promise.resolve("paused"); }
    if (loading) { again = true; return loading; }
    loading = (async function () {
      let outcome;
      do {
        again = false;
        const wait = fetchedAt + FETCH_GAP_MS - Date.now();
        if (wait > 0) await new Promise(function (done) { setTimeout(done, wait); });
        fetchedAt = Date.now();
        outcome = await load();
      } while (again && outcome === "ok");
      loading = null;
      return outcome;
    })();
    return loading;
  }

  // A fetch for an event that failed is tried again (with backoff) until one succeeds:
  // otherwise the page would show old results, the close's perhaps, until the next event.
  async function update() {
    if (retrying || waiting) return; // the retry under way fetches the latest: no fetch per event
    const outcome = await refresh();
    if (outcome === "ok") {
      if (poller) failures = 0; // the server is back: the next stream failure backs off anew
      if (shownMode === "retrying" && !finished) {
        setMode(poller ? "polling every 5 s (the stream is unavailable)" : "streaming");
      }
      return;
    }
    if (outcome !== "retry" || retrying || waiting) return;
    setMode("retrying");
    retrying = setTimeout(function () { retrying = null; update(); }, backoff);
    backoff = Math.min(backoff * 2, 30000);
  }

  // The server's detail is written for API clients ("send an Authorization: Bearer
  // <token> header"): the page says what a person can do instead.
  function askForToken(refused) {
    panel.replaceChildren(); // nothing that the refused or forgotten token read stays up
    named();
    shownWith = null;
    lastPosition = null;
    prompt(refused
      ? "That token does not give access to these results: enter another one."
      : "These results are not public: enter a token from the election's administrator " +
        "to see them.");
  }

  // The token form, with why it is asked for. Focus moves to its field only as it appears:
  // not again on each refusal after (it pulled a keyboard user back every 5 s).
  function prompt(need) {
    const appearing = form.hidden;
    form.hidden = false;
    forgetButton.hidden = !token();
    // (On a public page the refusal itself is the alert's: said here too, it was heard
    // twice, the field being described by both.)
    why.textContent = (isPublic ? "" : need + " ") + "It is kept only for this browser session.";
    if (!isPublic) {
      setMode("waiting for a token");
      // Nothing to pause until a token reads the results.
      const had = document.activeElement === pause;
      pause.hidden = true;
      if (appearing || had) field.focus();
    }
  }

  // A token the server refused (401: not recognised, or expired; the stream ends when it
  // expires) or that gives no access here (403): not a failure to retry. It is forgotten;
  // a public page reads on without it (true); any other page stops following, keeps what
  // that token read up but says it is no longer updating, and asks for a token at once.
  function denied(status, sent) {
    forget();
    if (isPublic) { // read on without it
      // A token just given is said to be refused, and focus kept on the field to give
      // another; one kept from before (expired, or refused elsewhere) is forgotten quietly:
      // a public page took focus for it as it loaded (the merge review).
      const given = focusOnShow;
      focusOnShow = false;
      askForToken(true);
      if (given) {
        invalid("That token was not accepted: enter another one. Public results are " +
          "shown without one.");
        field.focus();
      }
      return true;
    }
    waiting = true;
    if (poller) { clearInterval(poller); poller = null; }
    if (retrying) { clearTimeout(retrying); retrying = null; }
    if (followLater) { clearTimeout(followLater); followLater = null; }
    if (source) { source.close(); source = null; }
    if (reader) { reader.cancel().catch(function () {}); }
    const kept = shownWith === sent && panel.querySelector("[data-position]") !== null;
    if (!kept) { panel.replaceChildren(); named(); shownWith = null; lastPosition = null; }
    field.value = ""; // the refused one: not to be sent again
    invalid(null); // (the prompt's text says why, and the field is described by it)
    const expired = status === 401;
    const need = expired
      ? "The token was refused or has expired: enter a new token to follow these results."
      : "That token does not give access to these results: enter another one.";
    prompt(need);
    setMode(expired ? "stopped (the token was refused or has expired)"
      : "stopped (waiting for a token)");
    if (kept) {
      stale.textContent = "These results are no longer updating: " + (expired
        ? "the token was refused or has expired." : "the token does not give access.") +
        " They are as of position " + positionOf(panel) + ". Enter a token to see the latest.";
      panel.classList.add("stale");
      panel.before(stale);
    }
    return false;
  }

  function poll() {
    if (poller) return;
    setMode("polling every 5 s (the stream is unavailable)");
    poller = setInterval(update, 5000);
  }

  function streaming() {
    if (finished) return;
    failures = 0;
    fresh = true;
    if (poller) { clearInterval(poller); poller = null; }
    setMode("streaming");
  }

  function onEvent(id) {
    const first = fresh;
    fresh = false;
    if (first && id && id === lastPosition) return; // the snapshot of what is shown
    update(); // (the server sends an event only when its document changed)
  }

  // A lost stream is tried again after 1, 2, 4 and 8 s (a restart of the API takes a few
  // seconds) before the page falls back to polling; a reconnection starts the count anew.
  function retry() {
    if (finished || waiting) return;
    failures += 1;
    if (failures > 4) {
      poll();
      followLater = setTimeout(follow, 30000); // and try the stream again now and then
      return;
    }
    const delay = 1000 * Math.pow(2, failures - 1);
    if (!poller) setMode("reconnecting in " + delay / 1000 + " s");
    followLater = setTimeout(follow, delay);
  }

  // The stream refused: a token's refusal is the panel's (above), anything else (a 503,
  // 429, results not published yet) a lost stream.
  async function lost(error) {
    if (error && error.response && !waiting && !finished) {
      const status = error.response.status;
      let problem = {};
      try { problem = await error.response.json(); } catch (ignored) { /* not JSON */ }
      if (status === 401 || (status === 403 && problem.title !== "Not published yet")) {
        if (denied(status, error.sent)) start();
        return;
      }
    }
    retry();
  }

  async function followWithFetch() {
    // EventSource cannot send an Authorization header: read the stream with fetch.
    reading = true;
    try { await readStream(); } finally { reading = false; reader = null; }
  }

  async function readStream() {
    const sent = token();
    const response = await fetch(body.dataset.stream,
      { headers: Object.assign({ Accept: "text/event-stream" }, headers()), cache: "no-store" });
    if (response.status === 401 || response.status === 403) {
      const refused = new Error("stream " + response.status);
      refused.response = response;
      refused.sent = sent;
      throw refused;
    }
    if (!response.ok || !response.body) throw new Error("stream " + response.status);
    if (finished) { response.body.cancel().catch(function () {}); return; }
    streaming();
    reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) { if (finished) return; break; }
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const id = /^id: (.*)$/m.exec(block);
        if (/^data: /m.test(block)) onEvent(id ? id[1] : null);
      }
    }
    throw new Error("stream ended");
  }

  function follow() {
    followLater = null;
    if (source || reading || finished || waiting) return;
    if (!token() && window.EventSource) {
      source = new EventSource(body.dataset.stream);
      source.onopen = streaming;
      const event = function (message) { onEvent(message.lastEventId); };
      source.onmessage = event;
      source.addEventListener("results", event);
      source.onerror = function () {
        if (source.readyState === EventSource.CLOSED) { source = null; retry(); }
        else setMode("reconnecting");
      };
      return;
    }
    followWithFetch().catch(lost);
  }

  // Start (or start again after a token or a failure): the panel, then its stream.
  let startWhenResumed = false;
  function restart() { if (!waiting) start(); }
  async function start() {
    const outcome = await refresh();
    if (outcome === "paused") { startWhenResumed = true; return; }
    if (outcome === "ok") { follow(); return; }
    if (outcome === "auth") return; // the token form takes it from here
    if (outcome === "missing") { // nothing to follow, nor to try again
      mode.hidden = true;
      pause.hidden = true;
      return;
    }
    if (outcome === "hidden") { // a 403 answered at once: no failure to back off from
      setMode("waiting for the results to be published");
      setTimeout(restart, Math.max(HIDDEN_RETRY_MS, backoff));
      return;
    }
    setMode("retrying");
    setTimeout(restart, backoff);
    backoff = Math.min(backoff * 2, 30000);
  }

  pause.addEventListener("click", function () {
    paused = !paused;
    pause.setAttribute("aria-pressed", String(paused));
    mode.textContent = modeLine();
    if (!paused && startWhenResumed) { startWhenResumed = false; behind = false; start(); }
    else if (!paused && behind) { behind = false; update(); }
  });

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    const value = field.value.trim();
    if (!value) { invalid("Enter a token."); field.focus(); return; }
    valid();
    keep(value);
    waiting = false;
    failures = 0;
    backoff = 1000;
    // The form goes: focus to the status (not lost to the page), then to what it shows.
    focusOnShow = true;
    mode.tabIndex = -1;
    mode.focus();
    form.hidden = true;
    forgetButton.hidden = false;
    pause.hidden = finished;
    if (source) { source.close(); source = null; }
    start();
  });

  forgetButton.hidden = !token();
  forgetButton.addEventListener("click", function () {
    // Every token kept in this tab: the shared one and each page's voter token.
    for (let i = sessionStorage.length - 1; i >= 0; i -= 1) {
      const name = sessionStorage.key(i);
      if (name === KEY || (name && name.startsWith(KEY + ":"))) sessionStorage.removeItem(name);
    }
    panel.replaceChildren();
    location.reload();
  });

  // Back and Forward may bring this page back from the browser's cache as it was, with
  // what a token read: if that token is gone (or another one is kept now), show none of it.
  window.addEventListener("pageshow", function (event) {
    if (!event.persisted || token() === shownWith) return;
    panel.replaceChildren();
    form.hidden = true;
    if (source) { source.close(); source = null; }
    location.reload();
  });

  // The JSON results (linked where a chart would be too large) and the overview's listing
  // need the token too, and a link cannot send it: fetch them with it, hand over a file.
  panel.addEventListener("click", async function (event) {
    const link = event.target instanceof Element && event.target.closest("a[data-json]");
    if (!link || !token()) return;
    event.preventDefault();
    let response;
    try {
      response = await fetch(link.getAttribute("href"), { headers: headers(), cache: "no-store" });
    } catch (error) { response = null; }
    if (!response || !response.ok) {
      announce.textContent = "The JSON could not be fetched" +
        (response ? " (" + response.status + ")." : ".");
      return;
    }
    const url = URL.createObjectURL(await response.blob());
    const save = document.createElement("a");
    save.href = url;
    save.download = link.getAttribute("data-json");
    document.body.appendChild(save);
    save.click();
    save.remove();
    setTimeout(function () { URL.revokeObjectURL(url); }, 60000);
  });

  // An error page of a failure that passes (5xx, 429: the database down, say) asks for
  // the page again, with backoff from its Retry-After, and reloads once it answers: it
  // said "try again" and did not, and a tab opened during an outage stayed on the error.
  function recover() {
    const shown = document.getElementById("error");
    const status = shown ? Number(shown.getAttribute("data-status")) : 0;
    if (status < 500 && status !== 429) return;
    const note = document.createElement("p");
    note.id = "retrying";
    note.setAttribute("role", "status");
    panel.append(note);
    // (Filled once in the page: a live region filled as it appears may not be heard.)
    setTimeout(function () { note.textContent = "Retrying automatically…"; }, 250);
    let base = 1000;
    function next(after) {
      const wait = Math.max(base, after > 0 ? after * 1000 : 0);
      base = Math.min(base * 2, 30000);
      setTimeout(again, wait);
    }
    async function again() {
      let response = null;
      try {
        response = await fetch(location.href, { headers: { Accept: "text/html" }, cache: "no-store" });
      } catch (error) { response = null; }
      if (response && response.status < 500 && response.status !== 429) {
        location.reload(); // it answers (a 404 too is an answer): show what it says
        return;
      }
      if (response && response.body) response.body.cancel().catch(function () {});
      next(response ? Number(response.headers.get("Retry-After")) : 0);
    }
    next(Number(shown.getAttribute("data-retry")));
  }

  if (body.dataset.kind === "overview") {
    form.hidden = false;
    why.textContent = "Elections without public results appear with a token; it is kept " +
      "only for this browser session.";
  }
  narrate();
  scrollers();
  let resized = null;
  window.addEventListener("resize", function () {
    if (!resized) resized = requestAnimationFrame(function () { resized = null; scrollers(); });
  });
  if (!body.dataset.stream) { // nothing to follow (an election not found, an error page)
    recover();
    return;
  }
  // The controls come hidden (without the script they did nothing): shown here, the pause
  // once there is something to pause (not while a token is asked for).
  mode.hidden = false;
  pause.hidden = !isPublic && !token();
  const needed = body.dataset.kind === "results" && (!isPublic || token());
  if (needed || !panel.firstElementChild || (body.dataset.kind === "overview" && token())) {
    start();
  } else if (settled()) finish();
  else follow();
})();
