"""The labelling page: one HTML document with its script and style inline (no network).

Model text is untrusted: the script puts every prompt, response and judgment into the page
with textContent (never innerHTML), and the server sends a Content-Security-Policy that runs
only the page's own script (its nonce), so markup in a response shows as text and cannot run.

Keys: a / 1 picks A, b / 2 picks B, t / 3 marks a tie, j or the right arrow goes to the next
pair, k or the left arrow to the previous one; every control is also a focusable button.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>srlm_jax review</title>
<style nonce="__NONCE__">
body { font-family: system-ui, sans-serif; margin: 1em auto; max-width: 72em; padding: 0 1em; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; }
.side { border: 2px solid #bbb; border-radius: 6px; padding: 0.5em; }
.side.picked { border-color: #1a7f37; }
pre { white-space: pre-wrap; word-wrap: break-word; background: #f6f8fa; padding: 0.5em; }
.reasons pre { background: #fff8e1; font-size: 0.9em; }
button { font-size: 1em; margin: 0.2em; padding: 0.4em 0.8em; }
button:focus { outline: 3px solid #0969da; }
#status { min-height: 1.5em; font-weight: bold; }
</style>
</head>
<body>
<h1>Which response is better?</h1>
<p><label for="reviewer">Your name</label>
<input id="reviewer" autocomplete="name">
<span id="progress"></span></p>
<p id="status" role="status" aria-live="polite"></p>
<h2>Prompt <span id="position"></span></h2>
<pre id="prompt"></pre>
<div class="pair">
  <section class="side" id="side-a"><h2>A</h2><pre id="a"></pre>
    <details class="reasons"><summary>Judge's reasons for A (score <span id="a-score"></span>;
    frozen judge <span id="a-reference"></span>)</summary>
    <div id="a-reasons"></div></details></section>
  <section class="side" id="side-b"><h2>B</h2><pre id="b"></pre>
    <details class="reasons"><summary>Judge's reasons for B (score <span id="b-score"></span>;
    frozen judge <span id="b-reference"></span>)</summary>
    <div id="b-reasons"></div></details></section>
</div>
<p>
<button id="pick-a" aria-keyshortcuts="a 1">A is better (a)</button>
<button id="pick-tie" aria-keyshortcuts="t 3">Tie (t)</button>
<button id="pick-b" aria-keyshortcuts="b 2">B is better (b)</button>
<button id="prev" aria-keyshortcuts="k ArrowLeft">Previous (k)</button>
<button id="next" aria-keyshortcuts="j ArrowRight">Next (j)</button>
</p>
<script nonce="__NONCE__">
"use strict";
const state = {items: [], labels: {}, index: 0};
const $ = (id) => document.getElementById(id);
function say(text) { $("status").textContent = text; }
function showReasons(id, reasons) {
  const box = $(id);
  box.replaceChildren();
  for (const text of reasons) {
    const pre = document.createElement("pre");
    pre.textContent = text;
    box.appendChild(pre);
  }
}
function render() {
  const n = state.items.length;
  if (!n) { say("Nothing to review."); return; }
  const item = state.items[state.index];
  $("position").textContent = "(" + (state.index + 1) + " of " + n + ")";
  $("prompt").textContent = item.prompt;
  for (const side of ["a", "b"]) {
    $(side).textContent = item[side];
    const score = item[side + "_self_score"];
    $(side + "-score").textContent = score === null ? "none" : String(score);
    const reference = item[side + "_reference_score"];
    $(side + "-reference").textContent = reference == null ? "none" : String(reference);
    showReasons(side + "-reasons", item[side + "_reasons"] || []);
    $("side-" + side).classList.toggle("picked", state.labels[item.pair_id] === side);
  }
  const done = Object.keys(state.labels).length;
  $("progress").textContent = done + " of " + n + " labelled";
}
function move(step) {
  state.index = Math.min(state.items.length - 1, Math.max(0, state.index + step));
  render();
}
async function pick(choice) {
  const reviewer = $("reviewer").value.trim();
  if (!reviewer) { say("Type your name first."); $("reviewer").focus(); return; }
  const item = state.items[state.index];
  const response = await fetch("/api/label", {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({pair_id: item.pair_id, choice: choice, reviewer: reviewer})});
  const reply = await response.json();
  if (!response.ok) { say("Not saved: " + reply.error); return; }
  state.labels[item.pair_id] = choice;
  say("Saved " + item.pair_id + ": " + (choice === "tie" ? "tie" : choice.toUpperCase()));
  if (state.index < state.items.length - 1) { move(1); } else { render(); }
}
$("pick-a").addEventListener("click", () => pick("a"));
$("pick-b").addEventListener("click", () => pick("b"));
$("pick-tie").addEventListener("click", () => pick("tie"));
$("prev").addEventListener("click", () => move(-1));
$("next").addEventListener("click", () => move(1));
document.addEventListener("keydown", (event) => {
  if (event.target === $("reviewer") || event.ctrlKey || event.metaKey || event.altKey) return;
  const keys = {a: () => pick("a"), "1": () => pick("a"), b: () => pick("b"),
                "2": () => pick("b"), t: () => pick("tie"), "3": () => pick("tie"),
                j: () => move(1), ArrowRight: () => move(1), k: () => move(-1),
                ArrowLeft: () => move(-1)};
  if (keys[event.key]) { event.preventDefault(); keys[event.key](); }
});
fetch("/api/items").then((r) => r.json()).then((data) => {
  state.items = data.items;
  state.labels = data.labels;
  if (data.reviewer) { $("reviewer").value = data.reviewer; }
  render();
  say("Ready: " + state.items.length + " pairs.");
  document.body.dataset.ready = "1";
});
</script>
</body>
</html>
"""


def render(nonce: str) -> str:
  """Returns the page with its script and style tagged by nonce (the server's CSP allows it)."""
  if not nonce.isalnum():
    raise ValueError('the nonce must be alphanumeric')
  return PAGE.replace('__NONCE__', nonce)
