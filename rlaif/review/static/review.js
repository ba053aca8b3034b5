// Keyboard and buttons of the review page. No data is ever inserted as HTML here: the server
// renders all text (escaped); this file only posts verdicts and navigates.
(function () {
  "use strict";
  var controls = document.getElementById("controls");
  var csrf = document.querySelector('meta[name="csrf-token"]').getAttribute("content");
  var item = controls ? controls.getAttribute("data-item") : "";
  var keys = { "1": "A", "2": "B", "t": "tie", "b": "both-bad" };

  function showError(message) {
    var el = document.getElementById("error");
    if (el) { el.textContent = message; el.hidden = false; }
  }

  function post(url, body) {
    return fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body || {})
    }).then(function (r) {
      return r.json().then(function (data) {
        if (!r.ok) { throw new Error(data.error || ("HTTP " + r.status)); }
        return data;
      });
    });
  }

  function answer(choice) {
    if (!item) { return; }
    var note = document.getElementById("note");
    post("/api/verdict", { item_id: parseInt(item, 10), choice: choice, note: note && note.value ? note.value : null })
      .then(function () { window.location.replace("/review?item=" + item); })
      .catch(function (e) { showError(e.message); });
  }

  function next() { window.location.assign(item ? "/review?after=" + item : "/review"); }

  function undo() {
    post("/api/undo").then(function (data) {
      window.location.assign(data.item_id === null ? "/review" : "/review?item=" + data.item_id);
    }).catch(function (e) { showError(e.message); });
  }

  function toggleHelp() {
    var help = document.getElementById("help");
    if (help) { help.hidden = !help.hidden; }
  }

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) { return; }
    var tag = (e.target && e.target.tagName) || "";
    if (tag === "INPUT" || tag === "TEXTAREA") {
      if (e.key === "Escape") { e.target.blur(); }
      return;
    }
    if (keys[e.key]) { e.preventDefault(); answer(keys[e.key]); }
    else if (e.key === "n") { e.preventDefault(); next(); }
    else if (e.key === "u") { e.preventDefault(); undo(); }
    else if (e.key === "?") { e.preventDefault(); toggleHelp(); }
  });

  document.querySelectorAll("button[data-choice]").forEach(function (b) {
    b.addEventListener("click", function () { answer(b.getAttribute("data-choice")); });
  });
  document.querySelectorAll("button[data-action]").forEach(function (b) {
    b.addEventListener("click", function () {
      var action = b.getAttribute("data-action");
      if (action === "next") { next(); } else if (action === "undo") { undo(); }
    });
  });
})();
