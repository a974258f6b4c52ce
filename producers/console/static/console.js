// contactsync console: the little the pages need beyond HTML. Everything works without it.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  // "Select all" ticks every job of the page for a bulk action.
  document.querySelectorAll("input.select-all").forEach(function (box) {
    box.addEventListener("change", function () {
      document.querySelectorAll('input[name="ids"]').forEach(function (one) {
        one.checked = box.checked;
      });
    });
  });
});
