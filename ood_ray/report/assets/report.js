(function () {
  "use strict";
  var PLOT_CONFIG = {responsive: true, displaylogo: false};
  var DEFAULT_COLOUR = "#4c78a8";

  function json(id) {
    var element = document.getElementById(id);
    return element ? JSON.parse(element.textContent) : null;
  }

  function showHoverThumb(event, source, caption) {
    var box = document.getElementById("hover-thumb");
    box.textContent = "";
    if (source) {
      var image = document.createElement("img");
      image.src = source;
      image.alt = caption;
      box.appendChild(image);
    } else {
      var missing = document.createElement("div");
      missing.className = "missing";
      missing.textContent = "no thumbnail";
      box.appendChild(missing);
    }
    var label = document.createElement("div");
    label.textContent = caption;
    box.appendChild(label);
    var mouse = event.event || {};
    box.style.left = ((mouse.clientX || 0) + 16) + "px";
    box.style.top = ((mouse.clientY || 0) + 16) + "px";
    box.hidden = false;
  }

  function setupMap() {
    var map = document.getElementById("map-plot");
    if (!map) { return; }
    var colourings = json("map-colourings");
    var coordinates = json("map-coordinates");
    var sources = json("map-thumbs") || {};
    var colourSelect = document.getElementById("map-colour");
    var methodSelect = document.getElementById("map-method");
    var legend = document.getElementById("map-legend");

    function colour(name) {
      legend.textContent = "";
      var spec = colourings[name];
      if (!spec) {
        Plotly.restyle(map, {"marker.color": [DEFAULT_COLOUR], "marker.showscale": false});
        return;
      }
      if (spec.kind === "category") {
        Plotly.restyle(map, {"marker.color": [spec.colors], "marker.showscale": false});
        Object.keys(spec.legend).forEach(function (value) {
          var item = document.createElement("span");
          var swatch = document.createElement("i");
          swatch.style.background = spec.legend[value];
          item.appendChild(swatch);
          item.appendChild(document.createTextNode(value));
          legend.appendChild(item);
        });
      } else {
        Plotly.restyle(map, {"marker.color": [spec.values], "marker.colorscale": "Viridis",
                             "marker.showscale": true, "marker.colorbar.title.text": name});
      }
    }

    function project(method) {
      var xy = coordinates[method];
      Plotly.restyle(map, {x: [xy.x], y: [xy.y]});
      Plotly.relayout(map, {"xaxis.title.text": "x_" + method, "yaxis.title.text": "y_" + method});
    }

    colourSelect.addEventListener("change", function () { colour(colourSelect.value); });
    methodSelect.addEventListener("change", function () { project(methodSelect.value); });
    var initial = ["cluster", "label", "split"].filter(function (name) { return name in colourings; })[0];
    if (initial) { colourSelect.value = initial; colour(initial); }

    map.on("plotly_hover", function (event) {
      var point = event.points[0];
      var key = point.customdata[0];
      showHoverThumb(event, sources[key] || null, point.customdata[1]);
    });
    map.on("plotly_unhover", function () { document.getElementById("hover-thumb").hidden = true; });
  }

  var rendered = [];
  document.querySelectorAll("script.figure").forEach(function (element) {
    var figure = JSON.parse(element.textContent);
    var target = document.getElementById(element.dataset.target);
    rendered.push(Plotly.newPlot(target, figure.data, figure.layout || {}, PLOT_CONFIG));
  });
  Promise.all(rendered).then(function () {
    setupMap();
    document.body.dataset.ready = "true";
  });
})();
