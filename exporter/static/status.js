// scaleprobe status page: after layout, record what each chart really drew.
// Each chart gets data-drawn-lines (predicted paths with a non-zero length) and
// data-drawn-markers (measured points with a non-zero box); the body gets data-charts-drawn.
// The browser test reads these; the page itself needs no script to display.
(function () {
  "use strict";
  function measure() {
    var charts = document.querySelectorAll("svg.chart");
    var complete = 0;
    charts.forEach(function (chart) {
      var lines = 0;
      var markers = 0;
      chart.querySelectorAll("path.predicted").forEach(function (path) {
        if (path.getTotalLength() > 0) { lines += 1; }
      });
      chart.querySelectorAll("circle.measured:not(.key)").forEach(function (circle) {
        var box = circle.getBoundingClientRect();
        if (box.width > 0 && box.height > 0) { markers += 1; }
      });
      chart.setAttribute("data-drawn-lines", String(lines));
      chart.setAttribute("data-drawn-markers", String(markers));
      if (String(lines) === chart.getAttribute("data-expected-lines") &&
          String(markers) === chart.getAttribute("data-expected-markers")) {
        complete += 1;
      }
    });
    document.body.setAttribute("data-charts-drawn", complete + "/" + charts.length);
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", measure);
  } else {
    measure();
  }
})();
