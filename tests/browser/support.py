"""Helpers for the browser tests: screenshots and accessibility checks (labels, alt text, link
names, WCAG contrast of text and of the focus indicator)."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
PASSWORD = "correct horse battery"
ANALYSIS_TIMEOUT_MS = 180_000  # first use loads TensorFlow and the model in this process


def _descendants(pid: int) -> list[int]:
    """Every process under pid (Linux /proc), children before grandchildren."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


@contextlib.contextmanager
def browser_closed_within(seconds: float = 60.0):
    """Around a Playwright browser's close(): if it has not returned within `seconds`, kill the
    browser processes this test run started, which lets close() return. Seen once (2026-12-07): a
    headless Chromium spinning at 100 % CPU on close for 14 minutes on a loaded machine. The
    watchdog thread never calls Playwright (its sync API belongs to the test's thread)."""
    done = threading.Event()

    def watch():
        if done.wait(seconds):
            return
        for pid in _descendants(os.getpid()):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    if b"chrom" in fh.read().split(b"\0", 1)[0].lower():
                        os.kill(pid, signal.SIGKILL)
            except OSError:
                continue

    watchdog = threading.Thread(target=watch, name="browser-close-watchdog", daemon=True)
    watchdog.start()
    try:
        yield
    finally:
        done.set()


def screenshot(page, name: str, full_page: bool = True) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


# --------------------------------------------------------------------------- accessibility

def _luminance(rgb) -> float:
    def channel(c):
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(foreground, background) -> float:
    """WCAG 2 contrast ratio of two sRGB colours (1 to 21)."""
    lighter, darker = sorted((_luminance(foreground), _luminance(background)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def parse_colour(text: str) -> tuple[float, ...]:
    """'rgb(1, 2, 3)' / 'rgba(1, 2, 3, 0.5)' -> (r, g, b, alpha)."""
    inner = text[text.index("(") + 1: text.index(")")].replace("/", " ").replace(",", " ").split()
    values = [float(v) for v in inner]
    return tuple(values[:3]) + ((values[3] if len(values) > 3 else 1.0),)


LABEL_AND_ALT_PROBLEMS = """() => {
  const problems = [];
  for (const el of document.querySelectorAll('input, select, textarea')) {
    if (['hidden', 'submit', 'button', 'reset'].includes(el.type)) continue;
    const named = (el.labels && el.labels.length) || el.getAttribute('aria-label') || el.getAttribute('aria-labelledby');
    if (!named) problems.push('input without a label: ' + el.outerHTML.slice(0, 120));
  }
  for (const img of document.querySelectorAll('img')) {
    if (!img.hasAttribute('alt')) problems.push('image without alt: ' + img.getAttribute('src'));
  }
  for (const svg of document.querySelectorAll('svg[role=img], svg[role=group]')) {
    if (!svg.getAttribute('aria-label') && !svg.getAttribute('aria-labelledby')) problems.push('svg without a name');
  }
  for (const link of document.querySelectorAll('a[href]')) {
    if (link.closest('[aria-hidden=true]') && link.tabIndex < 0) continue;  // a duplicate link kept out of reach
    const name = (link.getAttribute('aria-label') || link.textContent || '').trim()
      || Array.from(link.querySelectorAll('img')).map(i => i.alt).join('').trim();
    if (!name) problems.push('link without a name: ' + link.getAttribute('href'));
  }
  return problems;
}"""

TEXT_COLOURS = """() => {
  const opaque = (c) => c && c !== 'transparent' && !/rgba\\(.*,\\s*0\\)$/.test(c);
  const out = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const seen = new Set();
  while (walker.nextNode()) {
    const node = walker.currentNode;
    const el = node.parentElement;
    if (!node.textContent.trim() || !el || seen.has(el) || el.closest('svg, script, style, noscript')) continue;
    seen.add(el);
    const rect = el.getBoundingClientRect();
    const style = getComputedStyle(el);
    if (!rect.width || !rect.height || style.visibility === 'hidden' || rect.right < 0 || rect.bottom < 0) continue;
    let bg = null;
    for (let p = el; p; p = p.parentElement) {
      const b = getComputedStyle(p).backgroundColor;
      if (opaque(b)) { bg = b; break; }
    }
    out.push({text: node.textContent.trim().slice(0, 40), tag: el.tagName, cls: el.className,
              color: style.color, background: bg || 'rgb(255, 255, 255)',
              size: parseFloat(style.fontSize), weight: parseInt(style.fontWeight, 10) || 400});
  }
  return out;
}"""


def check_accessibility(page) -> None:
    """Labels on every input, alt text on every image, names on links, and WCAG AA contrast (4.5:1,
    3:1 for large text) for every piece of text on the page."""
    problems = page.evaluate(LABEL_AND_ALT_PROBLEMS)
    low = []
    for item in page.evaluate(TEXT_COLOURS):
        fg, bg = parse_colour(item["color"]), parse_colour(item["background"])
        large = item["size"] >= 24 or (item["size"] >= 18.66 and item["weight"] >= 700)
        ratio = contrast_ratio(fg, bg)
        if ratio < (3.0 if large else 4.5):
            low.append(f"{item['tag']}.{item['cls']} “{item['text']}”: {ratio:.2f}:1 ({item['color']} on {item['background']})")
    problems += low
    assert not problems, f"{page.url}:\n" + "\n".join(problems)


FOCUS_STYLE = """() => {
  const el = document.activeElement;
  const s = getComputedStyle(el);
  let bg = null;
  for (let p = el.parentElement; p; p = p.parentElement) {
    const b = getComputedStyle(p).backgroundColor;
    if (b && b !== 'transparent' && !/rgba\\(.*,\\s*0\\)$/.test(b)) { bg = b; break; }
  }
  return {tag: el.tagName, type: el.type || '', outlineStyle: s.outlineStyle, outlineWidth: parseFloat(s.outlineWidth),
          outlineColor: s.outlineColor, boxShadow: s.boxShadow, background: bg || 'rgb(255, 255, 255)'};
}"""


def assert_focus_visible(page) -> dict:
    """The focused element has an indicator at least 2 px wide of which some colour stands out
    3:1 from the background around it (WCAG 1.4.11)."""
    focus = page.evaluate(FOCUS_STYLE)
    background = parse_colour(focus["background"])
    colours = []
    if focus["outlineStyle"] != "none" and focus["outlineWidth"] >= 2:
        colours.append(parse_colour(focus["outlineColor"]))
    if focus["boxShadow"] and focus["boxShadow"] != "none":
        colours += [parse_colour(c) for c in re.findall(r"rgba?\([^)]*\)", focus["boxShadow"])]
    assert colours, f"no focus indicator on {focus}"
    best = max(contrast_ratio(c, background) for c in colours)
    assert best >= 3.0, f"focus indicator contrast {best:.2f}:1 is too low: {focus}"
    return focus
