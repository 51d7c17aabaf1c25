// The job pages' two small behaviours; both pages work without them.
// 1. New job: show only the settings of the chosen action (without JavaScript every
//    action's settings show, each titled with its action, and only the chosen one is used).
// 2. Job page: refresh the progress block every few seconds while the job runs.
// 3. Name the inputs Django's widgets leave unlabelled (the search box select2 adds to each
//    multiple autocomplete, the time half of a date-time field) after their field's label,
//    so a screen reader says what they are for.
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

  var labelOf = function (input) {
    var row = input.closest(".form-row, .fieldBox");
    var label = row && row.querySelector("label");
    return label ? label.textContent.replace(/:\s*$/, "").trim() : "";
  };
  var nameUnlabelled = function () {
    document.querySelectorAll(".select2-search__field:not([aria-label])").forEach(function (input) {
      var name = labelOf(input);
      if (name) { input.setAttribute("aria-label", "Search " + name.toLowerCase()); }
    });
    document.querySelectorAll(".datetime input.vTimeField:not([aria-label])").forEach(function (input) {
      input.setAttribute("aria-label", (labelOf(input) || "Time") + ": time");
    });
    document.querySelectorAll(".datetime input.vDateField:not([aria-label])").forEach(function (input) {
      input.setAttribute("aria-label", (labelOf(input) || "Date") + ": date");
    });
  };
  nameUnlabelled();
  // select2 draws its search boxes after this and again after each choice.
  new MutationObserver(nameUnlabelled).observe(document.body, { childList: true, subtree: true });

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
