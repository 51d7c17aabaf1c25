// The job pages' two small behaviours; both pages work without them.
// 1. New job: show only the settings of the chosen action (without JavaScript every
//    action's settings show, each titled with its action, and only the chosen one is used).
// 2. Job page: refresh the progress block every few seconds while the job runs.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var action = document.getElementById("id_action");
  var sections = document.querySelectorAll("fieldset.hp-payload");
  if (action && sections.length > 1) {
    var show = function () {
      sections.forEach(function (section) {
        section.hidden = !section.classList.contains("hp-payload--" + action.value);
      });
    };
    action.addEventListener("change", show);
    show();
  }

  var block = document.getElementById("hp-job-progress");
  if (block && block.dataset.running) {
    var seconds = parseInt(block.dataset.refresh, 10) || 3;
    var tick = function () {
      fetch(block.dataset.url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (data) {
          if (!data) { return; }  // a hiccup: keep the last numbers, try again
          block.innerHTML = data.html;
          if (data.running) { window.setTimeout(tick, seconds * 1000); }
          else { window.location.reload(); }  // finished: controls and deliveries change too
        })
        .catch(function () { window.setTimeout(tick, seconds * 1000); });
    };
    window.setTimeout(tick, seconds * 1000);
  }
});
