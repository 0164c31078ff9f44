// MathJax reads the maths that pymdownx.arithmatex (generic mode) wraps in
// `<span class="arithmatex">` / `<div class="arithmatex">`, and nothing else on the page.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*",
    processHtmlClass: "arithmatex",
  },
};

// With navigation.instant, pages are swapped without a reload: typeset each new one.
if (typeof document$ !== "undefined") {
  document$.subscribe(() => {
    if (window.MathJax.typesetPromise) {
      window.MathJax.typesetPromise();
    }
  });
}
