// bnkit book: every figure opens full size on a tap or click (as d2l's do).
// On a phone a figure is shrunk to the column's width; its link shows the
// image file itself, which the reader can zoom.
document.addEventListener("DOMContentLoaded", () => {
  for (const img of document.querySelectorAll(".bd-article img")) {
    if (img.closest("a") || !img.getAttribute("src")) continue;
    const link = document.createElement("a");
    link.href = img.getAttribute("src");
    link.className = "bnkit-figure-link";
    link.title = "Open the figure full size";
    img.replaceWith(link);
    link.appendChild(img);
  }
});
