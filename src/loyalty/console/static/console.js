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
    (root || document).querySelectorAll("[data-chart]").forEach(function (el) {
      var source = document.getElementById(el.dataset.chart);
      if (!source) return;
      var option = JSON.parse(source.textContent);
      var existing = charts[el.id];
      if (existing && existing.getDom() === el) {
        existing.setOption(option, true);
        return;
      }
      if (existing) existing.dispose();
      var chart = window.echarts.init(el, null, { renderer: "canvas" });
      chart.setOption(option);
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
  document.addEventListener("htmx:afterSwap", function (event) { drawCharts(event.target); });
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
