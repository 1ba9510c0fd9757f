// The console's script: keeps the pasted credential in this tab's sessionStorage, sends it
// as "Authorization: Bearer" on every data request, swaps server-rendered fragments into
// the page ([data-fragment], refreshed every [data-refresh] ms until one holds
// [data-final]), and runs actions ([data-action]) against the JSON API after a
// confirmation. No cookie is ever used, so another site cannot make this browser send a
// credentialed request. Every URL is relative to the page (API Gateway stage prefixes).
"use strict";
(function () {
  var KEY = "ajs-console-credential";
  var NEXT = "ajs-console-next";
  var body = document.body;
  var root = new URL(body.getAttribute("data-root") || "./", location.href);
  var api = new URL("../", root); // {prefix}/console/ -> {prefix}/
  var page = body.getAttribute("data-page");
  var flash = document.getElementById("flash");
  var scopes = "";

  function credential() { return sessionStorage.getItem(KEY); }

  function signIn() {
    sessionStorage.setItem(NEXT, location.href);
    location.assign(new URL("sign-in", root).href);
  }

  function say(text, isError) {
    flash.textContent = text;
    flash.className = isError ? "flash error" : "flash";
    flash.hidden = !text;
  }

  function call(url, options) {
    options = options || {};
    var headers = Object.assign({ "Authorization": "Bearer " + credential() },
      options.headers || {});
    return fetch(url, Object.assign({}, options, {
      headers: headers, credentials: "omit", cache: "no-store", redirect: "error"
    }));
  }

  // The error shape of the API: {"error": {"code", "message", "details"}}.
  function explain(response) {
    return response.text().then(function (text) {
      var message = response.status + " " + response.statusText;
      var needed = null;
      try {
        var error = JSON.parse(text).error;
        message = error.message;
        (error.details || []).forEach(function (d) {
          if (d.type === "insufficient_scope") needed = d.msg.replace(/^needs scope /, "");
        });
      } catch (e) { /* not our JSON: keep the status line */ }
      if (response.status === 403 && needed) {
        return "Not allowed: this needs the " + needed + " scope; your credential has " +
          (scopes ? scopes.split(" ").join(", ") : "other scopes") + ".";
      }
      return message;
    });
  }

  function refusedOrFailed(response) {
    if (response.status === 401) { sessionStorage.removeItem(KEY); signIn(); return null; }
    return explain(response);
  }

  // Links in a fragment are written relative to the console's directory.
  function placeLinks(region) {
    region.querySelectorAll("a[href]").forEach(function (a) {
      var href = a.getAttribute("href");
      if (!/^(#|[a-z]+:|\/)/i.test(href)) a.setAttribute("href", new URL(href, root).href);
    });
  }

  function load(region) {
    var url = new URL(region.getAttribute("data-fragment"), root);
    if (region.hasAttribute("data-pass-query")) {
      // The shell's query, less the filters left empty ("any").
      var query = new URLSearchParams(location.search);
      Array.from(query.keys()).forEach(function (k) { if (!query.get(k)) query.delete(k); });
      url.search = query.toString();
    }
    return call(url.href).then(function (response) {
      if (!response.ok) {
        return Promise.resolve(refusedOrFailed(response)).then(function (text) {
          if (text) { region.innerHTML = ""; var p = document.createElement("p");
            p.className = "error"; p.setAttribute("role", "alert"); p.textContent = text;
            region.appendChild(p); }
          return false;
        });
      }
      return response.text().then(function (html) {
        region.innerHTML = html;
        region.setAttribute("aria-busy", "false");
        placeLinks(region);
        var who = region.querySelector("[data-scopes]");
        if (who) scopes = who.getAttribute("data-scopes");
        return !region.querySelector("[data-final]");
      });
    }, function () { return true; }); // a network blip: try again on the next tick
  }

  function keepFresh(region) {
    var every = parseInt(region.getAttribute("data-refresh") || "0", 10);
    function tick() {
      // Not while the user is working inside the region (focus, a selection).
      var busy = region.contains(document.activeElement) && document.activeElement !== region;
      var next = document.hidden || busy ? Promise.resolve(true) : load(region);
      next.then(function (again) { if (again) setTimeout(tick, every); });
    }
    load(region).then(function (again) { if (again && every > 0) setTimeout(tick, every); });
  }

  function confirmAction(text) {
    var dialog = document.getElementById("confirm");
    document.getElementById("confirm-text").textContent = text;
    return new Promise(function (resolve) {
      dialog.addEventListener("close", function once() {
        dialog.removeEventListener("close", once);
        resolve(dialog.returnValue === "ok");
      });
      dialog.returnValue = "";
      dialog.showModal();
    });
  }

  function act(button) {
    var method = button.getAttribute("data-action");
    var region = button.closest("[data-fragment]");
    var requests = [];
    var payload = button.getAttribute("data-body");
    var selection = button.getAttribute("data-selection");
    if (selection) {
      var ids = Array.prototype.map.call(
        document.querySelectorAll("input[name='" + selection + "']:checked"),
        function (box) { return box.value; });
      if (!ids.length) { say("Select at least one job first.", true); return; }
      requests.push([button.getAttribute("data-api"), JSON.stringify({ ids: ids })]);
    } else {
      requests.push([button.getAttribute("data-api"), payload]);
    }
    confirmAction(button.getAttribute("data-confirm") || "Go ahead?").then(function (ok) {
      if (!ok) { button.focus(); return; }
      button.disabled = true;
      var failure = null;
      var skipped = 0;
      var chain = Promise.resolve();
      requests.forEach(function (r) {
        chain = chain.then(function () {
          if (failure) return;
          var options = { method: method };
          if (r[1]) { options.body = r[1]; options.headers = { "Content-Type": "application/json" }; }
          return call(new URL(r[0], api).href, options).then(function (response) {
            if (!response.ok) return Promise.resolve(refusedOrFailed(response))
              .then(function (text) { failure = text || "signed out"; });
            // A selection's redrive names the jobs it skipped (no longer dead, or gone).
            return response.json().then(function (answer) {
              skipped += (answer && answer.skipped) ? answer.skipped.length : 0;
            }, function () { /* no body (204) */ });
          });
        });
      });
      chain.then(function () {
        button.disabled = false;
        if (failure) say(failure, true);
        else say((button.getAttribute("data-done") || "Done.") +
          (skipped ? " (" + skipped + " skipped: no longer dead)" : ""), false);
        if (region) load(region);
      }, function () { button.disabled = false; say("The request failed (network).", true); });
    });
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-action]");
    if (button) { event.preventDefault(); act(button); return; }
    if (event.target.closest("[data-sign-out]")) {
      sessionStorage.removeItem(KEY);
      location.assign(new URL("sign-in", root).href);
    }
  });

  if (page === "sign-in") {
    var form = document.getElementById("sign-in");
    var input = document.getElementById("credential");
    var problem = document.getElementById("sign-in-error");
    input.focus();
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      sessionStorage.setItem(KEY, input.value.trim());
      call(new URL("fragments/whoami", root).href).then(function (response) {
        if (response.ok) {
          var next = sessionStorage.getItem(NEXT);
          sessionStorage.removeItem(NEXT);
          var target = next && new URL(next, location.href).origin === location.origin ?
            next : new URL("../console", root).href;
          location.assign(target);
          return;
        }
        sessionStorage.removeItem(KEY);
        return explain(response).then(function (text) {
          problem.textContent = response.status === 401 ?
            "Not accepted: " + text : text;
          problem.hidden = false;
          input.focus();
        });
      }, function () { problem.textContent = "The API could not be reached."; problem.hidden = false; });
    });
    return;
  }

  if (!credential()) { signIn(); return; }
  document.querySelectorAll("[data-fragment]").forEach(keepFresh);
})();
