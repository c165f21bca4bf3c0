// airut dashboard: local times, live refresh of <main>, the stop button.
// Plain script, no build step; every page reads the same without it.
"use strict";
(function () {
  var POLL_MS = 2000;
  var etag = null;
  var busy = false;

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  // <time datetime="...Z">: the viewer's local time.
  function localTimes(root) {
    var nodes = root.querySelectorAll("time[datetime]");
    for (var i = 0; i < nodes.length; i++) {
      var d = new Date(nodes[i].getAttribute("datetime"));
      if (isNaN(d.getTime())) continue;
      nodes[i].textContent = d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" +
        pad(d.getDate()) + " " + pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" +
        pad(d.getSeconds());
      nodes[i].title = d.toString();
    }
  }

  // <span class="age" data-since="...Z">: how long ago, counted here every second.
  function ages(root) {
    var nodes = root.querySelectorAll("span.age[data-since]");
    var now = Date.now();
    for (var i = 0; i < nodes.length; i++) {
      var s = Math.max(0, (now - new Date(nodes[i].getAttribute("data-since")).getTime()) / 1000);
      if (isNaN(s)) continue;
      nodes[i].textContent = s < 60 ? s.toFixed(0) + " s" : s < 3600 ?
        Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s" :
        Math.floor(s / 3600) + " h " + Math.floor(s % 3600 / 60) + " min";
    }
  }

  function setState(text, bad) {
    var el = document.getElementById("livestate");
    if (!el) return;
    el.hidden = !text;
    el.textContent = text || "";
    el.className = "livestate" + (bad ? " bad" : "");
  }

  // Replace <main> with the server's newer version, keeping what the reader opened.
  function refresh() {
    var main = document.querySelector("main");
    if (!main || busy || document.visibilityState === "hidden") return;
    busy = true;
    var headers = { "X-Airut-Live": "1" };
    if (etag) headers["If-None-Match"] = etag;
    fetch(location.pathname + location.search, { headers: headers, cache: "no-store",
                                                  credentials: "same-origin" })
      .then(function (r) {
        if (r.status === 304) { setState(""); return null; }
        if (!r.ok) throw new Error("HTTP " + r.status);
        etag = r.headers.get("ETag");
        return r.text();
      })
      .then(function (html) {
        setState("");
        if (html === null) return;
        var open = {};
        main.querySelectorAll("details[open][id]").forEach(function (d) { open[d.id] = true; });
        var fresh = new DOMParser().parseFromString(html, "text/html").querySelector("main");
        if (!fresh) return;
        Object.keys(open).forEach(function (id) {
          var d = fresh.querySelector("details[id='" + CSS.escape(id) + "']");
          if (d) d.open = true;
        });
        main.replaceWith(fresh);
        localTimes(fresh);
        ages(fresh);
      })
      .catch(function (e) { setState("offline: " + e.message, true); })
      .then(function () { busy = false; });
  }

  function live() {
    var main = document.querySelector("main");
    return main && main.getAttribute("data-live") === "on";
  }

  function stop(button) {
    var task = button.getAttribute("data-task");
    if (!window.confirm("Stop task " + task + "?")) return;
    button.disabled = true;
    var msg = button.parentNode.querySelector(".stopmsg");
    fetch("/api/task/" + encodeURIComponent(task) + "/stop", {
      method: "POST", credentials: "same-origin",
      headers: { "X-Requested-With": "airut-dashboard" }
    }).then(function (r) {
      return r.json().then(function (body) {
        if (msg) msg.textContent = r.ok ? "stopping…" : (body.error || ("HTTP " + r.status));
        if (!r.ok) button.disabled = false;
        etag = null;
        refresh();
      });
    }).catch(function (e) {
      if (msg) msg.textContent = "could not ask: " + e.message;
      button.disabled = false;
    });
  }

  document.addEventListener("click", function (e) {
    var button = e.target.closest && e.target.closest("button.stop[data-task]");
    if (button) stop(button);
  });

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    ages(document);
    window.setInterval(function () { ages(document); }, 1000);
    etag = null;
    window.setInterval(function () { if (live()) refresh(); }, POLL_MS);
    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "visible" && live()) refresh();
    });
  });
})();
