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
    etag = null;
    window.setInterval(function () { if (live()) refresh(); }, POLL_MS);
    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "visible" && live()) refresh();
    });
  });
})();
