// wasmtx console: optional behaviour only; every page works without it.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // Pages that change while they are looked at (a transaction in flight, the overview) ask to
  // be reloaded every few seconds; the reader can pause it.
  const seconds = Number(document.body.dataset.refresh || 0);
  if (seconds > 0) {
    let paused = false;
    const main = document.getElementById("main");
    const toggle = document.createElement("button");
    toggle.type = "button";
    toggle.className = "link refresh-toggle";
    toggle.textContent = "Pause auto-refresh";
    toggle.setAttribute("aria-pressed", "false");
    toggle.addEventListener("click", () => {
      paused = !paused;
      toggle.textContent = paused ? "Resume auto-refresh" : "Pause auto-refresh";
      toggle.setAttribute("aria-pressed", String(paused));
    });
    main.prepend(toggle);
    setInterval(() => {
      if (!paused && !document.hidden) {
        window.location.reload();
      }
    }, seconds * 1000);
  }

  // Forms that change something for good ask once more.
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) {
        event.preventDefault();
      }
    });
  }
});
