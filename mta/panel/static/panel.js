// The panel's only script: copy buttons, confirmations and upload progress. Pages work
// without it, except that copying and the progress bar need it.
"use strict";
document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  event.preventDefault();
  navigator.clipboard.writeText(button.dataset.copy).then(() => {
    const label = button.textContent;
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = label; }, 1500);
  });
});
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
    return;
  }
  const bar = form.querySelector("progress[data-upload]");
  if (!bar) return;
  // upload with a progress bar, then show the page the server answers with
  event.preventDefault();
  const request = new XMLHttpRequest();
  request.open(form.method, form.action);
  bar.hidden = false;
  request.upload.addEventListener("progress", (e) => {
    if (e.lengthComputable) { bar.max = e.total; bar.value = e.loaded; }
  });
  request.addEventListener("load", () => {
    history.replaceState(null, "", request.responseURL);
    document.open();
    document.write(request.responseText);
    document.close();
  });
  request.send(new FormData(form));
});
