// Search box: choose a file, drop one on the box, or paste an image; each submits the form.
(function () {
  "use strict";
  const form = document.getElementById("search-form");
  const input = document.getElementById("image-input");
  const drop = document.getElementById("drop");
  if (!form || !input || !drop) return;

  function submitWith(file) {
    if (!file || !file.type.startsWith("image/")) {
      drop.classList.add("refused");
      return;
    }
    const dt = new DataTransfer();
    dt.items.add(file);
    input.files = dt.files;
    drop.classList.add("busy");
    drop.querySelector(".drop-text").textContent = "Searching with " + (file.name || "the pasted image") + " …";
    form.submit();
  }

  input.addEventListener("change", function () {
    if (input.files.length) submitWith(input.files[0]);
  });
  ["dragenter", "dragover"].forEach(function (type) {
    drop.addEventListener(type, function (e) {
      e.preventDefault();
      drop.classList.add("over");
    });
  });
  ["dragleave", "drop"].forEach(function (type) {
    drop.addEventListener(type, function () { drop.classList.remove("over"); });
  });
  drop.addEventListener("drop", function (e) {
    e.preventDefault();
    if (e.dataTransfer.files.length) submitWith(e.dataTransfer.files[0]);
  });
  document.addEventListener("paste", function (e) {
    const items = (e.clipboardData && e.clipboardData.items) || [];
    for (const item of items) {
      if (item.kind === "file" && item.type.startsWith("image/")) {
        e.preventDefault();
        submitWith(item.getAsFile());
        return;
      }
    }
  });
})();
