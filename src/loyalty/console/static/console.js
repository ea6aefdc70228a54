/* The console's behaviour: charts, htmx's CSRF header, the phone menu, confirm steps.
   Loaded with defer; no inline scripts anywhere (the CSP forbids them). */
(function () {
  "use strict";
  var charts = (window.loyaltyCharts = window.loyaltyCharts || {});

  function csrf() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  function drawCharts(root) {
    if (!window.echarts) return;
    var scope = root || document;
    var found = Array.prototype.slice.call(scope.querySelectorAll("[data-option]"));
    if (scope.matches && scope.matches("[data-option]")) found.push(scope);
    found.forEach(function (el) {
      var existing = charts[el.id];
      if (existing && existing.getDom() === el) {
        if (el.dataset.drawn === el.dataset.option) return;  // drawn already, unchanged
        existing.setOption(JSON.parse(el.dataset.option), true);
        el.dataset.drawn = el.dataset.option;
        return;
      }
      var option = JSON.parse(el.dataset.option);
      if (existing) existing.dispose();
      var chart = window.echarts.init(el, null, { renderer: "canvas" });
      chart.setOption(option);
      el.dataset.drawn = el.dataset.option;
      charts[el.id] = chart;
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    drawCharts(document);
    window.addEventListener("resize", function () {
      Object.keys(charts).forEach(function (id) { charts[id].resize(); });
    });
    var toggle = document.querySelector(".menu-toggle");
    var nav = document.getElementById("nav");
    if (toggle && nav) {
      toggle.addEventListener("click", function () {
        var open = nav.classList.toggle("open");
        toggle.setAttribute("aria-expanded", open ? "true" : "false");
      });
    }
    document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
      select.addEventListener("change", function () { select.form.submit(); });
    });
  });

  // Every htmx request carries the session's CSRF token.
  document.addEventListener("htmx:configRequest", function (event) {
    event.detail.headers["X-CSRF-Token"] = csrf();
  });
  // After a swap the target may itself have been replaced (outerHTML): look at the whole page;
  // charts drawn already and unchanged are left alone.
  document.addEventListener("htmx:afterSettle", function () { drawCharts(document); });
  // A fragment answered with an error status still replaces its target (the message shows).
  document.addEventListener("htmx:beforeSwap", function (event) {
    var status = event.detail.xhr.status;
    if (status >= 400 && status !== 401) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });
  // Forms and buttons with data-confirm ask first (the server side keeps its own checks).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var message = form.getAttribute && form.getAttribute("data-confirm");
    if (message && !window.confirm(message)) event.preventDefault();
  }, true);
})();
