// Keyboard review: every element with data-key is clicked by its key; "h" shows or hides the
// heat map for the chosen category instead of opening it in a new tab. No inline script: the
// page's Content-Security-Policy allows only this file.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const byKey = new Map();
  for (const element of document.querySelectorAll("[data-key]")) {
    byKey.set(element.dataset.key, element);
  }
  const heat = document.getElementById("heat");
  const picker = document.getElementById("heat-category");
  const toggle = document.getElementById("heat-toggle");
  const showHeat = () => {
    const url = heat.dataset.src + "?category=" + encodeURIComponent(picker.value);
    if (!heat.hidden && heat.getAttribute("src") === url) {
      heat.hidden = true;
      return;
    }
    heat.setAttribute("src", url);
    heat.hidden = false;
  };
  if (heat && toggle) {
    toggle.addEventListener("click", (event) => {
      event.preventDefault();
      showHeat();
    });
    picker.addEventListener("change", () => {
      if (!heat.hidden) {
        heat.hidden = true;
        showHeat();
      }
    });
  }
  let sent = false;
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    const target = event.target;
    if (target instanceof HTMLInputElement || target instanceof HTMLSelectElement
        || target instanceof HTMLTextAreaElement) return;
    const key = { ArrowRight: "j", ArrowLeft: "k" }[event.key] || event.key;
    const element = byKey.get(key);
    if (!element) return;
    event.preventDefault();
    // One verdict per page: a second key press while the first posts would post twice.
    if (element.form && element.type === "submit" && element.form.method === "post") {
      if (sent) return;
      sent = true;
    }
    element.click();
  });
});
